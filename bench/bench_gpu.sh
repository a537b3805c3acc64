#!/usr/bin/env bash
# make bench-gpu: `qkscope run` on one GPU and on every GPU of the machine (--gpus N, one process,
# NCCL), same config and corpus, in one invocation; prints tokens/s for each, the speed-up and the
# scaling efficiency (target >= 90% per added GPU), and appends a row to results/bench_gpu.md.
#
# Inputs need no Python and no download (GPU machines have neither): `qkscope random` writes a
# GPT-2-small-shaped model with random weights, random SAELens TopK SAEs (d_sae 32768, k 32) for
# all 12 layers and a random corpus, once, under build/bench-gpu/.  The analysis: all 144 heads'
# aggregates, per-token records for 12 heads (L.0), k = 32, windows of 128 tokens, fp32, shards of
# TOKENS / (2 N) tokens (ranks take whole shards; every shard also writes the aggregates of all 144
# heads, ~0.4 GB before compression at d_sae 32768, so shards must not be tiny).  Until the CUDA
# backend has its own analysis kernels (issue #7) the analysis runs on the host CPU and dominates.
# Tokens/s is the run's own end-to-end figure (loading included), so use enough tokens.
#
# Where no GPU exists it says so and measures nothing.  BENCH_CPU_RANKS=N runs the same harness
# with N CPU ranks (--ranks) instead, to check the harness itself on a machine without a GPU.
# With CUDA it first times the forward pass alone per precision (bench_cuda_forward).
# Environment: TOKENS (default 65536), BATCH (32), PRECISION (fp32), QK (bin/qkscope).
set -euo pipefail
cd "$(dirname "$0")/.."
QK=${QK:-bin/qkscope}
DIR=build/bench-gpu
TOKENS=${TOKENS:-65536}
BATCH=${BATCH:-32}
if [ -n "${BENCH_CPU_RANKS:-}" ]; then
    n=$BENCH_CPU_RANKS backend=cpu flag=--ranks unit="CPU ranks"
    device="$(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores"
else
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ "${n:-0}" -eq 0 ]; then
        echo "bench-gpu: no GPU here (nvidia-smi lists none): nothing measured"
        exit 0
    fi
    backend=cuda flag=--gpus unit=GPUs
    device="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1 | sed 's/, / (driver /; s/$/)/'), $n GPU(s)"
fi
mkdir -p "$DIR"
if [ ! -f "$DIR/corpus.npy" ] || [ "$(cat "$DIR/tokens" 2>/dev/null)" != "$TOKENS" ]; then
    "$QK" random --out "$DIR" --tokens "$TOKENS" && echo "$TOKENS" >"$DIR/tokens"
fi
# The forward pass alone on one GPU, per precision (bench_cuda_forward: 32 windows of 128 tokens,
# the hooks the analysis reads copied to page-locked memory).
FWD=${FWD:-$(dirname "$QK")/bench_cuda_forward}
if [ "$backend" = cuda ] && [ -x "$FWD" ]; then
    "$FWD" "$DIR/model" "$DIR/corpus.npy" 32 128 fp32,tf32,bf16 || echo "bench-gpu: bench_cuda_forward failed" >&2
fi
cfg=$DIR/bench_gpu.ini
{
    echo "# written by bench/bench_gpu.sh"
    echo "[model]"
    echo "dir = $DIR/model"
    echo "[sae]"
    for l in $(seq 0 11); do echo "layer.$l = $DIR/sae/layer_$l"; done
    echo "[corpus]"
    echo "paths = $DIR/corpus.npy"
    echo "n_ctx = 128"
    echo "bos = false"
    echo "batch = $BATCH"
    echo "[analysis]"
    echo "heads = all"
    echo "record_heads = $(seq -s, -f '%g.0' 0 11)"
    echo "k = 32"
    echo "[output]"
    echo "shard_tokens = $((TOKENS / (2 * n)))"   # two shards per rank of the widest run
    echo "[run]"
    echo "backend = $backend"
    echo "precision = ${PRECISION:-fp32}"
} >"$cfg"
# tokens/s of one run with R ranks
run() {
    local r=$1 out=$DIR/out-$1 log=$DIR/run-$1.log
    rm -rf "$out"
    "$QK" run "$cfg" "$flag" "$r" -o "$out" --set output.progress_seconds=60 2>"$log" >/dev/null ||
        { tail -n 5 "$log" >&2; echo "bench-gpu: the run with $r $unit failed (log: $log)" >&2; exit 1; }
    sed -n 's/.* tokens in .* (\([0-9.]*\) tokens\/s).*/\1/p' "$log" | tail -n 1
}
one=$(run 1)
all=$one
[ "$n" -gt 1 ] && all=$(run "$n")
speedup=$(awk -v a="$all" -v o="$one" 'BEGIN { printf "%.2f", a / o }')
eff=$(awk -v a="$all" -v o="$one" -v n="$n" 'BEGIN { printf "%.0f", 100 * a / (o * n) }')
echo "bench-gpu: $device; GPT-2-small shapes (random), 144 heads analysed, 12 recorded, $TOKENS tokens"
printf '  1 %-9s %10.0f tokens/s\n' "$unit" "$one"
printf '  %d %-9s %10.0f tokens/s   speed-up %sx, scaling efficiency %s%% (target >= 90%%)\n' "$n" "$unit" "$all" "$speedup" "$eff"
out=results/bench_gpu.md
[ -f "$out" ] || printf '%s\n\n%s\n%s\n' "# make bench-gpu: qkscope run on 1 and on all devices (GPT-2-small shapes, random weights)" \
    "| date | device | ranks | tokens | 1 rank tok/s | all tok/s | speed-up | efficiency | command |" \
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |" >"$out"
printf '| %s | %s | %s %s | %s | %.0f | %.0f | %s | %s%% | `%s` |\n' "$(date -u '+%Y-%m-%d %H:%M')" "$device" "$n" "$unit" \
    "$TOKENS" "$one" "$all" "$speedup" "$eff" "${BENCH_CPU_RANKS:+BENCH_CPU_RANKS=$BENCH_CPU_RANKS }make bench-gpu" >>"$out"
