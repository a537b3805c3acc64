#!/usr/bin/env bash
# tests/slurm/test_slurm.sh (`make test-slurm`): a real single-node Slurm cluster runs a qkscope
# sweep.  It starts munged, slurmctld and slurmd on this machine (everything under one temporary
# folder: SLURM_CONF points there, nothing in /etc is read or written, other ports than the
# defaults), submits the demo analysis on the CPU backend as a 4-task array with `qkscope submit
# --gpus-per-task 0`, pre-empts one task mid-run (scancel --signal=USR1 --batch: the sbatch
# template forwards it, qkscope keeps its complete shards and exits 75, the task requeues itself
# and resumes), waits for the array and the merge job, and compares the merged file with a
# single-process `qkscope run` of the same config, dataset by dataset.  The daemons are stopped
# on exit.  Needs root (the daemons run as root) and slurm-wlm + munge (.ci/run installs them);
# without them it prints SKIP and exits 0.  QK_SLURM_KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
QK=${QKSCOPE:-$ROOT/bin/qkscope}
export QK_SLURM_DIR=$ROOT/slurm   # this checkout's sbatch templates, wherever the binary is
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$(id -u)" -ne 0 ]; then echo "SKIP: test-slurm needs root (it starts munged, slurmctld and slurmd)"; exit 0; fi
if ! command -v slurmctld >/dev/null; then
    echo "SKIP: test-slurm: slurmctld not found (scripts/install-deps.sh --slurm installs slurm-wlm and munge; .ci/run does)"; exit 0
fi
for c in slurmd munged mungekey munge sbatch squeue scontrol scancel sinfo h5diff h5ls python3; do
    command -v "$c" >/dev/null || { echo "FAIL: test-slurm: slurmctld is installed but '$c' is missing" >&2; exit 1; }
done
[ -x "$QK" ] || { echo "FAIL: test-slurm: $QK not built (make)" >&2; exit 1; }

T=$(mktemp -d /tmp/qkscope-slurm.XXXXXX)
chmod 755 "$T"   # munged wants its socket's folders searchable by all
LOG=$T/log
mkdir -p "$LOG" "$T/munge" "$T/state" "$T/spool" "$T/run" "$T/data"
PIDS=()        # daemons started here, stopped in this order's reverse
JOBS=()        # Slurm jobs submitted here, cancelled on a failure
t_start=$SECONDS

log() { printf '== [%3ds] %s\n' $((SECONDS - t_start)) "$*"; }

