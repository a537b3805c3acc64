#!/usr/bin/env bash
# The one-shot GPU check, sized to run in <= 6 minutes on an H200.
#
#   scripts/gpu.sh bundle   HERE (no GPU needed): builds for sm_90 (x86-64-v3 host code) twice,
#                           with NCCL and NCCL-free, packs the binaries, the non-system shared
#                           libraries they need (HDF5, cJSON, inih, libdeflate, OpenBLAS, ...: the
#                           GPU machine has no Debian -dev libraries) and small test data into
#                           build/gpu-bundle.tar.gz (ignored), then prints the device `run` call to
#                           paste, also saved in build/gpu-run-command.txt.
#   scripts/gpu.sh run      ON THE GPU MACHINE (repo root): unpacks the bundle and runs, each step
#                           under `timeout` and never stopping at a failure:
#                           1. preflight: ldd of every binary (with the bundle's LD_LIBRARY_PATH),
#                              nvidia-smi, the CUDA smoke test (fails, not skips, without CUDA);
#                              without a usable GPU it says so plainly and stops there;
#                           2. the backend-dependent Criterion suites on CUDA, --verbose (skips
#                              listed with their reasons);
#                           3. CPU vs CUDA at GPT-2-small shapes (qkscope random: d 768, m 32768,
#                              T 128, batch 32): cache hooks + SAE codes (qkscope cache), records +
#                              aggregates (qkscope run), compared by tests/tools/h5compare: fp32 within
#                              1e-4 with near ties counted, tf32 / bf16 top-k overlap against fp32;
#                           4. benchmarks: forward tokens/s per precision (bench_cuda_forward), the
#                              measured bf16 GEMM rate (PyTorch), qkscope run tokens/s per precision
#                              (262144 tokens, 144 heads' aggregates: the 100k tokens/s target) with
#                              its stage shares, and bf16 with the batch pipeline off
#                              (QK_CUDA_PIPELINE=0: its gain; the files must be identical);
#                           5. compute-sanitizer memcheck / initcheck / racecheck / synccheck on a
#                              tiny reference model (and memcheck on a small qkscope run), last;
#                           6. $OUT/gpu-check.tar.gz (every log and comparison report; not the
#                              multi-GB model and outputs) + $OUT/summary.txt,
#                              the summary table printed last.
#   scripts/gpu.sh topk     ON THE GPU MACHINE: only the device bilinear top-k's checks (its suite,
#                           sanitizers on its small cases, qkscope static timed, bench_topk_gpu).
#   scripts/gpu.sh fused    ON THE GPU MACHINE: only the fused top-k's checks (one run
#                           of ~7 minutes with the bundle beside the checkout, a 480 s limit): SASS of the bundled
#                           qkscope (HMMA in topk_fused<mma.sync>, HGMMA in both wgmma flavours,
#                           UTMALDG in the TMA one), the topk_gpu suite's fused_* tests (mma.sync,
#                           seeded; with them the fused_flavour_* / fused_seeding_* tests, which run
#                           every bf16 flavour seeded and not), then under QK_FUSED_MMA=wgmma (TMA),
#                           wgmma-st and QK_FUSED_SEED=0, and
#                           the whole suite with QK_BTK_PATH=fused, compute-sanitizer memcheck /
#                           racecheck / synccheck on its small cases, qkscope static and run with the
#                           fused kernel against the CPU backend (planted model; 2-layer random
#                           GPT-2-small-shaped model, fp32 parity, bf16 overlap), then the benchmark
#                           (bench_topk_gpu with the fused column and --peak, the measured bf16 GEMM
#                           rate, cuBLAS + torch.topk) into $OUT/bench_topk.md.
#   scripts/gpu.sh preflight  step 1 alone (here: shows that the bundle loads and that there is
#                           no GPU).
#   scripts/gpu.sh dry      the whole run here without a GPU (GPU_SH_DRY=1): its plumbing only;
#                           `dry-fused` the same for `fused`.
# Nothing here needs ../shared (absent on the GPU machine): the suites chosen read only
# tests/reference/data (tracked, so it travels) and what qkscope random / planted write.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUNDLE=build/gpu-bundle.tar.gz
CMDFILE=build/gpu-run-command.txt
GENCODE=${GPU_GENCODE:-"-gencode arch=compute_90,code=sm_90"}

die() { echo "gpu.sh: $*" >&2; exit 1; }

