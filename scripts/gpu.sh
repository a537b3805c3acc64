#!/usr/bin/env bash
# GPU checks in one device call.
#   scripts/gpu.sh bundle   (here, no GPU needed) builds for sm_90 and packs the binaries with the
#                           non-CUDA shared libraries they need into build/gpu-bundle.tar.gz
#   scripts/gpu.sh run      (on the GPU machine, from the repo root) unpacks it and runs the GPU
#                           test suites, compute-sanitizer and the GPU benchmarks, writing every
#                           log and result under $OUT (default ./gpu-out)
#   scripts/gpu.sh topk     (on the GPU machine) only the device top-k step (topk_gpu_step)
# The GPU machine's own CUDA runtime, cuBLAS and NCCL are used, never the bundled ones.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
BUNDLE=build/gpu-bundle.tar.gz

bundle() {
    # x86-64-v3 (AVX2), not -march=native: the GPU machine's CPU may differ from this one.
    make -j"$(nproc)" BUILD=build/gpu BIN=build/gpu/bin ARCH=-march=x86-64-v3 NVCCFLAGS_ARCH="-gencode arch=compute_90,code=sm_90" \
        build/gpu/bin/qkscope build/gpu/bin/test_qkscope build/gpu/bin/bench_topk_gpu
    rm -rf build/gpu/pkg && mkdir -p build/gpu/pkg/bin build/gpu/pkg/lib
    cp build/gpu/bin/qkscope build/gpu/bin/test_qkscope build/gpu/bin/bench_topk_gpu build/gpu/pkg/bin/
    # Shared libraries except the C runtime and CUDA's own (taken from the GPU machine).
    ldd build/gpu/bin/test_qkscope build/gpu/bin/qkscope | awk '/=> \//{print $3}' | sort -u |
        grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so|libcud|libcublas|libnccl' |
        xargs -r -I{} cp -L {} build/gpu/pkg/lib/
    tar -C build/gpu/pkg -czf "$BUNDLE" bin lib
    echo "gpu.sh: $(du -h "$BUNDLE" | cut -f1) in $BUNDLE (carry it: run carry=[\"$BUNDLE\"])"
}

# ---- device bilinear top-k (kernels/bilinear_topk.cu): one self-contained step, ~2-3 minutes ----
# Suite topk_gpu with QK_CUDA_SYNC=1 (an error names the kernel that caused it), compute-sanitizer
# on its small cases, SASS free of local memory in btk_select, and bench_topk_gpu's table.
topk_gpu_step() {
    local B=$1 out=$2
    echo "== topk_gpu: device top-k vs host/topk.c"
    mkdir -p bin && cp $B/qkscope bin/qkscope   # run/planted_* runs ./bin/qkscope (static on the device)
    QK_BACKEND=cuda QK_CUDA_SYNC=1 timeout 300 $B/test_qkscope --jobs 1 --verbose \
        --filter '@(topk_gpu/*|analysis/static_maps*|run/planted_circuits_found_by_run_and_static)' \
        > "$out/topk-gpu-tests.txt" 2>&1 && echo "topk_gpu: suites exit 0" || echo "topk_gpu: FAIL (rc $?), see topk-gpu-tests.txt"
    grep -E '^\[(FAIL|SKIP|PASS)\] (topk_gpu|analysis|run)::|overlap|near-ties|Synthesis|Assertion|Crash' "$out/topk-gpu-tests.txt" |
        grep -v 'Test is disabled' | tail -n 40 || true
    grep -q 'Tested: 0 ' "$out/topk-gpu-tests.txt" && echo "topk_gpu: NOTHING RAN (every test skipped: see above)"
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck synccheck initcheck; do
            QK_BACKEND=cuda timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 $B/test_qkscope --jobs 1 \
                --filter 'topk_gpu/@(small_shapes_every_k|awkward_sizes_and_tiles|activations_relu_gated_both)' \
                > "$out/topk-gpu-sanitizer-$tool.txt" 2>&1 && echo "topk_gpu $tool: clean" || echo "topk_gpu $tool: FAIL (rc $?), see topk-gpu-sanitizer-$tool.txt"
        done
    fi
    if command -v cuobjdump >/dev/null; then
        cuobjdump -sass -fun btk_select $B/test_qkscope 2>/dev/null | grep -cE '\b(LDL|STL)\b' |
            awk '{print "topk_gpu SASS: " $1 " local-memory instructions in btk_select" ($1 ? " (FAIL)" : "")}'
    fi
    echo "== qkscope static on the device: one layer's 12 heads (x 12 = all 144), random GPT-2-small shapes"
    local dir=build/topk-gpu-static
    if timeout 120 $B/qkscope random --out $dir --layers 2 --tokens 1024 -q ${TOPK_STATIC_RANDOM_ARGS:-}; then
        for prec in fp32 bf16; do
            printf '[model]\ndir = %s\n[sae]\nlayer.1 = %s\n[corpus]\npaths = %s\n[analysis]\nheads = 1.*\nstatic_k = 32\n[run]\nbackend = %s\nprecision = %s\n' \
                "$dir/model" "$dir/sae/layer_1" "$dir/corpus.npy" "${TOPK_STATIC_BACKEND:-cuda}" $prec > "$dir/static-$prec.ini"
            local t0=$(date +%s.%N)
            if timeout 150 $B/qkscope static -q "$dir/static-$prec.ini" -o "$dir/static-$prec.h5" 2> "$out/topk-gpu-static-$prec.txt"; then
                awk -v a="$t0" -v b="$(date +%s.%N)" -v p=$prec 'BEGIN { printf "qkscope static %s: 12 heads in %.2f s (x 12: %.1f s for 144 heads, incl. host tables and HDF5)\n", p, b - a, 12 * (b - a) }'
            else
                echo "qkscope static $prec: FAIL (rc $?): $(tail -n 2 "$out/topk-gpu-static-$prec.txt")"
            fi
        done
    else
        echo "qkscope random: FAIL"
    fi
    echo "== bench_topk_gpu (GEMM alone vs GEMM + select)"
    timeout 300 $B/bench_topk_gpu --n 65536 --m 32768 --k 32 --r 64,768 --prec bf16,tf32,fp32 --reps 10 \
        > "$out/bench-topk-gpu.md" 2>&1 || echo "bench_topk_gpu: FAIL (rc $?)"
    cat "$out/bench-topk-gpu.md"
}

