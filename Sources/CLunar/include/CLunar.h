// Thin C shims for LunarIO. No logic lives here: each function wraps one inline helper,
// macro, ioctl or variadic call that Swift cannot reach directly, or computes CRC32C.
#ifndef CLUNAR_H
#define CLUNAR_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <liburing.h>
#include <libaio.h>

// ---- io_uring (liburing's static inline helpers) ----
int lunar_uring_init(unsigned entries, struct io_uring *ring, unsigned flags);
void lunar_uring_exit(struct io_uring *ring);
int lunar_uring_register_file(struct io_uring *ring, int fd);
int lunar_uring_register_buffers(struct io_uring *ring, const struct iovec *iovecs, unsigned count);
/// Returns 0 or -EBUSY when the submission queue is full.
int lunar_uring_prep_rw(struct io_uring *ring, int is_write, int fd, int fixed_file,
                        void *buf, unsigned len, uint64_t offset, int buf_index, uint64_t user_data);
int lunar_uring_prep_fsync(struct io_uring *ring, int fd, int fixed_file, int datasync, uint64_t user_data);
int lunar_uring_prep_fallocate(struct io_uring *ring, int fd, int fixed_file, int mode,
                               uint64_t offset, uint64_t len, uint64_t user_data);
int lunar_uring_prep_poll_in(struct io_uring *ring, int fd, uint64_t user_data);
int lunar_uring_submit(struct io_uring *ring);
int lunar_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr);
/// Enters the kernel without waiting so that completions it holds back (deferred task work,
/// COOP_TASKRUN) reach the completion ring. Never blocks.
int lunar_uring_get_events(struct io_uring *ring);
/// Copies up to `max` ready completions out and marks them seen. Never blocks.
unsigned lunar_uring_reap(struct io_uring *ring, uint64_t *user_data, int32_t *res, unsigned max);

// ---- libaio (its static inline io_prep_* helpers) ----
void lunar_aio_prep_rw(struct iocb *iocb, int is_write, int fd, void *buf, size_t len,
                       long long offset, uint64_t user_data);
void lunar_aio_prep_fdsync(struct iocb *iocb, int fd, uint64_t user_data);
void lunar_aio_prep_poll_in(struct iocb *iocb, int fd, uint64_t user_data);
/// io_getevents retried on EINTR; copies user data and results out.
int lunar_aio_getevents(io_context_t ctx, long min_nr, long max_nr, struct io_event *events,
                        uint64_t *user_data, int64_t *res);

// ---- Linux system calls Swift cannot call directly (variadic fcntl/ioctl, fallocate) ----
/// Returns the size in bytes of a block device, or -errno.
int lunar_blkdev_size(int fd, uint64_t *size);
/// Returns the logical sector size of a block device, or -errno.
int lunar_blkdev_logical_sector_size(int fd, int *size);
/// fallocate(PUNCH_HOLE|KEEP_SIZE): on files and (since Linux 4.9) block devices alike, the
/// range reads back as zeros afterwards. 0 or -errno.
int lunar_punch_hole(int fd, uint64_t offset, uint64_t len);
/// The mode io_uring's fallocate needs for a punch-hole discard.
int lunar_punch_hole_mode(void);
/// Open-file-description byte-range lock: write-lock (lock != 0) or unlock. Waits for the lock
/// when `wait` is non-zero, retrying EINTR. 0 or -errno.
int lunar_ofd_lock(int fd, int lock, uint64_t start, uint64_t len, int wait);
/// 1 if another open file description holds a lock overlapping the range, 0 if not, or -errno.
int lunar_ofd_probe(int fd, uint64_t start, uint64_t len);
/// A non-blocking, close-on-exec eventfd, or -errno.
int lunar_eventfd(void);
int lunar_open(const char *path, int flags, int mode);
int lunar_o_direct(void);

