// Thin wrappers over libiscsi for LunarIO's ISCSILun. The synchronous ones each issue one
// command and report its SCSI status and sense data; the asynchronous ones (a session of a
// queue's own) issue a command with a tag and record the same outcome for Swift to drain.
// Retries, fallbacks and error mapping live in Swift.
#include "CLunar.h"
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void lunar_iscsi_clear(lunar_scsi_result *r) { memset(r, 0, sizeof *r); }

/// Fills `r` from a finished task (or its absence) and frees the task. 0 on GOOD, -1 otherwise.
static int lunar_iscsi_finish(struct iscsi_context *iscsi, struct scsi_task *task, lunar_scsi_result *r) {
    lunar_iscsi_clear(r);
    if (task == NULL) {
        r->status = -1;
        snprintf(r->message, sizeof r->message, "%s", iscsi_get_error(iscsi));
        return -1;
    }
    r->status = task->status;
    r->residual = task->residual_status == SCSI_RESIDUAL_NO_RESIDUAL ? 0 : (uint64_t)task->residual;
    if (task->status == SCSI_STATUS_CHECK_CONDITION) {
        r->sense_key = (int)task->sense.key;
        r->asc = (task->sense.ascq >> 8) & 0xff;
        r->ascq = task->sense.ascq & 0xff;
        // On CHECK CONDITION libiscsi leaves the sense data (2-byte length, then the bytes) in datain.
        if (task->datain.data != NULL && task->datain.size > 2) {
            int len = (task->datain.data[0] << 8) | task->datain.data[1];
            if (len > task->datain.size - 2) len = task->datain.size - 2;
            if (len > (int)sizeof r->sense) len = (int)sizeof r->sense;
            if (len > 0) memcpy(r->sense, task->datain.data + 2, (size_t)len);
            r->sense_length = len > 0 ? len : 0;
        }
    }
    if (task->status != SCSI_STATUS_GOOD) {
        snprintf(r->message, sizeof r->message, "%s", iscsi_get_error(iscsi));
    }
    int ok = task->status == SCSI_STATUS_GOOD ? 0 : -1;
    scsi_free_scsi_task(task);
    return ok;
}

struct iscsi_context *lunar_iscsi_connect(const char *url, const char *initiator, uint32_t isid, int *lun,
                                          char *error, size_t error_length) {
    struct iscsi_context *iscsi = iscsi_create_context(initiator);
    if (iscsi == NULL) {
        snprintf(error, error_length, "cannot create an iSCSI context");
        return NULL;
    }
    struct iscsi_url *parsed = iscsi_parse_full_url(iscsi, url);
    if (parsed == NULL) {
        snprintf(error, error_length, "%s", iscsi_get_error(iscsi));
        iscsi_destroy_context(iscsi);
        return NULL;
    }
    iscsi_set_isid_random(iscsi, isid, 0);
    iscsi_set_targetname(iscsi, parsed->target);
    iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
    if (parsed->user[0] != '\0') {
        iscsi_set_initiator_username_pwd(iscsi, parsed->user, parsed->passwd);
    }
    if (iscsi_full_connect_sync(iscsi, parsed->portal, parsed->lun) != 0) {
        snprintf(error, error_length, "login to %s at %s failed: %s", parsed->target, parsed->portal,
                 iscsi_get_error(iscsi));
        iscsi_destroy_url(parsed);
        iscsi_destroy_context(iscsi);
        return NULL;
    }
    *lun = parsed->lun;
    iscsi_destroy_url(parsed);
    return iscsi;
}

void lunar_iscsi_disconnect(struct iscsi_context *iscsi) {
    if (iscsi == NULL) return;
    iscsi_logout_sync(iscsi);
    iscsi_destroy_context(iscsi);
}

int lunar_iscsi_read16(struct iscsi_context *iscsi, int lun, uint64_t lba, void *buffer, uint32_t length,
                       int block_size, lunar_scsi_result *r) {
    struct scsi_iovec iov = { .iov_base = buffer, .iov_len = length };
    return lunar_iscsi_finish(iscsi, iscsi_read16_iov_sync(iscsi, lun, lba, length, block_size, 0, 0, 0, 0, 0, &iov, 1), r);
}

int lunar_iscsi_write16(struct iscsi_context *iscsi, int lun, uint64_t lba, const void *buffer, uint32_t length,
                        int block_size, lunar_scsi_result *r) {
    struct scsi_iovec iov = { .iov_base = (void *)buffer, .iov_len = length };
    return lunar_iscsi_finish(iscsi, iscsi_write16_iov_sync(iscsi, lun, lba, NULL, length, block_size, 0, 0, 0, 0, 0, &iov, 1), r);
}

int lunar_iscsi_synchronize_cache16(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r) {
    return lunar_iscsi_finish(iscsi, iscsi_synchronizecache16_sync(iscsi, lun, 0, 0, 0, 0), r);
}

int lunar_iscsi_unmap(struct iscsi_context *iscsi, int lun, uint64_t lba, uint32_t blocks, lunar_scsi_result *r) {
    struct unmap_list list = { .lba = lba, .num = blocks };
    return lunar_iscsi_finish(iscsi, iscsi_unmap_sync(iscsi, lun, 0, 0, &list, 1), r);
}

int lunar_iscsi_write_same16_unmap(struct iscsi_context *iscsi, int lun, uint64_t lba, uint32_t blocks,
                                   const void *zero_block, int block_size, lunar_scsi_result *r) {
    return lunar_iscsi_finish(iscsi, iscsi_writesame16_sync(iscsi, lun, lba, (unsigned char *)zero_block,
                                                            (uint32_t)block_size, blocks, 0, 1, 0, 0), r);
}

int lunar_iscsi_compare_and_write(struct iscsi_context *iscsi, int lun, uint64_t lba, const void *expected_then_new,
                                  uint32_t length, int block_size, lunar_scsi_result *r) {
    return lunar_iscsi_finish(iscsi, iscsi_compareandwrite_sync(iscsi, lun, lba, (unsigned char *)expected_then_new,
                                                                length, block_size, 0, 0, 0, 0, 0), r);
}

int lunar_iscsi_read_capacity16(struct iscsi_context *iscsi, int lun, uint64_t *last_lba, uint32_t *block_size,
                                int *lbpme, int *lbprz, lunar_scsi_result *r) {
    struct scsi_task *task = iscsi_readcapacity16_sync(iscsi, lun);
    if (task != NULL && task->status == SCSI_STATUS_GOOD) {
        struct scsi_readcapacity16 *rc = scsi_datain_unmarshall(task);
        if (rc == NULL) {
            scsi_free_scsi_task(task);
            lunar_iscsi_clear(r);
            r->status = -1;
            snprintf(r->message, sizeof r->message, "cannot parse READ CAPACITY(16) data");
            return -1;
        }
        *last_lba = rc->returned_lba;
        *block_size = rc->block_length;
        *lbpme = rc->lbpme;
        *lbprz = rc->lbprz;
    }
    return lunar_iscsi_finish(iscsi, task, r);
}

int lunar_iscsi_reserve6(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r) {
    return lunar_iscsi_finish(iscsi, iscsi_reserve6_sync(iscsi, lun), r);
}

int lunar_iscsi_release6(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r) {
    return lunar_iscsi_finish(iscsi, iscsi_release6_sync(iscsi, lun), r);
}

int lunar_iscsi_test_unit_ready(struct iscsi_context *iscsi, int lun, lunar_scsi_result *r) {
    return lunar_iscsi_finish(iscsi, iscsi_testunitready_sync(iscsi, lun), r);
}

// ---- the asynchronous session: issue with a tag, record the outcome, Swift drains ----

struct lunar_iscsi_queue {
    struct iscsi_context *iscsi;
    int lun;
    lunar_iscsi_completion *done;
    size_t count;
    size_t capacity;
};

/// What a callback needs; the iovec lives here because libiscsi keeps a pointer to it.
struct lunar_iscsi_command {
    struct lunar_iscsi_queue *queue;
    uint64_t tag;
    struct scsi_iovec iov;
};

lunar_iscsi_queue *lunar_iscsi_queue_open(const char *url, const char *initiator, uint32_t isid, char *error,
                                          size_t error_length) {
    int lun = 0;
    struct iscsi_context *iscsi = lunar_iscsi_connect(url, initiator, isid, &lun, error, error_length);
    if (iscsi == NULL) return NULL;
    lunar_iscsi_queue *q = calloc(1, sizeof *q);
    if (q == NULL) {
        snprintf(error, error_length, "out of memory");
        lunar_iscsi_disconnect(iscsi);
        return NULL;
    }
    iscsi_set_noautoreconnect(iscsi, 1);
    q->iscsi = iscsi;
    q->lun = lun;
    return q;
}

static void lunar_iscsi_queue_record(struct iscsi_context *iscsi, int status, void *command_data, void *private_data) {
    struct lunar_iscsi_command *c = private_data;
    struct lunar_iscsi_queue *q = c->queue;
    struct scsi_task *task = command_data;
    if (q->count == q->capacity) {
        size_t capacity = q->capacity ? q->capacity * 2 : 64;
        lunar_iscsi_completion *grown = realloc(q->done, capacity * sizeof *grown);
        if (grown == NULL) abort();  // nowhere to report the outcome: better stop than lose it
        q->done = grown;
        q->capacity = capacity;
    }
    lunar_iscsi_completion *e = &q->done[q->count++];
    e->tag = c->tag;
    if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR || (status & 0x0f000000) != 0) {
        // No SCSI status came back: the command was cancelled, timed out or the session failed.
        if (task != NULL) scsi_free_scsi_task(task);
        lunar_iscsi_finish(iscsi, NULL, &e->result);
    } else {
        if (task != NULL) task->status = status;
        lunar_iscsi_finish(iscsi, task, &e->result);
    }
    free(c);
}

static struct lunar_iscsi_command *lunar_iscsi_command_new(lunar_iscsi_queue *q, uint64_t tag, const void *buffer,
                                                           uint32_t length) {
    struct lunar_iscsi_command *c = malloc(sizeof *c);
    if (c == NULL) return NULL;
    c->queue = q;
    c->tag = tag;
    c->iov.iov_base = (void *)buffer;
    c->iov.iov_len = length;
    return c;
}

static int lunar_iscsi_issued(struct lunar_iscsi_command *c, struct scsi_task *task) {
    if (task != NULL) return 0;
    free(c);
    return -1;
}

int lunar_iscsi_queue_read16(lunar_iscsi_queue *q, uint64_t lba, void *buffer, uint32_t length, int block_size,
                             uint64_t tag) {
    struct lunar_iscsi_command *c = lunar_iscsi_command_new(q, tag, buffer, length);
    if (c == NULL) return -1;
    return lunar_iscsi_issued(c, iscsi_read16_iov_task(q->iscsi, q->lun, lba, length, block_size, 0, 0, 0, 0, 0,
                                                       lunar_iscsi_queue_record, c, &c->iov, 1));
}

int lunar_iscsi_queue_write16(lunar_iscsi_queue *q, uint64_t lba, const void *buffer, uint32_t length,
                              int block_size, uint64_t tag) {
    struct lunar_iscsi_command *c = lunar_iscsi_command_new(q, tag, buffer, length);
    if (c == NULL) return -1;
    return lunar_iscsi_issued(c, iscsi_write16_iov_task(q->iscsi, q->lun, lba, NULL, length, block_size, 0, 0, 0, 0, 0,
                                                        lunar_iscsi_queue_record, c, &c->iov, 1));
}

int lunar_iscsi_queue_synchronize_cache16(lunar_iscsi_queue *q, uint64_t tag) {
    struct lunar_iscsi_command *c = lunar_iscsi_command_new(q, tag, NULL, 0);
    if (c == NULL) return -1;
    return lunar_iscsi_issued(c, iscsi_synchronizecache16_task(q->iscsi, q->lun, 0, 0, 0, 0,
                                                               lunar_iscsi_queue_record, c));
}

int lunar_iscsi_queue_fd(lunar_iscsi_queue *q) { return iscsi_get_fd(q->iscsi); }

int lunar_iscsi_queue_events(lunar_iscsi_queue *q) { return iscsi_which_events(q->iscsi); }

int lunar_iscsi_queue_service(lunar_iscsi_queue *q, int revents) { return iscsi_service(q->iscsi, revents) < 0 ? -1 : 0; }

void lunar_iscsi_queue_cancel_all(lunar_iscsi_queue *q) { iscsi_scsi_cancel_all_tasks(q->iscsi); }

size_t lunar_iscsi_queue_drain(lunar_iscsi_queue *q, lunar_iscsi_completion *out, size_t max) {
    size_t n = q->count < max ? q->count : max;
    if (n == 0) return 0;
    memcpy(out, q->done, n * sizeof *out);
    memmove(q->done, q->done + n, (q->count - n) * sizeof *out);
    q->count -= n;
    return n;
}

const char *lunar_iscsi_queue_error(lunar_iscsi_queue *q) { return iscsi_get_error(q->iscsi); }

void lunar_iscsi_queue_close(lunar_iscsi_queue *q, int logout) {
    if (q == NULL) return;
    // The callbacks free what each command holds.
    iscsi_scsi_cancel_all_tasks(q->iscsi);
    if (logout) iscsi_logout_sync(q->iscsi);
    iscsi_destroy_context(q->iscsi);
    free(q->done);
    free(q);
}