bundle() {
    set -e
    export PATH=$PATH:/usr/local/cuda/bin
    command -v nvcc >/dev/null || die "bundle needs nvcc (CUDA toolkit) on PATH"
    local j=${JOBS:-2} pkg=build/gpu-bundle
    # x86-64-v3 (AVX2), not -march=native: the GPU machine's CPU may differ from this one.
    local common=(ARCH=-march=x86-64-v3 "NVCCFLAGS_ARCH=$GENCODE")
    make -j"$j" BUILD=build/gpu BIN=build/gpu/bin NCCL=1 "${common[@]}" \
        build/gpu/bin/qkscope build/gpu/bin/test_qkscope build/gpu/bin/h5compare build/gpu/bin/cuda_smoke \
        build/gpu/bin/bench_cuda_forward build/gpu/bin/bench_topk_gpu
    # NCCL-free fallback: libnccl.so.2 is 218 MB, over the 64 MiB a call carries, so the NCCL build
    # uses the GPU machine's own (its PyTorch's pip package); where none is found, this one runs.
    make -j"$j" BUILD=build/gpu-nonccl BIN=build/gpu-nonccl/bin NCCL=0 "${common[@]}" \
        build/gpu-nonccl/bin/qkscope build/gpu-nonccl/bin/test_qkscope
    rm -rf "$pkg" && mkdir -p "$pkg/bin" "$pkg/bin-nonccl" "$pkg/lib" "$pkg/data"
    # Resource figures of every kernel as the bundle's objects were built (no stack, no spills, no
    # warnings: the build itself fails otherwise), the table kept in the bundle
    make BUILD=build/gpu BIN=build/gpu/bin NCCL=1 "${common[@]}" check-ptxas >"$pkg/ptxas.txt" 2>&1 ||
        { cat "$pkg/ptxas.txt"; echo "gpu.sh: WARNING: check-ptxas failed"; }
    tail -n 1 "$pkg/ptxas.txt"
    cp build/gpu/bin/{qkscope,test_qkscope,h5compare,cuda_smoke,bench_cuda_forward,bench_topk_gpu} "$pkg/bin/"
    cp build/gpu-nonccl/bin/{qkscope,test_qkscope} "$pkg/bin-nonccl/"
    # Every shared library they load except the C runtime, the C++ runtime (this machine's
    # libstdc++ needs glibc 2.36, and nothing of ours needs a newer libstdc++ than any CUDA 13
    # machine has; everything else needs glibc <= 2.34), the CUDA driver and toolkit libraries (the
    # GPU machine's CUDA 13.0 provides cudart, cuBLAS, cuBLASLt) and NCCL (above).
    ldd "$pkg"/bin/* "$pkg"/bin-nonccl/* | awk '/=> \//{print $3}' | sort -u |
        grep -vE '/(libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|libcuda|libcudart|libcublas|libnccl' |
        xargs -r -I{} cp -L {} "$pkg/lib/"
    # Small test data: 32 windows of 128 token ids (the comparison's batch at real shapes, for
    # qkscope cache) and a small random model + SAEs + corpus (sanitizer runs of qkscope run).
    awk 'BEGIN { s = 12345; for (b = 0; b < 32; b++) { l = ""; for (t = 0; t < 128; t++) {
        s = (s * 1103515245 + 12345) % 2147483648; l = l (t ? " " : "") int(s / 65536) % 50257 } print l } }' \
        >"$pkg/data/tokens_32x128.txt"
    build/gpu/bin/qkscope random --out "$pkg/data/small" --layers 2 --heads 4 --d-model 128 --d-sae 2048 --k 16 \
        --vocab 2048 --n-ctx 128 --tokens 2048 -q
    git rev-parse HEAD >"$pkg/commit" 2>/dev/null || echo unknown >"$pkg/commit"
    tar -C build -czf "$BUNDLE" gpu-bundle
    local size
    size=$(du -m "$BUNDLE" | cut -f1)
    echo "gpu.sh: ${size} MiB in $BUNDLE (libraries: $(ls "$pkg/lib" | tr '\n' ' '))"
    [ "$size" -lt 56 ] || echo "gpu.sh: WARNING: the bundle plus the checkout must stay under 64 MiB a call"
    {
        echo "# On the GPU machine (about 6 minutes), with the bundle beside the checkout:"
        echo "run  command: PYTHONUNBUFFERED=1 scripts/gpu.sh run"
        echo "     bundle:  $BUNDLE"
        echo "     time limit: 420 s"
        echo "# The fused top-k's own check: the same bundle, command: PYTHONUNBUFFERED=1 scripts/gpu.sh fused,"
        echo "#     time limit 480 s; its table lands in bench_topk.md beside summary.txt."
        echo "# Afterwards: read summary.txt (and gpu-check.tar.gz) from the run's output folder.  The run uses"
        echo "# the checkout it is started in: it must be this branch."
    } | tee "$CMDFILE"
}

# ----------------------------------------------------------------------------------------------
# On the GPU machine

W=${GPU_SH_WORK:-/tmp/qkgpu}  # work folder (outputs, logs), tarred into $OUT at the end
# GPU_SH_DRY=1 (`scripts/gpu.sh dry`): the whole run's plumbing on a machine without a GPU: the
# "CUDA" side runs on the CPU backend in fp32, the model is small (2 layers, d 128, m 2048), the
# preflight's failure does not stop it and the sanitizers are skipped.  Checks the script, not CUDA.
DRY=${GPU_SH_DRY:-}
if [ -n "$DRY" ]; then
    GPU_BE=cpu NL=2 RANDOM_ARGS="--layers 2 --heads 4 --d-model 128 --d-sae 2048 --k 16" RANDOM_TOKENS=8192 THROUGHPUT_TOKENS=4096
else
    GPU_BE=cuda NL=12 RANDOM_ARGS="" RANDOM_TOKENS=262144 THROUGHPUT_TOKENS=262144
fi
prec_of() { if [ -n "$DRY" ]; then echo fp32; else echo "$1"; fi; }
ROWS=$W/rows          # the summary table: step|status|seconds|note
T_START=$(date +%s)

# step NAME TIMEOUT CMD...: runs CMD under timeout, its output in $W/logs/NAME.log; one summary
# row (status PASS / FAIL rc / TIMEOUT, seconds, and the note that $NOTE_FN prints from the log).
BUDGET=${GPU_BUDGET_S:-330}  # seconds for every step together; later steps are skipped past it
step() {
    local name=$1 limit=$2 t0 rc dt status note="" left
    shift 2
    left=$((BUDGET - ($(date +%s) - T_START)))
    if [ "$left" -lt 5 ]; then
        skip_row "$name" "time budget (${BUDGET}s) spent"
        return 125
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$(date +%s.%N)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$W/logs/$name.log" 2>&1
    rc=$?
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in 0) status=PASS ;; 124 | 137) status=TIMEOUT ;; *) status="FAIL($rc)" ;; esac
    # A suite that passed with skipped tests has not shown that they pass (the one test that
    # checks the no-GPU message skips by design where a GPU is present).
    if [ "${NOTE_FN:-}" = note_suite ] && [ $rc = 0 ]; then
        local skips
        skips=$(grep '^\[SKIP\]' "$W/logs/$name.log" | grep -v 'Test is disabled' | grep -vc 'a CUDA device is present')
        [ "$skips" -gt 0 ] && status="SKIPS($skips)"
    fi
    [ -n "${NOTE_FN:-}" ] && note=$($NOTE_FN "$W/logs/$name.log" 2>/dev/null | tr '\n|' '; ' | cut -c1-150)
    echo "$name|$status|$dt|$note" >>"$ROWS"
    tail -n 4 "$W/logs/$name.log" | sed 's/^/   /'
    echo "   -> $status (${dt}s) $note"
    return $rc
}
skip_row() { echo "$1|SKIPPED|0|$2" >>"$ROWS"; echo "== $1: SKIPPED: $2"; }

# Notes extracted from logs
note_suite() {  # Criterion --verbose: synthesis + the real skips (not "disabled" by the filter)
    local f=$1
    grep -h 'Synthesis' "$f" | sed 's/.*Synthesis: //'
    local s
    s=$(grep '^\[SKIP\]' "$f" | grep -vc 'Test is disabled')
    echo "skipped: $s"
    grep '^\[SKIP\]' "$f" | grep -v 'Test is disabled' | head -n 3 | sed 's/^\[SKIP\] //'
    grep -E '^\[(FAIL|----)\].*(FAIL|crash|signal)' "$f" | head -n 3
}
note_cmp() { grep -h '^h5compare:' "$1"; grep -h '^FAIL' "$1" | head -n 2; }
note_last() { tail -n 1 "$1"; }
note_san() { grep -hE 'ERROR SUMMARY|LEAK SUMMARY|RACECHECK SUMMARY|Program hit|No CUDA' "$1" | sort | uniq -c | head -n 3; }
note_tps() { sed -n 's/.* tokens in .* (\([0-9.]*\) tokens\/s).*/\1 tokens\/s/p' "$1" | tail -n 1; }

finish() {
    local total=$(($(date +%s) - T_START)) p
    for p in cpu fp32 bf16; do
        [ -f "$W/logs/run_$p.log" ] && echo "| qkscope run ($p; 4096 tokens, every head, records of 12, setup included): $(note_tps "$W/logs/run_$p.log")" >>"$W/bench.txt"
    done
    {
        echo "# scripts/gpu.sh $MODE: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cat "$W/gpu-bundle/commit" 2>/dev/null), ${total}s"
        echo "# $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
        [ -n "$DRY" ] && echo "# DRY RUN: the CUDA side ran on the CPU backend (fp32, small model): this checks the script only"
        [ -f "$W/nogpu.txt" ] && echo "# $(cat "$W/nogpu.txt")"
        [ -f "$W/bench.txt" ] && cat "$W/bench.txt"
        echo
        printf '%-34s %-11s %8s  %s\n' step status seconds note
        while IFS='|' read -r n s d t; do printf '%-34s %-11s %8s  %s\n' "$n" "$s" "$d" "$t"; done <"$ROWS"
        local nf
        nf=$(grep -cvE '\|(PASS|SKIPPED)\|' "$ROWS")
        echo "# $(grep -c '|PASS|' "$ROWS") passed, $nf failed or timed out, $(grep -c '|SKIPPED|' "$ROWS") skipped"
    } >"$W/summary.txt"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp "$W/summary.txt" "$OUT/summary.txt"
        # Logs and comparison reports (not the multi-GB model and outputs)
        tar -C "$W" -czf "$OUT/gpu-check.tar.gz" --exclude='rnd' --exclude='*.h5' --exclude='small-out*' \
            logs summary.txt $(cd "$W" && ls bench*.txt 2>/dev/null) 2>/dev/null
    fi
    echo
    cat "$W/summary.txt"
    ! grep -qvE '\|(PASS|SKIPPED)\|' "$ROWS"  # exit status 0 only when every step passed
}

setup_run() {
    rm -rf "$W" && mkdir -p "$W/logs"
    : >"$ROWS"
    [ -f "$BUNDLE" ] || die "no $BUNDLE: run scripts/gpu.sh bundle first and bring it along"
    tar -C "$W" -xzf "$BUNDLE" || die "cannot unpack $BUNDLE"
    # CUDA toolkit libraries of this machine, then NCCL from its Python packages (PyTorch's).
    local cuda_lib nccl_lib="" d
    cuda_lib=$(dirname "$(ldconfig -p | awk '/libcublasLt\.so\.13/{print $NF; exit}')" 2>/dev/null)
    [ -n "$cuda_lib" ] && [ "$cuda_lib" != . ] || cuda_lib=/usr/local/cuda/lib64
    for d in $(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null) \
        /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
        for f in "$d/nvidia/nccl/lib/libnccl.so.2" "$d/libnccl.so.2"; do
            [ -z "$nccl_lib" ] && [ -f "$f" ] && nccl_lib=$(dirname "$f")
        done
    done
    export QK_LIBS="$W/gpu-bundle/lib:$cuda_lib:/usr/local/cuda/lib64${nccl_lib:+:$nccl_lib}"
    BIN=$W/gpu-bundle/bin
    if [ -z "$nccl_lib" ]; then
        echo "gpu.sh: no libnccl.so.2 on this machine: the NCCL-free build runs (comm_nccl and --gpus tests skip)"
        cp "$W/gpu-bundle/bin-nonccl/"* "$BIN/"
    fi
    echo "libraries: $QK_LIBS" >"$W/logs/env.txt"
}

preflight() {
    local ok=0 b
    NOTE_FN=note_last step preflight_ldd 30 bash -c "
        bad=0
        for b in $BIN/*; do
            LD_LIBRARY_PATH='$QK_LIBS' ldd \$b | grep -E 'not found|version .* not found' && { echo \"\$b: missing libraries\"; bad=1; }
        done
        [ \$bad = 0 ] && echo 'every binary resolves its libraries'; exit \$bad" || ok=1
    NOTE_FN=note_last step preflight_nvidia_smi 30 bash -c 'nvidia-smi && nvidia-smi -L' || true
    NOTE_FN=note_last step preflight_qkscope_loads 30 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/qkscope" random --help || ok=1
    NOTE_FN=note_last step preflight_cuda_smoke 60 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/cuda_smoke" || ok=2
    if [ $ok = 2 ]; then
        echo "NO USABLE GPU: $(tail -n 1 "$W/logs/preflight_cuda_smoke.log")" >"$W/nogpu.txt"
        echo "gpu.sh: NO USABLE GPU: $(tail -n 1 "$W/logs/preflight_cuda_smoke.log")"
        echo "gpu.sh: the GPU steps cannot run here; nothing else is checked."
    fi
    [ -n "$DRY" ] && { echo "gpu.sh: dry run: going on without a GPU (the CUDA side on the CPU backend)"; ok=0; }
    return $ok
}

suites() {
    local t=$BIN/test_qkscope
    NOTE_FN=note_suite step suites_cuda 150 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda "$t" --verbose --jobs 4 \
        --filter '@(forward|analysis|analysis_batch|analysis_gpu|planted|comm_nccl|topk_gpu|robust)/*'
    # qkscope static through the device top-k (./bin/qkscope) on the planted model
    NOTE_FN=note_suite step suite_static_planted 60 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_CUDA_SYNC=1 "$t" \
        --verbose --jobs 1 --filter 'run/planted_circuits_found_by_run_and_static'
    NOTE_FN=note_suite step suite_ranks_gpus 90 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda "$t" --verbose --jobs 1 \
        --filter 'ranks/gpus*'
}

# CPU vs CUDA at GPT-2-small shapes: the random model, then cache hooks + SAE codes.
compare_cache() {
    local R=$W/rnd Q=$BIN/qkscope C=$BIN/h5compare toks=$W/gpu-bundle/data/tokens_32x128.txt
    # shellcheck disable=SC2086
    NOTE_FN=note_last step random_model 90 env LD_LIBRARY_PATH="$QK_LIBS" "$Q" random --out "$R" --tokens $RANDOM_TOKENS $RANDOM_ARGS -q ||
        { skip_row compare "qkscope random failed"; return; }
    local saes="" l
    for l in $(seq 0 $((NL - 1))); do saes="$saes --sae $l=$R/sae/layer_$l"; done
    # cache: every hook of every layer + the 12 SAE codes, one batch of 32 x 128
    local p
    for p in cpu fp32 tf32 bf16; do
        local be=$GPU_BE prec
        prec=$(prec_of $p)
        [ $p = cpu ] && be=cpu prec=fp32
        NOTE_FN=note_last step "cache_$p" 60 env LD_LIBRARY_PATH="$QK_LIBS" "$Q" cache --model "$R/model" --tokens "$toks" \
            --batch 32 --backend $be --precision $prec $saes -q -o "$W/cache_$p.h5"
    done
    NOTE_FN=note_cmp step cmp_cache_fp32 60 env LD_LIBRARY_PATH="$QK_LIBS" "$C" --mode parity --tol 1e-4 "$W/cache_cpu.h5" "$W/cache_fp32.h5"
    for p in tf32 bf16; do
        NOTE_FN=note_cmp step "cmp_cache_$p" 60 env LD_LIBRARY_PATH="$QK_LIBS" "$C" --mode overlap --overlap-min 0.95 \
            "$W/cache_fp32.h5" "$W/cache_$p.h5"
    done
}

# run_ini FILE BATCH MAX_TOKENS RECORD_HEADS: a run config on the random model (every head, k 32,
# windows of 128 tokens).
run_ini() {
    local R=$W/rnd l
    {
        echo "[model]"; echo "dir = $R/model"; echo "[sae]"
        for l in $(seq 0 $((NL - 1))); do echo "layer.$l = $R/sae/layer_$l"; done
        echo "[corpus]"; echo "paths = $R/corpus.npy"; echo "n_ctx = 128"; echo "bos = false"; echo "batch = $2"
        echo "max_tokens = $3"
        echo "[analysis]"; echo "heads = all"; echo "record_heads = $4"; echo "k = 32"
        echo "[run]"; echo "backend = $GPU_BE"
    } >"$1"
}

# records + aggregates: qkscope run on the CPU and on CUDA (fp32 parity, bf16 overlap)
compare_run() {
    local R=$W/rnd Q=$BIN/qkscope C=$BIN/h5compare
    [ -d "$R/model" ] || { skip_row compare_run "no random model"; return; }
    # run: all 144 heads' aggregates, records for 12 heads, k 32, one batch of 32 windows of 128
    local cfg=$W/cmp.ini
    run_ini "$cfg" 32 4096 "$(seq -s, -f '%g.0' 0 $((NL - 1)))"
    for p in cpu fp32 bf16; do
        local sets="--set run.precision=$(prec_of $p)"
        [ $p = cpu ] && sets="--set run.backend=cpu --set run.precision=fp32"
        NOTE_FN=note_tps step "run_$p" 90 env LD_LIBRARY_PATH="$QK_LIBS" "$Q" run "$cfg" $sets -o "$W/run_$p.h5"
    done
    NOTE_FN=note_cmp step cmp_run_fp32 90 env LD_LIBRARY_PATH="$QK_LIBS" "$C" --mode parity --tol 1e-4 "$W/run_cpu.h5" "$W/run_fp32.h5"
    # a batch far beyond the device's memory: refused before any work, naming the batch that fits
    [ -n "$DRY" ] || NOTE_FN=note_last step oom_names_the_batch 60 bash -c "
        ! LD_LIBRARY_PATH='$QK_LIBS' '$Q' run '$cfg' --set corpus.batch=65536 -o '$W/oom.h5' 2>'$W/oom.err' &&
        grep -h 'fits' '$W/oom.err' && [ ! -e '$W/oom.h5' ]"
    for p in bf16; do
        NOTE_FN=note_cmp step "cmp_run_$p" 90 env LD_LIBRARY_PATH="$QK_LIBS" "$C" --mode overlap --overlap-min 0.95 \
            "$W/run_fp32.h5" "$W/run_$p.h5"
    done
}

# The throughput target (>= 100k tokens/s on one H200): qkscope run at GPT-2-small shapes
# (all 144 heads analysed with their aggregates, no per-token records, batches of 64 windows of
# 128), per precision; tokens/s and the stage shares from the run's own summary.
throughput() {
    local R=$W/rnd Q=$BIN/qkscope
    [ -d "$R/model" ] || { skip_row throughput "no random model"; return; }
    local cfg=$W/throughput.ini p
    run_ini "$cfg" 64 "$THROUGHPUT_TOKENS" none
    for p in bf16 fp32; do
        NOTE_FN=note_tps step "throughput_$p" 120 env LD_LIBRARY_PATH="$QK_LIBS" "$Q" run "$cfg" \
            --set run.precision=$(prec_of $p) -o "$W/throughput_$p.h5"
        {
            echo "| qkscope run ($p; $THROUGHPUT_TOKENS tokens, every head's aggregates, no records, batch 64 x 128): $(note_tps "$W/logs/throughput_$p.log")"
            grep -h 'time per stage' "$W/logs/throughput_$p.log" | sed 's/^/|   /'
        } >>"$W/bench.txt"
    done
    # the batch pipeline's share: the same bf16 run with every batch finished in its own call
    NOTE_FN=note_tps step throughput_bf16_nopipe 120 env LD_LIBRARY_PATH="$QK_LIBS" QK_CUDA_PIPELINE=0 "$Q" run "$cfg" \
        --set run.precision=$(prec_of bf16) -o "$W/throughput_bf16_nopipe.h5"
    echo "| qkscope run (bf16, QK_CUDA_PIPELINE=0: each batch finished in its own call): $(note_tps "$W/logs/throughput_bf16_nopipe.log")" >>"$W/bench.txt"
    # the pipeline changes when the host takes a batch, not what it computes
    NOTE_FN=note_cmp step throughput_pipeline_same 60 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/h5compare" --mode parity \
        --tol 0 "$W/throughput_bf16.h5" "$W/throughput_bf16_nopipe.h5"
}

sanitize() {
    if [ -n "$DRY" ]; then
        skip_row sanitizers "dry run (no GPU)"
        return
    fi
    if ! command -v compute-sanitizer >/dev/null; then
        skip_row sanitizers "compute-sanitizer not found"
        return
    fi
    local tool p m=tests/reference/data/gpt2_tiny_a S=$W/gpu-bundle/data/small
    # the forward pass and activation cache of a tiny reference model, every hook; memcheck and
    # initcheck in fp32 and bf16 (the two kernel variants), racecheck and synccheck in fp32 (our
    # kernels use neither shared memory nor block barriers: warp shuffles only)
    for tool in memcheck initcheck racecheck synccheck; do
        for p in fp32 bf16; do
            [ $p = bf16 ] && { [ $tool = racecheck ] || [ $tool = synccheck ]; } && continue
            NOTE_FN=note_san step "san_${tool}_cache_$p" 45 env LD_LIBRARY_PATH="$QK_LIBS" compute-sanitizer --tool $tool \
                --error-exitcode 9 "$BIN/qkscope" cache --backend cuda --precision $p --model $m --tokens $m/tokens.txt \
                --hooks 'blocks.*,logits' -q -o "$W/san_${tool}_$p.h5"
        done
    done
    # the analysis path (n_run < layers, recorded heads) on the small random model, memcheck only
    {
        echo "[model]"; echo "dir = $S/model"; echo "[sae]"; echo "layer.1 = $S/sae/layer_1"
        echo "[corpus]"; echo "paths = $S/corpus.npy"; echo "n_ctx = 64"; echo "bos = false"; echo "batch = 4"; echo "max_tokens = 512"
        echo "[analysis]"; echo "heads = 1.0,1.1"; echo "record_heads = 1.0"; echo "[run]"; echo "backend = cuda"
    } >"$W/small.ini"
    NOTE_FN=note_san step san_memcheck_run 60 env LD_LIBRARY_PATH="$QK_LIBS" compute-sanitizer --tool memcheck \
        --error-exitcode 9 "$BIN/qkscope" run "$W/small.ini" -q -o "$W/small-out.h5"
    topk_sanitize
}

# The device bilinear top-k's small cases under every sanitizer tool (its warps share memory and
# synchronise: racecheck and synccheck matter here).
topk_sanitize() {
    local tool
    for tool in memcheck racecheck synccheck initcheck; do
        NOTE_FN=note_san step "san_${tool}_topk" 60 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda compute-sanitizer \
            --tool $tool --error-exitcode 9 "$BIN/test_qkscope" --jobs 1 \
            --filter 'topk_gpu/@(small_shapes_every_k|awkward_sizes_and_tiles|activations_relu_gated_both)'
    done
}

# qkscope static on the device: one layer's 12 heads of the random GPT-2-small-shaped model (x 12 =
# all 144), fp32 and bf16; then the top-k against one cuBLASLt GEMM writing every score.
topk_bench() {
    topk_bench_static
    [ -n "$DRY" ] && { skip_row bench_topk_gpu "dry run (no GPU)"; return; }
    NOTE_FN=note_last step bench_topk_gpu 120 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/bench_topk_gpu" --n 65536 --m 32768 --k 32 \
        --r 64,768 --prec bf16,fp32 --reps 5
    grep '^|' "$W/logs/bench_topk_gpu.log" >>"$W/bench.txt" 2>/dev/null
}

topk_bench_static() {
    local R=$W/rnd p
    if [ -d "$R/model" ]; then
        for p in fp32 bf16; do
            printf '[model]\ndir = %s\n[sae]\nlayer.1 = %s\n[corpus]\npaths = %s\n[analysis]\nheads = 1.*\nstatic_k = 32\n[run]\nbackend = %s\nprecision = %s\n' \
                "$R/model" "$R/sae/layer_1" "$R/corpus.npy" "$GPU_BE" "$(prec_of $p)" >"$W/static-$p.ini"
            NOTE_FN=note_last step "static_12_heads_$p" 90 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/qkscope" static "$W/static-$p.ini" \
                -o "$W/static-$p.h5" && echo "| qkscope static ($p, 12 heads at m 32768, k 32; x 12 for 144): $(awk -F'|' -v n="static_12_heads_$p" '$1 == n { print $3 }' "$ROWS") s" >>"$W/bench.txt"
        done
    else
        skip_row static "no random model"
    fi
}

# The measured bf16 peak: an 8192^3 GEMM through PyTorch (the method of /work/shared/GPU-NOTES.md).
bench_peak() {
    NOTE_FN=note_last step bench_torch_bf16_gemm 60 python3 -c '
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True); ts = []
for _ in range(20):
    e0.record(); a @ b; e1.record(); torch.cuda.synchronize(); ts.append(e0.elapsed_time(e1) / 1e3)
ts.sort(); print("bf16 GEMM 8192^3 (PyTorch): %.0f TFLOP/s (median of 20)" % (2 * 8192**3 / ts[10] / 1e12))'
}

bench() {
    local R=$W/rnd
    [ -d "$R/model" ] || { skip_row bench "no random model"; return; }
    NOTE_FN=note_last step bench_forward 90 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/bench_cuda_forward" "$R/model" "$R/corpus.npy" \
        32 128 fp32,tf32,bf16
    grep '^|' "$W/logs/bench_forward.log" >"$W/bench.txt" 2>/dev/null
    bench_peak
    grep 'TFLOP' "$W/logs/bench_torch_bf16_gemm.log" | sed 's/^/| /' >>"$W/bench.txt"
    # the seed's route (SAE.encode(M x) per head, torch.topk) in PyTorch on the same GPU and model
    local dev=cuda win=32
    [ -n "$DRY" ] && dev=cpu win=2
    NOTE_FN=note_last step bench_seed_route 150 python3 bench/bench_seed_gpu.py "$R" --device $dev --windows $win
    grep -h '^|' "$W/logs/bench_seed_route.log" >>"$W/bench.txt" 2>/dev/null
    topk_bench
}

# with_gpu STEP...: a mode's frame: its output folder, the bundle unpacked, the preflight, then
# each STEP function when the preflight passes (./bin/qkscope the bundle's, which the CLI tests
# run; a dry run keeps this checkout's own), and the summary.
with_gpu() {
    OUT=${OUT:-$ROOT/gpu-out}
    setup_run
    mkdir -p "$ROOT/bin"
    if preflight; then
        [ -n "$DRY" ] && [ -x "$ROOT/bin/qkscope" ] || cp "$BIN/qkscope" "$ROOT/bin/qkscope"
        local s
        for s in "$@"; do "$s"; done
    elif [ $? = 1 ]; then
        echo "gpu.sh: some binary does not load here: see $W/logs/preflight_ldd.log"
    fi
    finish
}

# `scripts/gpu.sh topk`: the device top-k alone (GEMM-then-select path), its sanitizers, benchmark.
topk_checks() {
    NOTE_FN=note_suite step suite_topk_gpu 150 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_CUDA_SYNC=1 \
        "$BIN/test_qkscope" --verbose --jobs 1 --filter '@(topk_gpu/*|run/planted_circuits_found_by_run_and_static)'
    [ -n "$DRY" ] || topk_sanitize
    NOTE_FN=note_last step random_model 90 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/qkscope" random --out "$W/rnd" --layers 2 \
        --tokens 1024 -q && topk_bench
}

# The fused bilinear top-k (kernels/analysis/topk_fused_kernel.cuh): every check of the fused kernel that
# needs a GPU.  Every kernel or shape that fails is named in its step's log (Criterion messages
# carry kernel, precision, shape, row, slot and both values).
fused_checks() {
    local t=$BIN/test_qkscope peak
    # HMMA / HGMMA in the bundled binary's fused kernels (a dry run here may lack cuobjdump: SKIP)
    NOTE_FN=note_last step sass_tensor_cores 60 env QK_REQUIRE_SASS="$([ -n "$DRY" ] && echo 0 || echo 1)" \
        scripts/check_sass.sh "$BIN/qkscope"
    NOTE_FN=note_suite step suite_topk_fused 200 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_CUDA_SYNC=1 "$t" \
        --verbose --jobs 1 --filter 'topk_gpu/fused_*'
    # the other bf16 flavours and seeding off, through the tests that take the environment's (the
    # fused_flavour_* / fused_seeding_* tests set flavour and seeding themselves: run above, once)
    NOTE_FN=note_suite step suite_topk_fused_wgmma_tma 100 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_CUDA_SYNC=1 \
        QK_FUSED_MMA=wgmma "$t" --verbose --jobs 1 --filter 'topk_gpu/fused_!(flavour_*|seeding_*)'
    NOTE_FN=note_suite step suite_topk_fused_wgmma_st 50 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_CUDA_SYNC=1 \
        QK_FUSED_MMA=wgmma-st "$t" --verbose --jobs 1 --filter 'topk_gpu/fused_@(awkward_*|nan_*)'
    NOTE_FN=note_suite step suite_topk_fused_unseeded 60 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_CUDA_SYNC=1 \
        QK_FUSED_SEED=0 "$t" --verbose --jobs 1 --filter 'topk_gpu/fused_@(awkward_*|nan_*|integer_*)'
    # the rest of the suite through the fused path (the fused_* tests take it whatever the path, above)
    NOTE_FN=note_suite step suite_topk_path_fused 150 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_CUDA_SYNC=1 \
        QK_BTK_PATH=fused "$t" --verbose --jobs 1 --filter '@(topk_gpu/!(fused_*)|run/planted_circuits_found_by_run_and_static)'
    # qkscope static / run with the fused kernel vs the CPU backend: 2 layers of GPT-2 small's shapes
    local shape="--layers 2"
    [ -n "$DRY" ] && shape=$RANDOM_ARGS  # (a dry run's CPU side: small widths)
    # shellcheck disable=SC2086
    NOTE_FN=note_last step random_model 90 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/qkscope" random --out "$W/rnd" $shape \
        --tokens 8192 -q
    export QK_BTK_PATH=fused
    NL=2 compare_run
    topk_bench_static  # qkscope static on 12 heads at m 32768, fused, timed
    [ -n "$DRY" ] && { unset QK_BTK_PATH; skip_row bench_fused "dry run (no GPU)"; fused_sanitize; return; }
    bench_peak
    peak=$(sed -n 's/.*: \([0-9]*\) TFLOP\/s.*/\1/p' "$W/logs/bench_torch_bf16_gemm.log" | tail -n 1)
    NOTE_FN=note_last step bench_topk_fused 150 env LD_LIBRARY_PATH="$QK_LIBS" "$BIN/bench_topk_gpu" --n 65536 --m 32768 \
        --k 32 --r 64,768 --prec bf16,fp32 --reps 3 ${peak:+--peak $peak}
    NOTE_FN=note_last step bench_topk_torch 120 python3 bench/bench_topk_torch.py --n 65536 --m 32768 --k 32 --r 64,768 --reps 3
    unset QK_BTK_PATH
    {
        echo "# fused bilinear top-k benchmark (scripts/gpu.sh fused), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cat "$W/gpu-bundle/commit" 2>/dev/null)"
        grep -h 'TFLOP' "$W/logs/bench_torch_bf16_gemm.log" | sed 's/^/measured peak: /'
        grep -h '^#\|^|' "$W/logs/bench_topk_fused.log" "$W/logs/bench_topk_torch.log" 2>/dev/null
        grep -h '^| qkscope static' "$W/bench.txt" 2>/dev/null
    } >"$W/bench_topk.md"
    cat "$W/bench_topk.md" >>"$W/bench.txt"
    [ -n "${OUT:-}" ] && mkdir -p "$OUT" && cp "$W/bench_topk.md" "$OUT/bench_topk.md"
    fused_sanitize
}

# compute-sanitizer on the fused kernel's small cases, last (the slowest steps; the budget may end
# them): memcheck, racecheck (its warps share queues through shared-memory atomics), synccheck.
fused_sanitize() {
    local t=$BIN/test_qkscope
    local tool
    if [ -n "$DRY" ] || ! command -v compute-sanitizer >/dev/null; then
        skip_row sanitizers_fused "dry run or no compute-sanitizer"
    else
        for tool in memcheck racecheck synccheck; do
            NOTE_FN=note_san step "san_${tool}_fused" 45 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_BTK_PATH=fused \
                compute-sanitizer --tool $tool --error-exitcode 9 "$t" --jobs 1 \
                --filter 'topk_gpu/@(small_shapes_every_k|integer_scores_equal_host_bit_for_bit)'
        done
        # (QK_FUSED_MMA=wgmma: the TMA ring, its mbarriers and its tensor maps' zero fill)
        NOTE_FN=note_san step san_memcheck_fused_wgmma 45 env LD_LIBRARY_PATH="$QK_LIBS" QK_BACKEND=cuda QK_BTK_PATH=fused \
            QK_FUSED_MMA=wgmma compute-sanitizer --tool memcheck --error-exitcode 9 "$t" --jobs 1 \
            --filter 'topk_gpu/integer_scores_equal_host_bit_for_bit'
    fi
}

MODE=${1:-}  # the summary's header names it
case "$MODE" in
bundle) bundle ;;
run) with_gpu suites compare_cache bench compare_run throughput sanitize ;;
dry) GPU_SH_DRY=1 exec "$0" run ;;
topk) with_gpu topk_checks ;;
fused) BUDGET=${GPU_BUDGET_S:-420} with_gpu fused_checks ;;
dry-fused) GPU_SH_DRY=1 exec "$0" fused ;;
preflight)
    OUT=${OUT:-}
    setup_run
    preflight
    finish
    ;;
*) echo "usage: scripts/gpu.sh bundle|run|topk|fused|preflight|dry|dry-fused" >&2; exit 2 ;;
esac