# Prints the logs that explain a failure, then one FAIL line, and exits 1 (cleanup runs on EXIT).
SHOW_LOGS=1    # 0 once the cluster's part is done: a failed comparison needs no daemon logs
fail() {
    {
        if [ $SHOW_LOGS = 1 ]; then
            for f in "$LOG"/*.log "$T"/sweep/logs/*.out; do
                [ -s "$f" ] || continue
                [[ $f == *.stdout.log && -s ${f%.stdout.log}.log ]] && continue   # the same lines
                echo "---- ${f#"$T"/} (last 40 lines)"
                tail -n 40 "$f"
            done
            if [ -n "${SLURM_CONF:-}" ] && [ ${#JOBS[@]} -gt 0 ]; then
                echo "---- the jobs"
                for j in "${JOBS[@]}"; do
                    scontrol -o show job "$j" 2>&1 | while read -r line; do
                        grep -o -E '(^| )(JobId|ArrayTaskId|JobState|Reason|Restarts|ExitCode|StartTime|EndTime)=[^ ]*' <<<"$line" | paste -sd' '
                    done
                done
            fi
        fi
        echo "FAIL: test-slurm: $*"
    } >&2
    exit 1
}

# running PID: the process exists and has not exited (a zombie, not yet waited for, has).
running() {
    local st=Z
    { read -r _ _ st _ </proc/"$1"/stat; } 2>/dev/null || return 1
    [ "$st" != Z ]
}
cleanup() {
    local rc=$?
    set +e
    if [ -n "${SLURM_CONF:-}" ] && [ ${#JOBS[@]} -gt 0 ] && [ ${#PIDS[@]} -ge 2 ]; then
        scancel "${JOBS[@]}" 2>/dev/null
        for _ in $(seq 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
    fi
    [ -n "${SINGLE:-}" ] && kill "$SINGLE" 2>/dev/null && wait "$SINGLE" 2>/dev/null
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do   # up to 10 s each to exit (a zombie has exited), then SIGKILL
        for _ in $(seq 40); do running "$pid" || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ $rc -eq 0 ] && [ -z "${QK_SLURM_KEEP:-}" ]; then rm -rf "$T"; else echo "test-slurm: files kept in $T" >&2; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.25 s; fails after SECONDS.
wait_for() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@"; do
        [ $SECONDS -lt $deadline ] || fail "timed out after ${limit}s waiting for $what"
        sleep 0.25
    done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- munged, with a key made here
log "munged"
mungekey --create --keyfile="$T/munge/munge.key" 2>"$LOG/mungekey.log" ||
    dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 0400 "$T/munge/munge.key"
SOCK=$T/munge/munge.socket
munged --foreground --force --key-file="$T/munge/munge.key" --socket="$SOCK" --pid-file="$T/run/munged.pid" \
    --seed-file="$T/munge/munged.seed" --log-file="$LOG/munged.log" >"$LOG/munged.stdout.log" 2>&1 &
PIDS+=($!)
munge_ok() { munge -n -S "$SOCK" 2>/dev/null | unmunge -S "$SOCK" >/dev/null 2>&1; }
wait_for 20 "munged to answer on $SOCK" munge_ok

# ---- slurm.conf for this host: one CPU node, proctrack/linuxproc and task/none (no cgroups).
#   AuthInfo cred_expire=10: a requeued job waits cred_expire (default 120 s) before it may start
#   again; 10 s keeps the pre-emption below short and still leaves step launches ample time.
#   sched_interval=1 / bf_interval=1: the scheduler notices at once that the requeued task's
#   begin time has passed (defaults 60 s / 30 s).  MinJobAge=600: finished jobs stay visible to
#   `scontrol show job` (state, exit code, restarts) until the checks have read them.
HOST=$(hostname -s)
NCPU=$(nproc)
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
while [ "$SLURMD_PORT" = "$CTLD_PORT" ]; do SLURMD_PORT=$(free_port); done
export SLURM_CONF=$T/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=qkscope-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU State=UNKNOWN
PartitionName=ci Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

log "slurmctld and slurmd (ports $CTLD_PORT, $SLURMD_PORT)"
slurmctld -D -i >"$LOG/slurmctld.stdout.log" 2>&1 &
PIDS+=($!)
slurmd -D -N "$HOST" >"$LOG/slurmd.stdout.log" 2>&1 &
PIDS+=($!)
node_idle() {
    local pid
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a Slurm daemon (pid $pid) exited while starting"; done
    [ "$(sinfo -h -n "$HOST" -o %t 2>/dev/null)" = idle ]
}
wait_for 60 "node $HOST to be idle (slurmctld and slurmd up)" node_idle
log "cluster up: $(sinfo -h -o '%P %D %t %C')"

# ---- the demo model, and its corpus as 4 files (part P of 4 is file P).  Part 3, the last task
# to start, is the large one and is pre-empted below: 16 shards of 64 windows, so the signal
# comes while most are still to do.  pack = false: windows never cross files, so the parts
# together equal one run over the whole corpus.
D=$T/data
"$QK" planted --out "$D" --tokens $((64 * 1408)) -q
python3 - "$D/corpus.npy" "$D/corpus" 128 128 128 1024 <<'EOF'
import ast, os, sys
src, out, counts = sys.argv[1], sys.argv[2], [int(c) for c in sys.argv[3:]]
raw = open(src, 'rb').read()
assert raw[:8] == b'\x93NUMPY\x01\x00', 'npy version 1 expected'
hlen = int.from_bytes(raw[8:10], 'little')
head = ast.literal_eval(raw[10:10 + hlen].decode('latin1'))
rows, cols = head['shape']
assert head['descr'] == '<i4' and not head['fortran_order'] and sum(counts) == rows, (head, counts)
data, row = raw[10 + hlen:], cols * 4
os.makedirs(out)
at = 0
for i, n in enumerate(counts):
    h = "{'descr': '<i4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, cols)
    h = h.ljust(64 * ((10 + len(h) + 1 + 63) // 64) - 10 - 1) + '\n'
    with open(os.path.join(out, 'c%d.npy' % i), 'wb') as f:
        f.write(raw[:8] + len(h).to_bytes(2, 'little') + h.encode('latin1') + data[at * row:(at + n) * row])
    at += n
EOF
SETS=(--set "model.dir=$D/model" --set "sae.layer.0=$D/sae/layer_0" --set "sae.layer.1=$D/sae/layer_1"
      --set "corpus.paths=$D/corpus" --set corpus.pack=false --set run.backend=cpu --set run.threads=1
      --set output.shard_tokens=4096)
CONFIG=$ROOT/configs/demo.ini
OUT=$T/sweep
PRE=3               # the task pre-empted
PART=$(printf '%s/part-%03d' "$OUT" $PRE)

# ---- the sweep
log "qkscope submit --tasks 4 --gpus-per-task 0"
"$QK" submit "$CONFIG" "${SETS[@]}" --tasks 4 --gpus-per-task 0 --partition ci --time 00:15:00 -o "$OUT" \
    >"$T/submit.txt" 2>&1 || { cat "$T/submit.txt" >&2; fail "qkscope submit failed"; }
ARRAY=$(sed -n 's/^submitted array job \([0-9]*\) .*/\1/p' "$T/submit.txt")
MERGE=$(grep -E '^[0-9]+(;.*)?$' "$T/submit.txt" | head -n 1 | cut -d';' -f1 || true)
[ -n "$ARRAY" ] && [ -n "$MERGE" ] || { cat "$T/submit.txt" >&2; fail "no job ids in qkscope submit's output"; }
JOBS=("$ARRAY" "$MERGE")
log "array job $ARRAY, merge job $MERGE"
grep -q -- '--gres' "$OUT/qkscope.sbatch" && fail "a --gpus-per-task 0 sweep asked for a GPU"

# job_field JOB FIELD: FIELD of `scontrol show job JOB` (the first record).
job_field() { scontrol -o show job "$1" 2>/dev/null | head -n 1 | grep -o " $2=[^ ]*" | cut -d= -f2- || true; }
# shards_done: complete shards of the pre-empted part so far (qkscope status, its own count).
shards_done() { "$QK" status "$OUT" 2>/dev/null | sed -n "s#^$PART: .* \([0-9]*\) shard(s)\$#\1#p"; }

# ---- pre-empt task $PRE once it has a complete shard (so there is something to keep), while it
# still has most of its shards to do, and while no task of the array is pending: Slurm 22.05
# answers a signal to one array task "Job can not be altered now" while the array still holds
# pending tasks (though it delivers it), and scancel then retries every few seconds, signalling
# the task again after it has been requeued.  Task $PRE is the last to start, so by then none is.
first_shard() {
    [ "$(job_field "${ARRAY}_$PRE" JobState)" = RUNNING ] || return 1
    [ -z "$(squeue -h -r -j "$ARRAY" -t PENDING -o %i 2>/dev/null)" ] || return 1
    local n
    n=$(shards_done)
    [ -n "$n" ] && [ "$n" -ge 1 ]
}
wait_for 120 "task ${ARRAY}_$PRE to run and complete a shard" first_shard
before=$(shards_done)
log "task ${ARRAY}_$PRE has $before complete shard(s): scancel --signal=USR1 --batch"
scancel --signal=USR1 --batch "${ARRAY}_$PRE" 2>"$T/scancel.txt" ||
    fail "scancel --signal=USR1 --batch ${ARRAY}_$PRE: $(cat "$T/scancel.txt")"
requeued() {
    [ "$(job_field "${ARRAY}_$PRE" Restarts)" = 1 ] && return 0
    case $(job_field "${ARRAY}_$PRE" JobState) in
        COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY)
            fail "task ${ARRAY}_$PRE ended $(job_field "${ARRAY}_$PRE" JobState) (exit $(job_field "${ARRAY}_$PRE" ExitCode)) instead of being requeued after the signal" ;;
    esac
    return 1
}
wait_for 60 "task ${ARRAY}_$PRE to be requeued (Restarts=1) after the signal" requeued
log "task ${ARRAY}_$PRE requeued: $(job_field "${ARRAY}_$PRE" JobState), $(shards_done) shard(s) kept"

# The single-process run of the same config (output.shard_tokens=0: one file), compared with the
# merged file below; it starts now, while the requeued task waits out cred_expire.
"$QK" run "$CONFIG" "${SETS[@]}" --set output.shard_tokens=0 -q -o "$T/single.h5" 2>"$LOG/single.log" &
SINGLE=$!

# ---- the rest of the array, the resumed task and the merge job
jobs_gone() {
    [ "$(job_field "$MERGE" Reason)" != DependencyNeverSatisfied ] || fail "merge job $MERGE will never run: an array task failed"
    [ -z "$(squeue -h -j "$ARRAY,$MERGE" -o %i 2>/dev/null)" ]
}
wait_for 240 "the array and the merge job to finish" jobs_gone
log "array and merge job finished"
for p in 0 1 2 3; do
    st=$(job_field "${ARRAY}_$p" JobState) ec=$(job_field "${ARRAY}_$p" ExitCode)
    [ "$st" = COMPLETED ] && [ "$ec" = 0:0 ] || fail "array task ${ARRAY}_$p ended $st (exit $ec)"
done
st=$(job_field "$MERGE" JobState)
[ "$st" = COMPLETED ] || fail "merge job $MERGE ended $st (exit $(job_field "$MERGE" ExitCode))"
[ "$(job_field "${ARRAY}_$PRE" Restarts)" = 1 ] || fail "task ${ARRAY}_$PRE: Restarts=$(job_field "${ARRAY}_$PRE" Restarts), want 1"
for p in 0 1 2 3; do
    [ $p = $PRE ] && continue
    r=$(job_field "${ARRAY}_$p" Restarts)
    [ "$r" = 0 ] || fail "task ${ARRAY}_$p was restarted ($r) though not pre-empted"
done
# The pre-empted task's log: qkscope stopped on the signal with shards kept (exit 75, which the
# template turns into `scontrol requeue`), and the requeued run resumed after them.
# (--open-mode=append in the template keeps both runs' lines.)
TLOG=$OUT/logs/${ARRAY}_$PRE.out
# The open shard is closed as a checkpoint: the windows analysed before the signal are all kept.
kept=$(sed -n 's/.*signal 10[^:]*: stopped after [0-9]* windows, in \([0-9]*\) complete shard(s).*exit 75.*/\1/p' "$TLOG")
kept_w=$(sed -n 's/.*signal 10[^:]*: stopped after \([0-9]*\) windows.*/\1/p' "$TLOG")
resumed=$(sed -n 's/.*resuming after \([0-9]*\) complete shard(s).*/\1/p' "$TLOG")
resumed_w=$(sed -n 's/.*resuming after [0-9]* complete shard(s), \([0-9]*\) windows.*/\1/p' "$TLOG")
[ -n "$kept_w" ] && [ "$resumed_w" = "$kept_w" ] ||
    fail "task ${ARRAY}_$PRE: stopped after '$kept_w' windows but resumed after '$resumed_w'"
[ -n "$kept" ] && [ "$kept" -ge 1 ] ||
    fail "task ${ARRAY}_$PRE's log does not show qkscope stopping on SIGUSR1 with complete shards and exit 75 ($TLOG)"
[ "$resumed" = "$kept" ] ||
    fail "task ${ARRAY}_$PRE's requeued run did not resume after the $kept shard(s) kept (resumed after '$resumed')"
"$QK" status "$OUT" >"$T/status.txt"
grep -q "4 of 4 part(s) done, 0 missing" "$T/status.txt" && grep -q "merged file written" "$T/status.txt" ||
    { cat "$T/status.txt" >&2; fail "qkscope status does not report 4 parts done and the merged file"; }

# ---- the merged file against the single-process run
rc=0
wait "$SINGLE" || rc=$?
SINGLE=
[ $rc = 0 ] || fail "the single-process qkscope run failed (exit $rc)"
log "single-process run done; comparing"
SHOW_LOGS=0
MERGED=$OUT/all.h5
# The datasets and their shapes (current dimensions; the maximum ones differ: the merged file's
# are virtual datasets of fixed size).
datasets() { h5ls -r "$1" | awk '$2 == "Dataset" { d = substr($0, index($0, "{")); gsub(/\/[^,}]*/, "", d); print $1, d }' | sort; }
datasets "$T/single.h5" >"$T/single.list"
datasets "$MERGED" >"$T/merged.list"
diff "$T/single.list" "$T/merged.list" >"$T/lists.diff" ||
    { head -n 20 "$T/lists.diff" >&2; fail "the merged file and the single run hold different datasets or shapes (< single, > merged)"; }
# differs [h5diff options] DATASET: h5diff finds a difference, or cannot compare the two (another
# shape or type, for which it exits 0 saying only "not comparable").
differs() {
    local d=${!#} out rc=0
    out=$(h5diff -n 1 "${@:1:$#-1}" "$T/single.h5" "$MERGED" "$d" "$d" 2>&1) || rc=$?
    [ $rc != 0 ] || grep -qi "not comparable" <<<"$out"
}
# The rule of tests/test_shards.c (merge_equals_single_file_and_refuses_holes) and docs/FORMAT.md:
#  - per-window datasets (/tokens, /length, /provenance, /heads/...), every count and histogram,
#    and the dense sums (metric_sum, metric_mean, query/key_marginal and their *_exact limbs,
#    the summary's metric_mean) must be equal to the bit: each part computes its windows exactly
#    as the single run does, and the sums are exact (host/analysis/exact_sum.h), whatever the split;
#  - the heavy-hitter pair sketches (aggregates pairs_*) are approximate by design: merging the
#    shards' sketches keeps other light pairs and wider error bounds than one pass does, so
#    they are not compared value by value; instead `qkscope planted --check-run` checks that
#    the merged sketch ranks every planted circuit first, as the demo requires.
n_exact=0 n_sketch=0 bad=()
while read -r d _; do
    case "$d" in
        /aggregates/*/pairs_*) n_sketch=$((n_sketch + 1)); continue ;;
        *) opt=(); n_exact=$((n_exact + 1)) ;;
    esac
    if differs "${opt[@]}" "$d"; then bad+=("$d"); fi
done <"$T/single.list"
if [ ${#bad[@]} -gt 0 ]; then
    for d in "${bad[@]:0:3}"; do h5diff -r -n 4 "$T/single.h5" "$MERGED" "$d" "$d" >&2 2>&1 || true; done
    fail "${#bad[@]} dataset(s) of the merged file differ from the single run: ${bad[*]:0:10}"
fi
"$QK" planted --out "$D" --check-run "$MERGED" >"$T/check.txt" 2>&1 ||
    { cat "$T/check.txt" >&2; fail "the merged file's pair sketches do not rank the planted circuits first"; }
log "PASS: $n_exact datasets equal, $n_sketch sketch datasets checked by --check-run;" \
    "task ${ARRAY}_$PRE stopped after $kept shard(s), requeued and resumed ($((SECONDS - t_start)) s)"
