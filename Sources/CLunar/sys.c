#include "CLunar.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

int lunar_blkdev_size(int fd, uint64_t *size) {
    return ioctl(fd, BLKGETSIZE64, size) < 0 ? -errno : 0;
}

int lunar_blkdev_logical_sector_size(int fd, int *size) {
    return ioctl(fd, BLKSSZGET, size) < 0 ? -errno : 0;
}

int lunar_punch_hole(int fd, uint64_t offset, uint64_t len) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) < 0 ? -errno : 0;
}

int lunar_punch_hole_mode(void) { return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; }

int lunar_ofd_lock(int fd, int lock, uint64_t start, uint64_t len, int wait) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = lock ? F_WRLCK : F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)start;
    fl.l_len = (off_t)len;
    int r;
    do { r = fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

int lunar_ofd_probe(int fd, uint64_t start, uint64_t len) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)start;
    fl.l_len = (off_t)len;
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) return -errno;
    return fl.l_type == F_UNLCK ? 0 : 1;
}

int lunar_open(const char *path, int flags, int mode) {
    int fd;
    do { fd = open(path, flags | O_CLOEXEC, mode); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int lunar_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int lunar_o_direct(void) { return O_DIRECT; }
