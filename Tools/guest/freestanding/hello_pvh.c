// The hello guest for QEMU (-M microvm -kernel hello_pvh.elf), the yardstick of Tools/bench/vmm.sh:
// the same text over the COM1 UART and the same power-off through port 0x501 (QEMU's
// isa-debug-exit) as hello.c, from a 32-bit ELF that QEMU boots by its PVH entry note
// (XEN_ELFNOTE_PHYS32_ENTRY): entered in 32-bit protected mode, paging off, no stack.
// Built with -DIDLE it halts for good after printing.
// Build: gcc -ffreestanding -nostdlib -fno-pic -fno-pie -m32 -O2 -c hello_pvh.c
//        ld -m elf_i386 -Ttext=0x100000 -e _start -o hello_pvh.elf hello_pvh.o
__asm__(".pushsection .note.Xen, \"a\", @note\n"
        ".balign 4\n"
        ".long 4\n"            // name size ("Xen\0")
        ".long 4\n"            // descriptor size
        ".long 18\n"           // XEN_ELFNOTE_PHYS32_ENTRY
        ".asciz \"Xen\"\n"
        ".balign 4\n"
        ".long _start\n"
        ".popsection\n"
        ".text\n"
        ".globl _start\n"
        "_start:\n"
        "    mov $0x80000, %esp\n"
        "    call hello\n"
        "1:  cli\n"
        "    hlt\n"
        "    jmp 1b\n");

static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline unsigned char inb(unsigned short port) {
    unsigned char v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static void print(const char *s) {
    for (; *s; s++) {
        while (!(inb(0x3fd) & 0x20)) {}
        outb(0x3f8, (unsigned char)*s);
    }
}

void hello(void) {
    print("hello from the guest\n");
#ifndef IDLE
    outb(0x501, 0x31);
#endif
}
