#!/usr/bin/env bash
# tests/test_download.sh: offline checks of scripts/download_gpt2.sh against a local
# `python3 -m http.server` serving a fake Hugging Face tree (REPO/resolve/REV/PATH).  Covers the
# dry run, the unpinned-hash warning, the .part-then-rename rule, a failed download, a SHA-256
# mismatch, an already-present file, the cfg.json hook check and the layer-8 = layer-9 check.
# Run by `make test-scripts`; needs bash, curl, sha256sum, python3; no network beyond localhost.
# shellcheck disable=SC2016  # check() evals its single-quoted condition on purpose
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=scripts/download_gpt2.sh
T=$(mktemp -d)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
fails=0
pass() { echo "  ok    $1"; }
fail() { echo "  FAIL  $1" >&2; fails=$((fails + 1)); }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# Revisions as the script pins them (read back from the script, so the test follows it).
rev() { grep -oE "^$1=\\$\\{[A-Z0-9_]+:-[0-9a-f]{40}\\}" "$SCRIPT" | grep -oE '[0-9a-f]{40}'; }
GPT2_REV=$(rev GPT2_REV) V5_REV=$(rev V5_REV) JB_REV=$(rev JB_REV)

# ---- the fake tree -------------------------------------------------------------------------------
W=$T/www
v5=$W/jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs/resolve/$V5_REV
jb=$W/jbloom/GPT2-Small-SAEs-Reformatted/resolve/$JB_REV
g2=$W/openai-community/gpt2/resolve/$GPT2_REV
for l in 0 1 2 3 4 5 6 7 8 9 10 11; do
    mkdir -p "$v5/v5_32k_layer_$l.pt"
    printf '{"hook_name": "blocks.%d.hook_resid_post", "d_sae": 32768}\n' "$l" >"$v5/v5_32k_layer_$l.pt/cfg.json"
    printf 'fake weights of layer %d\n' "$l" >"$v5/v5_32k_layer_$l.pt/sae_weights.safetensors"
done
mkdir -p "$jb/blocks.0.hook_resid_pre" "$g2"
printf '{"hook_point": "blocks.0.hook_resid_pre"}\n' >"$jb/blocks.0.hook_resid_pre/cfg.json"
printf 'fake jb weights\n' >"$jb/blocks.0.hook_resid_pre/sae_weights.safetensors"
printf '{"fake": true}\n' >"$g2/config.json"                 # does not match the pinned hash
SHARED=../shared/data/gpt2
if [ -f $SHARED/encoder.json ]; then                          # the real bytes: pinned hashes match
    cp $SHARED/encoder.json "$g2/vocab.json"
    cp $SHARED/vocab.bpe "$g2/merges.txt"
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$W" >/dev/null 2>&1 &
SRV=$!
BASE=http://127.0.0.1:$PORT
for _ in $(seq 50); do curl -fs "$BASE/" >/dev/null 2>&1 && break; sleep 0.05; done

run() {  # OUTFILE ARGS...: runs the script, returns its status, output in OUTFILE
    local o=$1; shift
    set +e; bash "$SCRIPT" --base-url "$BASE" "$@" >"$o" 2>&1; local rc=$?; set -e
    return $rc
}

echo "download_gpt2.sh, offline"
# 1. dry run: lists URLs at the pinned revisions, writes nothing.
run "$T/o1" --dest "$T/m1" --dry-run && rc=0 || rc=$?
check "dry run exits 0" '[ $rc = 0 ]'
check "dry run writes nothing" '[ ! -e "$T/m1" ]'
check "dry run lists 30 files" '[ "$(grep -c -- "->" "$T/o1")" = 30 ]'
check "dry run shows the pinned model hash" 'grep -q "model.safetensors  (sha256 248dfc39" "$T/o1"'
check "dry run URL form" 'grep -q "$BASE/jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs/resolve/$V5_REV/v5_32k_layer_8.pt/sae_weights.safetensors" "$T/o1"'

# 2. SAEs without pinned hashes: succeed, warn for each file, leave no .part.
run "$T/o2" --dest "$T/m2" --only v5,jb && rc=0 || rc=$?
check "v5+jb download exits 0" '[ $rc = 0 ]'
check "26 files in place" '[ "$(find "$T/m2" -name "*.json" -o -name "*.safetensors" | grep -vc SHA256SUMS)" = 26 ]'
check "no .part left" '[ -z "$(find "$T/m2" -name "*.part")" ]'
check "plain warning per unpinned file" '[ "$(grep -c "no pinned SHA-256 for .*; computed: [0-9a-f]\{64\}; verify it before relying on results" "$T/o2")" = 26 ]'
check "manifest written" '[ "$(wc -l <"$T/m2/SHA256SUMS.download")" = 26 ]'
check "bytes as served" 'cmp -s "$T/m2/gpt2-small-resid-post-v5-32k/v5_32k_layer_3.pt/sae_weights.safetensors" "$v5/v5_32k_layer_3.pt/sae_weights.safetensors"'

