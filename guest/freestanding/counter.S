/*
 * ateom's freestanding test guest: a counter on the serial console, no operating system.
 *
 * It prints "READY" on COM1, then answers every byte it receives with a counter kept in RAM
 * ("1", "2", ...), one decimal line per byte. Restored from a snapshot, it continues where
 * it stopped, which is what the microVM backends' tests check with a real VMM.
 *
 * Boot: an ELF64 loaded at 1 MiB and entered in 64-bit long mode (Firecracker's entry for
 * ELF kernels without a PVH note: paging on with the first GiB identity-mapped, interrupts
 * off, no IDT). It installs its own IDT, routes the UART's receive interrupt through the
 * 8259 PIC (IRQ4 -> vector 0x24) and sleeps in `hlt` between bytes, so an idle guest costs
 * no host CPU.
 */

        .set COM1,      0x3f8
        .set COM1_IER,  0x3f9
        .set COM1_MCR,  0x3fc
        .set COM1_LSR,  0x3fd
        .set PIC1_CMD,  0x20
        .set PIC1_DATA, 0x21
        .set PIC2_CMD,  0xa0
        .set PIC2_DATA, 0xa1

        .code64
        .section .text.entry, "ax"
        .globl _start
_start:
        cli
        lea     stack_top(%rip), %rsp

        /* One interrupt gate for all 256 vectors: acknowledge and return. */
        lea     idt(%rip), %rdi
        lea     on_interrupt(%rip), %rax
        mov     $256, %ecx
1:      mov     %ax, 0(%rdi)            /* offset 15:0 */
        movw    $0x08, 2(%rdi)          /* code segment selector */
        movb    $0, 4(%rdi)             /* no IST */
        movb    $0x8e, 5(%rdi)          /* present, ring 0, 64-bit interrupt gate */
        mov     %rax, %rdx
        shr     $16, %rdx
        mov     %dx, 6(%rdi)            /* offset 31:16 */
        shr     $16, %rdx
        mov     %edx, 8(%rdi)           /* offset 63:32 */
        movl    $0, 12(%rdi)
        add     $16, %rdi
        loop    1b
        lidt    idt_descriptor(%rip)

        /* Remap the PICs to vectors 0x20/0x28 and unmask only IRQ4 (COM1). */
        mov     $0x11, %al
        out     %al, $PIC1_CMD
        out     %al, $PIC2_CMD
        mov     $0x20, %al
        out     %al, $PIC1_DATA
        mov     $0x28, %al
        out     %al, $PIC2_DATA
        mov     $0x04, %al
        out     %al, $PIC1_DATA
        mov     $0x02, %al
        out     %al, $PIC2_DATA
        mov     $0x01, %al
        out     %al, $PIC1_DATA
        out     %al, $PIC2_DATA
        mov     $0xef, %al
        out     %al, $PIC1_DATA
        mov     $0xff, %al
        out     %al, $PIC2_DATA

        /* UART: interrupt on received data; OUT2 connects the interrupt line. */
        mov     $0x01, %al
        mov     $COM1_IER, %dx
        out     %al, %dx
        mov     $0x0b, %al
        mov     $COM1_MCR, %dx
        out     %al, %dx

        lea     ready_msg(%rip), %rsi
        call    puts

main_loop:
        cli
        mov     $COM1_LSR, %dx
        in      %dx, %al
        test    $0x01, %al              /* data ready? */
        jnz     got_byte
        sti
        hlt                             /* woken by the UART interrupt */
        jmp     main_loop

got_byte:
        mov     $COM1, %dx
        in      %dx, %al                /* the byte itself does not matter */
        incq    counter(%rip)
        mov     counter(%rip), %rax
        call    print_decimal
        jmp     main_loop

/* Acknowledge the interrupt at both PICs and return. */
on_interrupt:
        push    %rax
        mov     $0x20, %al
        out     %al, $PIC2_CMD
        out     %al, $PIC1_CMD
        pop     %rax
        iretq

/* putc: %al -> COM1, waiting for the transmit holding register to empty. */
putc:
        push    %rdx
        push    %rax
        mov     $COM1_LSR, %dx
2:      in      %dx, %al
        test    $0x20, %al
        jz      2b
        pop     %rax
        mov     $COM1, %dx
        out     %al, %dx
        pop     %rdx
        ret

/* puts: NUL-terminated string at %rsi. */
puts:
        lodsb
        test    %al, %al
        jz      3f
        call    putc
        jmp     puts
3:      ret

/* print_decimal: %rax as decimal digits, then a newline. */
print_decimal:
        lea     digits_end(%rip), %rdi
        movb    $0, (%rdi)
        mov     $10, %rcx
4:      xor     %rdx, %rdx
        div     %rcx
        add     $'0', %dl
        dec     %rdi
        mov     %dl, (%rdi)
        test    %rax, %rax
        jnz     4b
        mov     %rdi, %rsi
        call    puts
        mov     $'\n', %al
        call    putc
        ret

        .section .rodata
ready_msg:
        .asciz  "READY\n"
idt_descriptor:
        .word   256 * 16 - 1
        .quad   idt

        .section .data
        .balign 8
counter:
        .quad   0

        .section .bss
        .balign 16
idt:
        .skip   256 * 16
digits:
        .skip   32
digits_end:
        .skip   1
        .balign 16
stack:
        .skip   16384
stack_top:
