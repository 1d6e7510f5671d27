// A freestanding virtio-blk driver test guest (virtio 1.x, virtio-mmio version 2 at
// 0xd0000000): negotiates VERSION_1 and FLUSH, sets up one split virtqueue, writes sector 2,
// reads it back, compares, flushes, prints the outcome over COM1 and powers off through the
// exit port with 0x31 on success (another value names the step that failed).
// Built with -DTWO_POINTS (the running-VM snapshot test): fills sectors 8-15 and 16-23 with 'A',
// flushes, reads the first back, prints "point A", waits for a byte on COM1 (the host takes a
// snapshot meanwhile), fills sectors 8-15 with 'B', flushes, reads them back, prints "point B"
// and powers off with 0x31.
#include <stdint.h>

#define MMIO 0xd0000000UL
#define REG(off) (*(volatile uint32_t *)(MMIO + (off)))

static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline unsigned char inb(unsigned short port) {
    unsigned char v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static void print(const char *s) { for (; *s; s++) outb(0x3f8, (unsigned char)*s); }
static void stop(unsigned char status, const char *why) { print(why); outb(0x501, status); for (;;) __asm__ volatile("cli; hlt"); }

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
#define QSIZE 8
static volatile struct desc *const table = (volatile struct desc *)0x200000;
static volatile uint16_t *const avail = (volatile uint16_t *)0x201000;   // flags, idx, ring[QSIZE]
static volatile uint16_t *const used = (volatile uint16_t *)0x202000;    // flags, idx, {id u32, len u32}...
static volatile uint8_t *const header = (volatile uint8_t *)0x203000;
static volatile uint8_t *const status = (volatile uint8_t *)0x203100;
static volatile uint8_t *const out = (volatile uint8_t *)0x204000;
static volatile uint8_t *const in = (volatile uint8_t *)0x205000;
static uint16_t next_avail;

static int request(uint32_t type, uint64_t sector, volatile uint8_t *buffer, uint32_t length, int device_writes) {
    *(volatile uint32_t *)header = type;
    *(volatile uint32_t *)(header + 4) = 0;
    *(volatile uint64_t *)(header + 8) = sector;
    *status = 0xff;
    table[0] = (struct desc){ (uint64_t)(uintptr_t)header, 16, 1, 1 };
    int n = 1;
    if (length) {
        table[1] = (struct desc){ (uint64_t)(uintptr_t)buffer, length, (uint16_t)(1 | (device_writes ? 2 : 0)), 2 };
        n = 2;
    } else {
        table[0].next = 1;
        n = 1;
    }
    table[n] = (struct desc){ (uint64_t)(uintptr_t)status, 1, 2, 0 };
    uint16_t seen = used[1];
    avail[2 + next_avail % QSIZE] = 0;
    __asm__ volatile("" ::: "memory");
    avail[1] = ++next_avail;
    __asm__ volatile("mfence" ::: "memory");
    REG(0x050) = 0;
    for (int spin = 0; used[1] == seen; spin++) if (spin > 1000000) return -1;
    return *status;
}

void _start(void) {
    if (REG(0x000) != 0x74726976 || REG(0x004) != 2 || REG(0x008) != 2) stop(0x41, "no virtio-blk at 0xd0000000\n");
    REG(0x070) = 0;
    REG(0x070) = 1 | 2;                                   // ACKNOWLEDGE | DRIVER
    REG(0x014) = 1;
    if (!(REG(0x010) & 1)) stop(0x42, "device lacks VERSION_1\n");
    REG(0x024) = 1; REG(0x020) = 1;                       // VERSION_1
    REG(0x024) = 0; REG(0x020) = 1u << 9;                 // FLUSH
    REG(0x070) = 1 | 2 | 8;                               // FEATURES_OK
    if (!(REG(0x070) & 8)) stop(0x43, "features refused\n");
    uint64_t capacity = *(volatile uint64_t *)(MMIO + 0x100);
    if (capacity < 16) stop(0x44, "disk too small\n");
    REG(0x030) = 0;
    if (REG(0x034) < QSIZE) stop(0x45, "queue too small\n");
    REG(0x038) = QSIZE;
    REG(0x080) = 0x200000; REG(0x084) = 0;
    REG(0x090) = 0x201000; REG(0x094) = 0;
    REG(0x0a0) = 0x202000; REG(0x0a4) = 0;
    REG(0x044) = 1;
    REG(0x070) = 1 | 2 | 8 | 4;                           // DRIVER_OK

#ifdef TWO_POINTS
    // 4 KiB-aligned, so that a LUN with 4 KiB sectors (iSCSI) serves them directly once mapped.
    for (int i = 0; i < 4096; i++) out[i] = 'A';
    if (request(1, 8, out, 4096, 0) != 0) stop(0x46, "write A failed\n");
    if (request(1, 16, out, 4096, 0) != 0) stop(0x46, "write A failed\n");
    if (request(4, 0, 0, 0, 0) != 0) stop(0x49, "flush failed\n");
    for (int i = 0; i < 4096; i++) in[i] = 0;
    if (request(0, 8, in, 4096, 1) != 0) stop(0x47, "read A failed\n");
    for (int i = 0; i < 4096; i++) if (in[i] != 'A') stop(0x48, "read back A differs\n");
    print("point A\n");
    while (!(inb(0x3fd) & 0x01)) {}
    (void)inb(0x3f8);
    for (int i = 0; i < 4096; i++) out[i] = 'B';
    if (request(1, 8, out, 4096, 0) != 0) stop(0x46, "write B failed\n");
    if (request(4, 0, 0, 0, 0) != 0) stop(0x49, "flush failed\n");
    for (int i = 0; i < 4096; i++) in[i] = 0;
    if (request(0, 8, in, 4096, 1) != 0) stop(0x47, "read B failed\n");
    for (int i = 0; i < 4096; i++) if (in[i] != 'B') stop(0x48, "read back B differs\n");
    stop(0x31, "point B\n");
#endif
    const char *text = "LunarFS disk written by a KVM guest through virtio-blk";
    for (int i = 0; i < 512; i++) out[i] = (uint8_t)(text[i % 54]);
    if (request(1, 2, out, 512, 0) != 0) stop(0x46, "write failed\n");
    for (int i = 0; i < 512; i++) in[i] = 0;
    if (request(0, 2, in, 512, 1) != 0) stop(0x47, "read failed\n");
    for (int i = 0; i < 512; i++) if (in[i] != out[i]) stop(0x48, "read back differs\n");
    if (request(4, 0, 0, 0, 0) != 0) stop(0x49, "flush failed\n");
    if (request(0, capacity, in, 512, 1) != 1) stop(0x4a, "read past the end did not fail\n");
    stop(0x31, "virtio-blk ok\n");
}
