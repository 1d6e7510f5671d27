// The application processors' way into 64-bit mode. The bootstrap processor copies
// ap_trampoline..ap_trampoline_end to TRAMPOLINE, the page its SIPIs name, and fills in
// ap_gdtr and ap_cr3 there with its own GDT and page tables (the VMM's). An AP starts in real
// mode at CS:IP = TRAMPOLINE>>4:0, switches to 32-bit protected mode (the GDT's flat 32-bit
// code segment, 0x18), turns on PAE, long mode and paging, and far-jumps to ap_long_mode at
// its linked address, which picks a stack by local APIC ID and calls ap_main(apic_id).
// Built with smp.c (see that file).
#define TRAMPOLINE 0x8000
#define CODE64 0x08
#define DATA 0x10
#define CODE32 0x18
// Where a label of the copied code ends up, as an offset from CS (real mode) or an address.
#define OFFSET(label) ((label) - ap_trampoline)
#define ADDRESS(label) (TRAMPOLINE + (label) - ap_trampoline)

    .text
    .globl ap_trampoline, ap_trampoline_end, ap_gdtr, ap_cr3

    .code16
ap_trampoline:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl OFFSET(ap_gdtr)
    mov %cr0, %eax
    or $1, %eax                     // PE
    mov %eax, %cr0
    ljmpl $CODE32, $ADDRESS(ap_protected)

    .code32
ap_protected:
    mov $DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax                  // PAE
    mov %eax, %cr4
    mov ADDRESS(ap_cr3), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           // EFER
    rdmsr
    or $0x100, %eax                 // LME
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax            // PG: long mode, compatibility submode until the jump
    mov %eax, %cr0
    ljmp $CODE64, $ap_long_mode

    .balign 8
ap_gdtr:                            // limit, 32-bit base: what lgdtl reads outside 64-bit mode
    .word 0
    .long 0
ap_cr3:
    .long 0
ap_trampoline_end:

    .code64
ap_long_mode:
    mov $DATA, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $0xfee00020, %esi           // local APIC ID register (zero-extended, not sign-extended)
    mov (%rsi), %edi
    shr $24, %edi
    lea 1(%rdi), %eax               // stacks grow down from the end of ap_stacks[id]
    shl $12, %rax
    lea ap_stacks(%rax), %rsp
    call ap_main
1:  cli
    hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits
