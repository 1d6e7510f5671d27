// A freestanding test guest: entered in 64-bit mode at 0x100000 by LunarVMM's freestanding
// boot (first GiB identity-mapped, interrupts off). It prints over the COM1 UART, checks that
// an unclaimed port reads as all ones, and stops: by the exit port with a status (the
// default), or by the i8042 reset line when built with -DSTOP_BY_RESET. Built with -DIDLE it
// halts for good after printing, touching no more memory (the VMM's idle footprint, stopped
// by the host).
// Build: gcc -ffreestanding -nostdlib -fno-pic -fno-pie -mno-red-zone -m64 -O2 -c hello.c
//        ld -Ttext=0x100000 -e _start --oformat binary -o hello.bin hello.o
static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline unsigned char inb(unsigned short port) {
    unsigned char v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static void print(const char *s) {
    for (; *s; s++) {
        while (!(inb(0x3fd) & 0x20)) {}   // wait for the transmit holding register
        outb(0x3f8, (unsigned char)*s);
    }
}

void _start(void) {
    print("hello from the guest\n");
    unsigned char status = inb(0x2f0) == 0xff ? 0x31 : 0x7f;
#if defined(IDLE)
    (void)status;
#elif defined(STOP_BY_RESET)
    (void)status;
    outb(0x64, 0xfe);
#else
    outb(0x501, status);
#endif
    for (;;) __asm__ volatile("cli; hlt");
}
