#include "CLunar.h"
#include <errno.h>
#include <poll.h>

void lunar_aio_prep_rw(struct iocb *iocb, int is_write, int fd, void *buf, size_t len,
                       long long offset, uint64_t user_data) {
    if (is_write) io_prep_pwrite(iocb, fd, buf, len, offset);
    else io_prep_pread(iocb, fd, buf, len, offset);
    iocb->data = (void *)(uintptr_t)user_data;
}

void lunar_aio_prep_fdsync(struct iocb *iocb, int fd, uint64_t user_data) {
    io_prep_fdsync(iocb, fd);
    iocb->data = (void *)(uintptr_t)user_data;
}

void lunar_aio_prep_poll_in(struct iocb *iocb, int fd, uint64_t user_data) {
    io_prep_poll(iocb, fd, POLLIN);
    iocb->data = (void *)(uintptr_t)user_data;
}

int lunar_aio_getevents(io_context_t ctx, long min_nr, long max_nr, struct io_event *events,
                        uint64_t *user_data, int64_t *res) {
    int n;
    do { n = io_getevents(ctx, min_nr, max_nr, events, NULL); } while (n == -EINTR);
    for (int i = 0; i < n; i++) {
        user_data[i] = (uint64_t)(uintptr_t)events[i].data;
        res[i] = (int64_t)(long)events[i].res;
    }
    return n;
}
