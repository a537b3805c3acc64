// fiber_switch_x86_64.S: the context switch of the emulated device's threads (fiber.cpp), x86-64
// System V ABI.  A fiber's saved context is its stack pointer; below it on its stack: MXCSR and the
// x87 control word (8 bytes), then r15, r14, r13, r12, rbx, rbp and the return address, which is
// all the ABI asks a callee to preserve.  No signal mask is switched (unlike swapcontext): no
// system call per switch.

    .text
    .globl  cudaemu_fiber_switch
    .type   cudaemu_fiber_switch, @function
// void cudaemu_fiber_switch(void **save_sp /* rdi */, void *load_sp /* rsi */)
cudaemu_fiber_switch:
    .cfi_startproc
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    subq    $8, %rsp
    stmxcsr (%rsp)
    fnstcw  4(%rsp)
    movq    %rsp, (%rdi)
    movq    %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw   4(%rsp)
    addq    $8, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    ret
    .cfi_endproc
    .size   cudaemu_fiber_switch, .-cudaemu_fiber_switch

// A fresh fiber's first return lands here with r12 = its argument, r13 = its entry function, and
// rsp 16-byte aligned (fiber.cpp lays the stack out so); the entry never returns.
    .globl  cudaemu_fiber_start
    .type   cudaemu_fiber_start, @function
cudaemu_fiber_start:
    .cfi_startproc
    .cfi_undefined rip
    movq    %r12, %rdi
    callq   *%r13
    ud2
    .cfi_endproc
    .size   cudaemu_fiber_start, .-cudaemu_fiber_start

    .section .note.GNU-stack, "", @progbits
