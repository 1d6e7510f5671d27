// A freestanding test guest with two virtio-blk devices (virtio-mmio version 2 at 0xd0000000
// and 0xd0000200). On device 0 it submits malformed descriptor chains, one per round, and
// expects the device to stop serving (DEVICE_NEEDS_RESET in its status) or to answer with an
// I/O error, resetting it between rounds; it never asks device 0 to write anything that
// could land. Between those rounds it uses device 1 normally: 4 KiB writes at sectors
// 8, 16, ..., an overwrite, read-backs, a flush. It prints one line per round over COM1
// and powers off through the exit port with 0x31 when every expectation held (another
// value names the step that failed).
#include <stdint.h>

#define DEV0 0xd0000000UL
#define DEV1 0xd0000200UL
#define REG(dev, off) (*(volatile uint32_t *)((dev) + (off)))
#define NEEDS_RESET 0x40u

static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static void print(const char *s) { for (; *s; s++) outb(0x3f8, (unsigned char)*s); }
static void stop(unsigned char status, const char *why) { print(why); outb(0x501, status); for (;;) __asm__ volatile("cli; hlt"); }

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
#define QSIZE 8
#define F_NEXT 1
#define F_WRITE 2

struct queue {
    unsigned long mmio;
    volatile struct desc *table;
    volatile uint16_t *avail;  // flags, idx, ring[QSIZE]
    volatile uint16_t *used;   // flags, idx, {id u32, len u32}...
    volatile uint8_t *header;
    volatile uint8_t *status;
    uint16_t next_avail;
};

static struct queue q0 = { DEV0, (volatile struct desc *)0x200000, (volatile uint16_t *)0x201000,
                           (volatile uint16_t *)0x202000, (volatile uint8_t *)0x203000, (volatile uint8_t *)0x203100, 0 };
static struct queue q1 = { DEV1, (volatile struct desc *)0x300000, (volatile uint16_t *)0x301000,
                           (volatile uint16_t *)0x302000, (volatile uint8_t *)0x303000, (volatile uint8_t *)0x303100, 0 };
static volatile uint8_t *const scratch0 = (volatile uint8_t *)0x204000;  // device 0's data buffer
static volatile uint8_t *const out1 = (volatile uint8_t *)0x304000;      // device 1: 4 KiB to write
static volatile uint8_t *const in1 = (volatile uint8_t *)0x308000;       // device 1: 4 KiB read back

// Reset, negotiate VERSION_1 (and FLUSH), set up queue 0, DRIVER_OK.
static void setup(struct queue *q, unsigned char fail) {
    unsigned long m = q->mmio;
    if (REG(m, 0x000) != 0x74726976 || REG(m, 0x004) != 2 || REG(m, 0x008) != 2) stop(fail, "no virtio-blk\n");
    REG(m, 0x070) = 0;
    if (REG(m, 0x070) != 0) stop(fail, "reset did not clear the status\n");
    REG(m, 0x070) = 1 | 2;
    REG(m, 0x024) = 1; REG(m, 0x020) = 1;
    REG(m, 0x024) = 0; REG(m, 0x020) = 1u << 9;
    REG(m, 0x070) = 1 | 2 | 8;
    REG(m, 0x030) = 0;
    REG(m, 0x038) = QSIZE;
    for (int i = 0; i < 2 + QSIZE; i++) q->avail[i] = 0;
    for (int i = 0; i < 2 + 4 * QSIZE; i++) q->used[i] = 0;
    REG(m, 0x080) = (uint32_t)(uintptr_t)q->table; REG(m, 0x084) = 0;
    REG(m, 0x090) = (uint32_t)(uintptr_t)q->avail; REG(m, 0x094) = 0;
    REG(m, 0x0a0) = (uint32_t)(uintptr_t)q->used; REG(m, 0x0a4) = 0;
    REG(m, 0x044) = 1;
    REG(m, 0x070) = 1 | 2 | 8 | 4;
    q->next_avail = 0;
}

static void header(struct queue *q, uint32_t type, uint64_t sector) {
    *(volatile uint32_t *)q->header = type;
    *(volatile uint32_t *)(q->header + 4) = 0;
    *(volatile uint64_t *)(q->header + 8) = sector;
    *q->status = 0xff;
}

static void set(volatile struct desc *d, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    d->addr = addr; d->len = len; d->flags = flags; d->next = next;
}

// Offers the chain at `head` and notifies. Returns 0 once the chain came back in the used ring,
// 1 once the device says it needs a reset, -1 when neither happened in time.
static int submit(struct queue *q, uint16_t head) {
    uint16_t seen = q->used[1];
    q->avail[2 + q->next_avail % QSIZE] = head;
    __asm__ volatile("" ::: "memory");
    q->avail[1] = ++q->next_avail;
    __asm__ volatile("mfence" ::: "memory");
    REG(q->mmio, 0x050) = 0;
    for (int spin = 0; spin < 2000000; spin++) {
        if (q->used[1] != seen) return 0;
        // Registers cost an exit each: look at the status only now and then.
        if ((spin & 255) == 255 && (REG(q->mmio, 0x070) & NEEDS_RESET)) return 1;
    }
    return -1;
}

// One ordinary request on device 1 (header, one data buffer unless len is 0, status).
static int request1(uint32_t type, uint64_t sector, volatile uint8_t *buffer, uint32_t len, int device_writes) {
    header(&q1, type, sector);
    int n = 1;
    if (len) {
        set(&q1.table[0], (uintptr_t)q1.header, 16, F_NEXT, 1);
        set(&q1.table[1], (uintptr_t)buffer, len, (uint16_t)(F_NEXT | (device_writes ? F_WRITE : 0)), 2);
        n = 2;
    } else {
        set(&q1.table[0], (uintptr_t)q1.header, 16, F_NEXT, 1);
    }
    set(&q1.table[n], (uintptr_t)q1.status, 1, F_WRITE, 0);
    if (submit(&q1, 0) != 0) return -1;
    return *q1.status;
}

static uint8_t byte_for(int round, int i) { return (uint8_t)((round * 37 + i * 13 + (i >> 8)) ^ 0x5a); }

// Device 1's step in round `round`: write 4 KiB at sector 8 * (round + 1).
static void healthy_write(int round) {
    for (int i = 0; i < 4096; i++) out1[i] = byte_for(round, i);
    if (request1(1, 8 * (uint64_t)(round + 1), out1, 4096, 0) != 0) stop(0x60 + round, "device 1: write failed\n");
    if (REG(DEV1, 0x070) & NEEDS_RESET) stop(0x70 + round, "device 1 broke\n");
}

static void healthy_check(int round) {
    for (int i = 0; i < 4096; i++) in1[i] = 0;
    if (request1(0, 8 * (uint64_t)(round + 1), in1, 4096, 1) != 0) stop(0x50, "device 1: read failed\n");
    for (int i = 0; i < 4096; i++) if (in1[i] != byte_for(round, i)) stop(0x51, "device 1: read back differs\n");
}

enum { LOOP, OUT_OF_RANGE, OVERFLOW, ZERO_LENGTH, TOO_LONG, BAD_HEAD, WRONG_DIRECTION, ROUNDS };
static const char *const names[ROUNDS] = {
    "descriptor loop", "address outside memory", "length overflows", "zero-length header",
    "chain longer than the queue", "head out of range", "write from a device-writable buffer",
};

// Lays out the malformed chain of one round on device 0; returns its head.
static uint16_t hostile(int round) {
    header(&q0, 1, 0);  // a write of sector 0: if anything of it landed, the test sees it
    for (int i = 0; i < 512; i++) scratch0[i] = 0xee;
    switch (round) {
    case LOOP:
        set(&q0.table[0], (uintptr_t)q0.header, 16, F_NEXT, 1);
        set(&q0.table[1], (uintptr_t)scratch0, 512, F_NEXT, 0);
        return 0;
    case OUT_OF_RANGE:
        set(&q0.table[0], (uintptr_t)q0.header, 16, F_NEXT, 1);
        set(&q0.table[1], 0x40000000, 512, F_NEXT, 2);  // 1 GiB: past the guest's 64 MiB
        set(&q0.table[2], (uintptr_t)q0.status, 1, F_WRITE, 0);
        return 0;
    case OVERFLOW:
        set(&q0.table[0], (uintptr_t)q0.header, 16, F_NEXT, 1);
        set(&q0.table[1], 0xfffffffffffff000ull, 0x2000, F_NEXT, 2);  // address + length wraps
        set(&q0.table[2], (uintptr_t)q0.status, 1, F_WRITE, 0);
        return 0;
    case ZERO_LENGTH:
        set(&q0.table[0], (uintptr_t)q0.header, 0, F_NEXT, 1);
        set(&q0.table[1], (uintptr_t)scratch0, 512, F_NEXT, 2);
        set(&q0.table[2], (uintptr_t)q0.status, 1, F_WRITE, 0);
        return 0;
    case TOO_LONG:
        // Every descriptor of the table chained, the last back to the first.
        set(&q0.table[0], (uintptr_t)q0.header, 16, F_NEXT, 1);
        for (int i = 1; i < QSIZE; i++) set(&q0.table[i], (uintptr_t)scratch0, 512, F_NEXT, (uint16_t)((i + 1) % QSIZE));
        return 0;
    case BAD_HEAD:
        set(&q0.table[0], (uintptr_t)q0.header, 16, F_NEXT, 1);
        return 200;
    default:  // WRONG_DIRECTION
        set(&q0.table[0], (uintptr_t)q0.header, 16, F_NEXT, 1);
        set(&q0.table[1], (uintptr_t)scratch0, 512, F_NEXT | F_WRITE, 2);
        set(&q0.table[2], (uintptr_t)q0.status, 1, F_WRITE, 0);
        return 0;
    }
}

void _start(void) {
    setup(&q1, 0x41);
    for (int round = 0; round < ROUNDS; round++) {
        setup(&q0, 0x42);
        int r = submit(&q0, hostile(round));
        print("device 0, ");
        print(names[round]);
        if (r == 1) {
            print(": needs reset\n");
        } else if (r == 0 && *q0.status == 1) {
            print(": I/O error\n");
        } else {
            print(": NOT REFUSED\n");
            stop(0x43, "");
        }
        healthy_write(round);
    }
    setup(&q0, 0x44);  // device 0 serves again after its reset: a read of sector 0 works
    header(&q0, 0, 0);
    set(&q0.table[0], (uintptr_t)q0.header, 16, F_NEXT, 1);
    set(&q0.table[1], (uintptr_t)scratch0, 512, F_NEXT | F_WRITE, 2);
    set(&q0.table[2], (uintptr_t)q0.status, 1, F_WRITE, 0);
    if (submit(&q0, 0) != 0 || *q0.status != 0) stop(0x45, "device 0 did not recover after its reset\n");
    print("device 0 serves again after reset\n");

    healthy_write(0);  // again, over blocks now allocated: the direct path this time
    for (int round = 0; round < ROUNDS; round++) healthy_check(round);
    if (request1(4, 0, 0, 0, 0) != 0) stop(0x52, "device 1: flush failed\n");
    print("device 1: 8 writes, 7 read-backs and a flush ok\n");
    stop(0x31, "hostile ok\n");
}