// ---- iSCSI (libiscsi's synchronous calls; see iscsi.c) ----
struct iscsi_context;
/// The outcome of one SCSI command: `status` is the SCSI status byte (0 GOOD, 2 CHECK
/// CONDITION, 0x18 RESERVATION CONFLICT, ...) or -1 when no status came back (transport
/// failure; `message` says why). On CHECK CONDITION the sense key, ASC, ASCQ and the raw sense
/// bytes are filled in.
typedef struct lunar_scsi_result {
    int status;
    int sense_key;
    int asc;
    int ascq;
    int sense_length;
    uint8_t sense[64];
    uint64_t residual;
    char message[256];
} lunar_scsi_result;
/// Logs in to `iscsi://[user[%password]@]host[:port]/target-iqn/lun` (libiscsi's URL parser)
/// as `initiator` with session id `isid` (distinct per session: one I_T nexus each). The
/// context, with the URL's LUN in `*lun`, or NULL with `error` filled in.
struct iscsi_context *lunar_iscsi_connect(const char *url, const char *initiator, uint32_t isid, int *lun,
                                          char *error, size_t error_length);
/// Logs out and frees the context.
void lunar_iscsi_disconnect(struct iscsi_context *iscsi);
// Each command below returns 0 when the target answered GOOD, else -1 with `r` filled in.
int lunar_iscsi_read16(struct iscsi_context *iscsi, int lun, uint64_t lba, void *buffer, uint32_t length,
                       int block_size, lunar_scsi_result *r);
int lunar_iscsi_write16(struct iscsi_context *iscsi, int lun, uint64_t lba, const void *buffer, uint32_t length,
                        int block_size, lunar_scsi_result *r);
/// SYNCHRONIZE CACHE(16) of the whole LUN.
int lunar_iscsi_synchronize_cache16(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r);
/// UNMAP of one extent.
int lunar_iscsi_unmap(struct iscsi_context *iscsi, int lun, uint64_t lba, uint32_t blocks, lunar_scsi_result *r);
/// WRITE SAME(16) with the UNMAP bit, of one zero block over `blocks` blocks.
int lunar_iscsi_write_same16_unmap(struct iscsi_context *iscsi, int lun, uint64_t lba, uint32_t blocks,
                                   const void *zero_block, int block_size, lunar_scsi_result *r);
/// COMPARE AND WRITE (0x89): `length` bytes, the expected blocks followed by the new ones.
int lunar_iscsi_compare_and_write(struct iscsi_context *iscsi, int lun, uint64_t lba, const void *expected_then_new,
                                  uint32_t length, int block_size, lunar_scsi_result *r);
/// READ CAPACITY(16): the last LBA, the logical block size, and the LBPME/LBPRZ bits.
int lunar_iscsi_read_capacity16(struct iscsi_context *iscsi, int lun, uint64_t *last_lba, uint32_t *block_size,
                                int *lbpme, int *lbprz, lunar_scsi_result *r);
/// SPC-2 RESERVE(6) / RELEASE(6) of the whole LUN for this session's I_T nexus.
int lunar_iscsi_reserve6(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r);
int lunar_iscsi_release6(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r);
int lunar_iscsi_test_unit_ready(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r);

// ---- iSCSI, asynchronous (libiscsi's *_task calls; see iscsi.c) ----
/// A session of its own driven without blocking: commands are issued with a tag, and their
/// outcomes land in a completion list that `lunar_iscsi_queue_drain` hands out. One thread.
typedef struct lunar_iscsi_queue lunar_iscsi_queue;
typedef struct lunar_iscsi_completion {
    uint64_t tag;
    lunar_scsi_result result;
} lunar_iscsi_completion;
/// Logs in (as `lunar_iscsi_connect`, with automatic reconnection off: a lost connection
/// fails the commands in flight). NULL with `error` filled in.
lunar_iscsi_queue *lunar_iscsi_queue_open(const char *url, const char *initiator, uint32_t isid, char *error,
                                          size_t error_length);
/// Cancels what is in flight, logs out when `logout` (not on a lost connection), frees.
void lunar_iscsi_queue_close(lunar_iscsi_queue *q, int logout);
// Each issue call returns 0, or -1 when libiscsi could not queue the command.
int lunar_iscsi_queue_read16(lunar_iscsi_queue *q, uint64_t lba, void *buffer, uint32_t length, int block_size,
                             uint64_t tag);
int lunar_iscsi_queue_write16(lunar_iscsi_queue *q, uint64_t lba, const void *buffer, uint32_t length,
                              int block_size, uint64_t tag);
