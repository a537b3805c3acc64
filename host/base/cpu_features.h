// cpu_features.h: which instruction-set paths qkscope's own kernels take on this CPU.
//
// The build targets x86-64-v3 (AVX2 + FMA) unless NATIVE=1; code with an AVX-512 path compiles
// it with a target attribute and takes it at run time when the CPU (and the OS) supports it.
// Every path gives the same bits (gemm.h, topk.c): the switch exists so tests and CI can run both
// on one machine and compare.  QK_ISA in the environment: unset or "auto" = the best the CPU has,
// "avx2" = never AVX-512, "avx512" = AVX-512 (an error where the CPU lacks it).
#pragma once

// 0 when the CPU has what the build assumes (AVX2 and FMA on x86-64) and QK_ISA is valid, else -1
// with one line (qk_errmsg) naming the missing feature or the bad value.  main() calls it first.
int qk_cpu_check(void);

// 1 when AVX-512 (F) paths are taken: the CPU has it and QK_ISA does not forbid it.  Read once.
int qk_cpu_avx512(void);
// Re-reads QK_ISA (tests switch paths within one process).
void qk_cpu_reload(void);
