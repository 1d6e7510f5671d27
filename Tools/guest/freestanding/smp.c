// A freestanding SMP test guest, built with smp_trampoline.S into a static ELF linked at 1 MiB.
// The bootstrap processor learns the vCPU count from CPUID (leaf 0xB's core level, else leaf 1),
// copies the AP trampoline to the page its SIPIs name, then starts each application processor
// through its local APIC (xAPIC MMIO at 0xfee00000): INIT, then SIPI twice, as the MP spec says.
// Each AP checks that CPUID's APIC IDs (leaves 1, 0xb, AMD's 0x8000001e) agree with its local
// APIC's, prints "cpu N up" under a spinlock, counts itself in and halts. The BSP waits (bounded) for all of them, prints
// "all N cpus up" and powers off with status N through the exit port (0x501).
// With -DAP_POWEROFF the last AP instead waits for the others, prints "cpu N powers off" and
// powers off with status 0x40 + N, while the BSP and the other APs spin forever.
// With -DAP_FAULT the last AP jumps to an address with no memory behind it, where KVM cannot
// fetch an instruction: the run ends with KVM's internal error while the BSP spins.
// With -DAP_TRIPLE_FAULT the last AP loads an empty IDT and faults: a triple fault, which
// shuts the VM down while the BSP spins.
// With -DNO_SIPI the BSP starts no AP: it lets time pass, so that they are all waiting for
// SIPI inside KVM_RUN, prints "no APs started" and powers off with status 0x50.
// Guest code runs ~1 µs per instruction under a paravirtual KVM, so every loop is short.
#include <stdint.h>

#define APIC 0xfee00000UL
#define APIC_ID 0x20
#define APIC_SPURIOUS 0xf0
#define APIC_ICR_LOW 0x300
#define APIC_ICR_HIGH 0x310
#define TRAMPOLINE 0x8000
#define MAX_CPUS 16

extern char ap_trampoline[], ap_trampoline_end[], ap_gdtr[], ap_cr3[];
uint8_t ap_stacks[MAX_CPUS][4096] __attribute__((aligned(4096)));

static volatile uint32_t print_lock;
static volatile uint32_t started;       // APs that have checked in
static uint32_t ncpus;

static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint32_t apic_read(uint32_t reg) { return *(volatile uint32_t *)(APIC + reg); }
static inline void apic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)(APIC + reg) = v; }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}

static void lock(void) {
    while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE)) while (print_lock) pause();
}
static void unlock(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }

// The UART's transmitter is always ready in this VMM: no line status polling, one exit a byte.
static void print(const char *s) { for (; *s; s++) outb(0x3f8, (unsigned char)*s); }
static void print_number(uint32_t n) {
    char digits[10];
    int i = 0;
    do { digits[i++] = (char)('0' + n % 10); n /= 10; } while (n);
    while (i) outb(0x3f8, (unsigned char)digits[--i]);
}
static void say(const char *before, uint32_t n, const char *after) {
    lock();
    print(before); print_number(n); print(after);
    unlock();
}
static void __attribute__((noreturn)) power_off(uint8_t status) {
    outb(0x501, status);
    for (;;) __asm__ volatile("cli; hlt");
}
static void __attribute__((noreturn)) spin(void) { for (;;) pause(); }

static uint32_t max_basic_leaf(void) { uint32_t r[4]; cpuid(0, 0, r); return r[0]; }

static void delay(uint32_t n) { for (volatile uint32_t i = 0; i < n; i++) {} }

static void send_ipi(uint32_t apic_id, uint32_t low) {
    apic_write(APIC_ICR_HIGH, apic_id << 24);
    apic_write(APIC_ICR_LOW, low);
    for (uint32_t i = 0; i < 1000 && (apic_read(APIC_ICR_LOW) & (1 << 12)); i++) pause(); // delivery pending
}