# 3. rerun: files present are re-hashed, not fetched again.
run "$T/o3" --dest "$T/m2" --only v5,jb && rc=0 || rc=$?
check "rerun exits 0 without fetching" '[ $rc = 0 ] && ! grep -q "^get " "$T/o3" && [ "$(grep -c "^present " "$T/o3")" = 26 ]'

# 4. a missing file on the server: error, nothing under the final name, no .part.
mv "$jb/blocks.0.hook_resid_pre/sae_weights.safetensors" "$T/jbw"
run "$T/o4" --dest "$T/m4" --only jb && rc=0 || rc=$?
mv "$T/jbw" "$jb/blocks.0.hook_resid_pre/sae_weights.safetensors"
check "failed download exits non-zero" '[ $rc != 0 ] && grep -q "download failed: .*sae_weights.safetensors" "$T/o4"'
check "failed download leaves nothing" '[ ! -e "$T/m4/gpt2-small-res-jb/blocks.0.hook_resid_pre/sae_weights.safetensors" ] && [ -z "$(find "$T/m4" -name "*.part")" ]'

# 5. cfg.json naming another hook: error naming the file.
# (Starting from the complete tree of step 2 minus layer 8: present files are only re-hashed.)
cp -r "$T/m2" "$T/m5" && rm -r "$T/m5/gpt2-small-resid-post-v5-32k/v5_32k_layer_8.pt"
printf '{"hook_name": "blocks.9.hook_resid_post"}\n' >"$v5/v5_32k_layer_8.pt/cfg.json"
run "$T/o5" --dest "$T/m5" --only v5 && rc=0 || rc=$?
check "mislabelled cfg.json is an error" '[ $rc != 0 ] && grep -q "v5_32k_layer_8.pt/cfg.json says its SAE was trained on .blocks.9.hook_resid_post." "$T/o5"'
printf '{"hook_name": "blocks.8.hook_resid_post"}\n' >"$v5/v5_32k_layer_8.pt/cfg.json"

# 6. the layer-8 mix-up: layer 8's weights are layer 9's.
cp -r "$T/m2" "$T/m6" && rm -r "$T/m6/gpt2-small-resid-post-v5-32k/v5_32k_layer_8.pt"
cp "$v5/v5_32k_layer_9.pt/sae_weights.safetensors" "$v5/v5_32k_layer_8.pt/sae_weights.safetensors"
run "$T/o6" --dest "$T/m6" --only v5 && rc=0 || rc=$?
check "layer 8 = layer 9 is an error" '[ $rc != 0 ] && grep -q "v5_32k_layer_8.pt and v5_32k_layer_9.pt hold the same weights" "$T/o6"'

# 7. pinned hashes: vocab.json/merges.txt match (real bytes), the fake config.json does not.
if [ -f "$g2/vocab.json" ]; then
    run "$T/o7" --dest "$T/m7" --only gpt2 && rc=0 || rc=$?
    check "pinned hashes verified" 'grep -q "ok .*vocab.json  sha256 196139668be6.* (matches the pinned value)" "$T/o7" && grep -q "ok .*merges.txt" "$T/o7"'
    check "mismatch is an error naming the file" '[ $rc != 0 ] && grep -q "SHA-256 mismatch for .*gpt2/config.json (openai-community/gpt2@$GPT2_REV/config.json): expected 0daed774" "$T/o7"'
    check "mismatched download deleted, no .part" '[ ! -e "$T/m7/gpt2/config.json" ] && [ ! -e "$T/m7/gpt2/config.json.part" ]'
    # 8. a present file with the wrong bytes is refused, not overwritten.
    printf 'tampered\n' >"$T/m7/gpt2/vocab.json"
    run "$T/o8" --dest "$T/m7" --only gpt2 && rc=0 || rc=$?
    check "tampered present file is an error" '[ $rc != 0 ] && grep -q "gpt2/vocab.json is present but its SHA-256 is" "$T/o8" && grep -q tampered "$T/m7/gpt2/vocab.json"'
else
    echo "  skip  pinned-hash checks: ../shared/data/gpt2 not found"
fi

# 9. bad arguments.
run "$T/o9" --only nope && rc=0 || rc=$?
check "unknown group is a usage error" '[ $rc = 2 ]'

if [ $fails -gt 0 ]; then echo "test_download.sh: $fails check(s) failed" >&2; exit 1; fi
echo "test_download.sh: all checks passed"
