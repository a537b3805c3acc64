// bench_topk_gpu.c: the device bilinear top-k (kernels/analysis/bilinear_topk.h) against its anchor, one
// cuBLASLt GEMM writing every score, on the same GPU in one run (issue 15's table): GEMM alone,
// GEMM + select (the GEMM-then-select path) and the fused kernel (kernels/analysis/topk_fused.h;
// "-" where it declines, e.g. TF32), in the flavour QK_FUSED_MMA gives (mma.sync by default),
// seeded unless QK_FUSED_SEED=0; then, in bf16, the two wgmma flavours (stored operands, TMA
// ring; "-" off compute capability 9.0), and the default flavour unseeded, to show what seeding
// buys.  --peak T (TFLOP/s, e.g. gpu.sh's measured bf16 GEMM rate) adds the fused kernel's
// fraction of it.  bench/bench_topk_torch.py adds cuBLAS + torch.topk.
//
//   bench_topk_gpu [--n 65536] [--m 32768] [--k 32] [--r 64,768] [--prec bf16,tf32,fp32] [--reps 10] [--peak T]
//
// Shapes: U [n x r], V [m x r] (random normal, fresh per shape), c [m]; GEMM alone: S [n x m]
// (bf16 in bf16 mode, else fp32) = U V^T; GEMM + select: top-k of a_i U.V + c (a = 1), k per
// row, scores only as L2-sized tiles.  CUDA events on the context's stream after 2 warm-ups,
// median of --reps.  Both include the bf16 rounding of the operands in bf16 mode.
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/bilinear_topk.h"
#include "base/util.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "bench_topk_gpu: %s: %s\n", #call, cudaGetErrorString(e_));           \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t g_rng = 88172645463325252ull;
static float rnd_normal(void) {  // xorshift64 + Box-Muller
    double u[2];
    for (int t = 0; t < 2; t++) {
        g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
        u[t] = ((g_rng >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return (float)(sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

static float *dev_random(size_t count, float scale) {
    float *h = qk_malloc(count * sizeof(float)), *d;
    for (size_t i = 0; i < count; i++) h[i] = scale * rnd_normal();
    CK(cudaMalloc((void **)&d, count * sizeof(float)));
    CK(cudaMemcpy(d, h, count * sizeof(float), cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static int cmp_f(const void *a, const void *b) { return (*(const float *)a > *(const float *)b) - (*(const float *)a < *(const float *)b); }

// Median milliseconds of reps runs of one case (what 0: GEMM alone, 1: the top-k through the path
// qk_btk_set_path chose, GEMM + select or fused).
typedef struct {
    QkBtk *b;
    int n, m, r, k, what;
    float *U, *V, *c;
    void *S;
    int32_t *idx;
    float *val;
} Case;

static int run_case(const Case *x) {
    if (x->what == 0) return qk_btk_gemm_full(x->b, x->n, x->m, x->r, x->U, x->V, x->S, qk_btk_precision(x->b) == QK_PREC_BF16);
    QkTopkOpts o = {.k = x->k};
    return qk_btk_run(x->b, NULL, x->n, x->m, x->r, x->U, x->r, NULL, x->V, x->c, &o, x->idx, x->val, NULL);  // path: qk_btk_set_path
}

static double median_ms(const Case *x, int reps) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float *ms = qk_malloc(sizeof(float) * reps);
    for (int t = -2; t < reps; t++) {
        CK(cudaDeviceSynchronize());
        CK(cudaEventRecord(e0, 0));
        if (run_case(x)) {
            fprintf(stderr, "bench_topk_gpu: %s\n", qk_errmsg());
            exit(1);
        }
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        if (t >= 0) CK(cudaEventElapsedTime(&ms[t], e0, e1));
    }
    qsort(ms, reps, sizeof(float), cmp_f);
    double med = ms[reps / 2];
    free(ms);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return med;
}

// The fused kernel's median in flavour mma (NULL: as the environment says, and whatever runs of it
// on this device) with seeding on, off, or as the environment says (seed -1), printed as one cell:
// "-" when the named flavour does not run on this device, "- (why)" when the kernel declines the
// problem.
static void fused_cell(Case *x, const char *mma, int seed, int reps) {
    const char *env = getenv("QK_FUSED_MMA"), *why = NULL;
    const int runs = qk_btk_set_fused_mma(x->b, mma ? mma : env && *env ? env : "mma");
    if (runs < 0 || (seed >= 0 && qk_btk_set_fused_seed(x->b, seed))) {
        fprintf(stderr, "bench_topk_gpu: %s\n", qk_errmsg());
        exit(1);
    }
    if (!runs && mma) {
        printf(" - |");
        return;
    }
    if (run_case(x) || cudaDeviceSynchronize() != cudaSuccess) {
        fprintf(stderr, "bench_topk_gpu: fused %s r %d: %s\n", mma ? mma : "(QK_FUSED_MMA)", x->r, qk_errmsg());
        exit(1);
    }
    if (!qk_btk_last_path(x->b, &why)) printf(" - (%s) |", why);
    else printf(" %.3f |", median_ms(x, reps));
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    for (const char *p = s; *p && n < max; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p)) out[n++] = atoi(p);
    return n;
}

int main(int argc, char **argv) {
    int n = 65536, m = 32768, k = 32, reps = 10, rs[4] = {64, 768}, nr = 2;
    double peak = 0;
    const char *precs = "bf16,tf32,fp32";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n")) n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--m")) m = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--k")) k = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--r")) nr = parse_list(argv[i + 1], rs, 4);
        else if (!strcmp(argv[i], "--prec")) precs = argv[i + 1];
        else if (!strcmp(argv[i], "--peak")) peak = atof(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_topk_gpu [--n N] [--m M] [--k K] [--r R,R] [--prec bf16,tf32,fp32] [--reps N] [--peak TFLOPS]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    int dev_count = 0;
    if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count < 1) {
        printf("bench_topk_gpu: no usable CUDA device: nothing measured\n");
        return 0;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# bench_topk_gpu on %s (%d SMs, L2 %d MiB): n %d, m %d, k %d, median of %d after 2 warm-ups\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20, n, m, k, reps);
    printf("| r | precision | GEMM alone ms | GEMM TFLOP/s | GEMM+select ms | scores/s | select/GEMM time | tile | fused ms | fused scores/s | fused TFLOP/s | fused of peak | fused/GEMM time | wgmma-st ms | wgmma+TMA ms | fused unseeded ms |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int ri = 0; ri < nr; ri++) {
        const int r = rs[ri];
        Case x = {.n = n, .m = m, .r = r, .k = k};
        x.U = dev_random((size_t)n * r, 1.0f), x.V = dev_random((size_t)m * r, 1.0f / sqrtf((float)r));
        x.c = dev_random(m, 0.5f);
        CK(cudaMalloc(&x.S, (size_t)n * m * sizeof(float)));
        CK(cudaMalloc((void **)&x.idx, (size_t)n * k * sizeof(int32_t)));
        CK(cudaMalloc((void **)&x.val, (size_t)n * k * sizeof(float)));
        for (const char *p = precs; *p;) {
            char name[8] = "";
            size_t len = strcspn(p, ",");
            snprintf(name, sizeof name, "%.*s", (int)len, p);
            p += len + (p[len] == ',');
            QkPrecision prec;
            if (qk_precision_parse(name, &prec)) {
                fprintf(stderr, "bench_topk_gpu: %s\n", qk_errmsg());
                return 2;
            }
            x.b = qk_btk_create(0, prec, 0);
            if (!x.b) {
                fprintf(stderr, "bench_topk_gpu: %s\n", qk_errmsg());
                return 1;
            }
            int RB, CB;
            qk_btk_blocks(x.b, 1, n, m, &RB, &CB);
            x.what = 0;
            double g = median_ms(&x, reps);
            x.what = 1;
            qk_btk_set_path(x.b, 0);
            double s = median_ms(&x, reps);
            double scores = (double)n * m;
            printf("| %d | %s | %.3f | %.1f | %.3f | %.3g | %.2f | %d x %d |", r, name, g, 2.0 * scores * r / (g * 1e9), s,
                   scores / (s * 1e-3), s / g, RB, CB);
            // The fused kernel: timed only when it takes the problem (asserted after one run).
            qk_btk_set_path(x.b, 1);
            const char *why = NULL;
            if (run_case(&x) || cudaDeviceSynchronize() != cudaSuccess) {
                fprintf(stderr, "bench_topk_gpu: fused r %d %s: %s\n", r, name, qk_errmsg());
                return 1;
            }
            if (qk_btk_last_path(x.b, &why)) {
                const double f = median_ms(&x, reps), tf = 2.0 * scores * r / (f * 1e9);
                if (peak > 0) printf(" %.3f | %.3g | %.1f | %.2f | %.2f |", f, scores / (f * 1e-3), tf, tf / peak, f / g);
                else printf(" %.3f | %.3g | %.1f | - | %.2f |", f, scores / (f * 1e-3), tf, f / g);
                if (prec == QK_PREC_BF16) fused_cell(&x, "wgmma-st", -1, reps), fused_cell(&x, "wgmma", -1, reps);
                else printf(" - | - |");
                fused_cell(&x, NULL, 0, reps);
                printf("\n");
            } else {
                printf(" - | - | - | - | - (%s) | - | - | - |\n", why);
            }
            fflush(stdout);
            qk_btk_destroy(x.b);
        }
        cudaFree(x.U), cudaFree(x.V), cudaFree(x.c), cudaFree(x.S), cudaFree(x.idx), cudaFree(x.val);
    }
    return 0;
}
