#include "CLunar.h"
#include <errno.h>
#include <poll.h>
#include <string.h>

int lunar_uring_init(unsigned entries, struct io_uring *ring, unsigned flags) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    return io_uring_queue_init_params(entries, ring, &p);
}

void lunar_uring_exit(struct io_uring *ring) { io_uring_queue_exit(ring); }

int lunar_uring_register_file(struct io_uring *ring, int fd) {
    return io_uring_register_files(ring, &fd, 1);
}

int lunar_uring_register_buffers(struct io_uring *ring, const struct iovec *iovecs, unsigned count) {
    return io_uring_register_buffers(ring, iovecs, count);
}

static inline void finish(struct io_uring_sqe *sqe, int fixed_file, uint64_t user_data) {
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, user_data);
}

int lunar_uring_prep_rw(struct io_uring *ring, int is_write, int fd, int fixed_file,
                        void *buf, unsigned len, uint64_t offset, int buf_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    if (buf_index >= 0) {
        if (is_write) io_uring_prep_write_fixed(sqe, fd, buf, len, offset, buf_index);
        else io_uring_prep_read_fixed(sqe, fd, buf, len, offset, buf_index);
    } else {
        if (is_write) io_uring_prep_write(sqe, fd, buf, len, offset);
        else io_uring_prep_read(sqe, fd, buf, len, offset);
    }
    finish(sqe, fixed_file, user_data);
    return 0;
}

int lunar_uring_prep_fsync(struct io_uring *ring, int fd, int fixed_file, int datasync, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    finish(sqe, fixed_file, user_data);
    return 0;
}

int lunar_uring_prep_fallocate(struct io_uring *ring, int fd, int fixed_file, int mode,
                               uint64_t offset, uint64_t len, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fallocate(sqe, fd, mode, offset, len);
    finish(sqe, fixed_file, user_data);
    return 0;
}

int lunar_uring_prep_poll_in(struct io_uring *ring, int fd, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int lunar_uring_submit(struct io_uring *ring) {
    int r;
    do { r = io_uring_submit(ring); } while (r == -EINTR);
    return r;
}

int lunar_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr) {
    int r;
    do { r = io_uring_submit_and_wait(ring, wait_nr); } while (r == -EINTR);
    return r;
}

unsigned lunar_uring_reap(struct io_uring *ring, uint64_t *user_data, int32_t *res, unsigned max) {
    unsigned head, n = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (n == max) break;
        user_data[n] = io_uring_cqe_get_data64(cqe);
        res[n] = cqe->res;
        n++;
    }
    io_uring_cq_advance(ring, n);
    return n;
}

int lunar_uring_get_events(struct io_uring *ring) {
    int r;
    do { r = io_uring_get_events(ring); } while (r == -EINTR);
    return r;
}