void ap_main(uint32_t apic_id) {
    uint32_t r[4];
    cpuid(1, 0, r);
    if (r[1] >> 24 != apic_id) { say("cpu ", apic_id, " has the wrong initial APIC ID in CPUID leaf 1\n"); spin(); }
    if (max_basic_leaf() >= 0xb) {
        cpuid(0xb, 0, r);
        if (r[3] != apic_id) { say("cpu ", apic_id, " has the wrong x2APIC ID in CPUID leaf 0xb\n"); spin(); }
    }
    cpuid(0x80000000, 0, r);
    if (r[0] >= 0x8000001e) {
        cpuid(0x80000001, 0, r);
        if (r[2] & (1 << 22)) {                                     // TOPOEXT (AMD)
            cpuid(0x8000001e, 0, r);
            if (r[0] != apic_id) { say("cpu ", apic_id, " has the wrong extended APIC ID in CPUID leaf 0x8000001e\n"); spin(); }
        }
    }
    say("cpu ", apic_id, " up\n");
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
#ifdef AP_POWEROFF
    if (apic_id == ncpus - 1) {
        for (uint32_t i = 0; i < 1000000 && started < ncpus - 1; i++) pause();
        say("cpu ", apic_id, " powers off\n");
        power_off((uint8_t)(0x40 + apic_id));
    }
    spin();
#endif
#ifdef AP_FAULT
    if (apic_id == ncpus - 1) {
        ((void (*)(void))0xc0000000UL)();
    }
    spin();
#endif
#ifdef AP_TRIPLE_FAULT
    if (apic_id == ncpus - 1) {
        struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idt = { 0, 0 };
        __asm__ volatile("lidt %0; ud2" :: "m"(idt));
    }
    spin();
#endif
    // Returns to the trampoline, which halts with interrupts off.
}

void _start(void) {
    uint32_t r[4];
    cpuid(1, 0, r);
    ncpus = (r[1] >> 16) & 0xff;
    if (max_basic_leaf() >= 0xb) {
        cpuid(0xb, 1, r);
        if (((r[2] >> 8) & 0xff) == 2 && (r[1] & 0xffff) != ncpus) { say("leaf 0xb counts ", r[1] & 0xffff, " cpus, leaf 1 another number\n"); power_off(0xf0); }
    }
    if (ncpus < 1 || ncpus > MAX_CPUS) { say("bad cpu count ", ncpus, "\n"); power_off(0xf1); }
    uint32_t bsp = apic_read(APIC_ID) >> 24;
    if (bsp != 0) { say("bsp has APIC ID ", bsp, "\n"); power_off(0xf2); }

    // The trampoline, and the GDT and page tables it is to switch to: this CPU's own.
    for (char *from = ap_trampoline, *to = (char *)TRAMPOLINE; from < ap_trampoline_end; from++, to++) *to = *from;
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } gdtr;
    uint64_t cr3;
    __asm__ volatile("sgdt %0" : "=m"(gdtr));
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    *(volatile uint16_t *)(TRAMPOLINE + (ap_gdtr - ap_trampoline)) = gdtr.limit;
    *(volatile uint32_t *)(TRAMPOLINE + (ap_gdtr - ap_trampoline) + 2) = (uint32_t)gdtr.base;
    *(volatile uint32_t *)(TRAMPOLINE + (ap_cr3 - ap_trampoline)) = (uint32_t)cr3;

    apic_write(APIC_SPURIOUS, 0x1ff);                               // software-enable, vector 0xff
#ifdef NO_SIPI
    delay(100000);
    print("no APs started\n");
    power_off(0x50);
#endif
    for (uint32_t ap = 1; ap < ncpus; ap++) {
        send_ipi(ap, 0x4500);                                       // INIT, level assert
        send_ipi(ap, 0x8500);                                       // INIT, level de-assert
        delay(100);
        send_ipi(ap, 0x4600 | (TRAMPOLINE >> 12));                  // SIPI
        delay(20);
        send_ipi(ap, 0x4600 | (TRAMPOLINE >> 12));                  // and again, per the MP spec
    }
#if defined(AP_POWEROFF) || defined(AP_FAULT) || defined(AP_TRIPLE_FAULT)
    spin();
#endif
    for (uint32_t i = 0; i < 1000000 && started < ncpus - 1; i++) pause();
    if (started != ncpus - 1) {
        lock(); print("only "); print_number(started + 1); print(" of "); print_number(ncpus); print(" cpus up\n"); unlock();
        power_off((uint8_t)(0x80 + started + 1));
    }
    say("all ", ncpus, " cpus up\n");
    power_off((uint8_t)ncpus);
}