unpack() {
    OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT" build/gpu/run
    tar -C build/gpu/run -xzf "$BUNDLE"
    cuda_libs=$(dirname "$(ldconfig -p | awk '/libcublas\.so/{print $NF; exit}')" 2>/dev/null || true)
    export LD_LIBRARY_PATH="$PWD/build/gpu/run/lib:${cuda_libs:-/usr/local/cuda/lib64}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    B=build/gpu/run/bin
}

run() {
    unpack
    mkdir -p bin && cp $B/qkscope bin/qkscope   # the CLI tests run ./bin/qkscope
    { nvidia-smi; date -u; uname -a; } > "$OUT/machine.txt" 2>&1 || true
    echo "== GPU suites (QK_BACKEND=cuda)"
    QK_BACKEND=cuda $B/test_qkscope --jobs 1 2>&1 | tee "$OUT/test-gpu.txt" | tail -n 30 || true
    echo "== CPU backend on the GPU machine (only the suites that take the backend from QK_BACKEND)"
    QK_BACKEND=cpu $B/test_qkscope --jobs 1 --filter '@(forward|analysis|analysis_batch|planted)/*' > "$OUT/test-cpu.txt" 2>&1 || true
    tail -n 2 "$OUT/test-cpu.txt"
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck synccheck; do
            echo "== compute-sanitizer $tool"
            QK_BACKEND=cuda compute-sanitizer --tool $tool --error-exitcode 9 $B/test_qkscope --jobs 1 --filter '@(forward|analysis_batch|comm)/*' \
                > "$OUT/sanitizer-$tool.txt" 2>&1 && echo "$tool clean" || echo "$tool: see $OUT/sanitizer-$tool.txt"
        done
    else
        echo "compute-sanitizer not found" | tee "$OUT/sanitizer.txt"
    fi
    topk_gpu_step "$B" "$OUT"
    echo "== bench-gpu (1 GPU vs all GPUs; inputs from qkscope random, no Python)"
    QK=$B/qkscope bench/bench_gpu.sh 2>&1 | tee "$OUT/bench-gpu.txt" || true
    cp results/bench_gpu.md "$OUT/" 2>/dev/null || true
}

case "$mode" in
bundle) bundle ;;
run) run ;;
topk) unpack && topk_gpu_step "$B" "$OUT" ;;
*) echo "usage: scripts/gpu.sh bundle|run|topk" >&2; exit 2 ;;
esac
