// A freestanding test guest for the UART's receive side: prints "> ", then reads bytes from
// COM1 by polling the line status (data ready), echoing each, until a newline; powers off
// through the exit port with the count of bytes before the newline.
// Build: as hello.c.
static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline unsigned char inb(unsigned short port) {
    unsigned char v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

void _start(void) {
    outb(0x3f8, '>');
    outb(0x3f8, ' ');
    unsigned char count = 0;
    for (;;) {
        while (!(inb(0x3fd) & 0x01)) {}
        unsigned char c = inb(0x3f8);
        outb(0x3f8, c);
        if (c == '\n') break;
        count++;
    }
    outb(0x501, count);
    for (;;) __asm__ volatile("cli; hlt");
}
