// bilinear_topk_nocuda.c: the fused-kernel options of the device bilinear top-k
// (kernels/analysis/bilinear_topk.h) in a CPU-only build (CUDA=0), where no context exists: here so
// that callers (tests, benchmarks) link.  The rest of the API's CPU-only stubs are host/backend.c's.
#ifndef QK_HAVE_CUDA
#include "analysis/bilinear_topk.h"
#include "base/util.h"

int qk_btk_set_fused_mma(QkBtk *b, const char *name) {
    (void)b, (void)name;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}

int qk_btk_set_fused_seed(QkBtk *b, int on) {
    (void)b, (void)on;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
#else
typedef int qk_bilinear_topk_nocuda_unused;  // (ISO C: a translation unit declares something)
#endif