int lunar_iscsi_queue_synchronize_cache16(lunar_iscsi_queue *q, uint64_t tag);
/// The session's socket and the poll events it waits for now.
int lunar_iscsi_queue_fd(lunar_iscsi_queue *q);
int lunar_iscsi_queue_events(lunar_iscsi_queue *q);
/// Lets libiscsi read and write the socket (`revents` from poll); -1 when the session failed.
int lunar_iscsi_queue_service(lunar_iscsi_queue *q, int revents);
/// Completes every command in flight as failed (status -1).
void lunar_iscsi_queue_cancel_all(lunar_iscsi_queue *q);
/// Moves up to `max` recorded completions, oldest first, into `out`; returns how many.
size_t lunar_iscsi_queue_drain(lunar_iscsi_queue *q, lunar_iscsi_completion *out, size_t max);
/// libiscsi's last error text for this session.
const char *lunar_iscsi_queue_error(lunar_iscsi_queue *q);

// ---- CRC32C (Castagnoli), SSE4.2 when the CPU has it, table otherwise ----
uint32_t lunar_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t lunar_crc32c_table(uint32_t crc, const void *data, size_t len);
int lunar_crc32c_is_hardware(void);

// ---- KVM (ioctls whose request numbers are macros Swift cannot import) ----
#include <linux/kvm.h>
/// Each returns the ioctl's non-negative result, or -errno.
int lunar_kvm_ioctl_value(int fd, unsigned long request, unsigned long value);
int lunar_kvm_get_api_version(int kvm);
int lunar_kvm_create_vm(int kvm);
int lunar_kvm_vcpu_mmap_size(int kvm);
int lunar_kvm_check_extension(int fd, int extension);
int lunar_kvm_set_tss_addr(int vm, uint64_t address);
int lunar_kvm_create_irqchip(int vm);
int lunar_kvm_create_pit2(int vm);
int lunar_kvm_set_user_memory_region(int vm, uint32_t slot, uint64_t guest_address, uint64_t size, void *host);
int lunar_kvm_create_vcpu(int vm, int id);
/// Fills `entries` (capacity `*count`) with the host's supported CPUID leaves; `*count` = how many.
int lunar_kvm_get_supported_cpuid(int kvm, struct kvm_cpuid_entry2 *entries, uint32_t *count);
int lunar_kvm_set_cpuid2(int vcpu, const struct kvm_cpuid_entry2 *entries, uint32_t count);
int lunar_kvm_get_sregs(int vcpu, struct kvm_sregs *sregs);
int lunar_kvm_set_sregs(int vcpu, const struct kvm_sregs *sregs);
int lunar_kvm_set_regs(int vcpu, const struct kvm_regs *regs);
int lunar_kvm_run(int vcpu);
/// A vCPU's multiprocessing state (KVM_MP_STATE_*): runnable, or waiting for INIT/SIPI.
int lunar_kvm_get_mp_state(int vcpu, uint32_t *state);
int lunar_kvm_set_mp_state(int vcpu, uint32_t state);
/// Sets an in-kernel irqchip input line to `level` (KVM_IRQ_LINE).
int lunar_kvm_irq_line(int vm, uint32_t irq, uint32_t level);
/// The fields of `struct kvm_run` a run loop reads (its unions do not import into Swift).
uint32_t lunar_kvm_run_exit_reason(const struct kvm_run *run);
/// Sets `kvm_run.immediate_exit`, which another thread may do while the vCPU runs: KVM_RUN
/// then returns -EINTR at once instead of entering the guest.
void lunar_kvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value);
void lunar_kvm_run_io(const struct kvm_run *run, uint8_t *direction, uint8_t *size, uint16_t *port,
                      uint32_t *count, uint64_t *data_offset);
uint32_t lunar_kvm_run_internal_suberror(const struct kvm_run *run);
uint64_t lunar_kvm_run_fail_entry_reason(const struct kvm_run *run);
void lunar_kvm_run_mmio(struct kvm_run *run, uint64_t *address, uint8_t **data, uint32_t *length, uint8_t *is_write);
/// KVM_IOEVENTFD on an MMIO address: a guest write of `length` bytes there (of the value 0
/// when `match_zero`) signals `fd` in the kernel instead of exiting to the VMM.
int lunar_kvm_ioeventfd(int vm, uint64_t address, uint32_t length, int fd, int match_zero, int deassign);
/// KVM_IRQFD: a write to `fd` pulses interrupt line `gsi` of the in-kernel irqchip.
int lunar_kvm_irqfd(int vm, int fd, uint32_t gsi, int deassign);

#endif
