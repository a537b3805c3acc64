#!/usr/bin/env bash
# Seed inputs for the fuzz harnesses, made from the repository's files and a tiny random model:
# seeds.sh QKSCOPE OUT writes OUT/<harness>/*.  Run from the repository root.
set -euo pipefail
qk=$1 out=$2
tiny=$out/tiny
rm -rf "$out" && mkdir -p "$out"/{safetensors,token_file,gpt2,sae,run_config,corpus,bpe,manifest}
"$qk" random --out "$tiny" -q --layers 1 --heads 2 --d-model 4 --d-mlp 8 --n-ctx 4 --vocab 8 --d-sae 4 --k 2 --tokens 16
# fuzz_split's input: 2-byte little-endian length of the first part, the first part, the second.
split2() {
    local n; n=$(stat -c %s "$1")
    printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $((n >> 8 & 255)))"
    cat "$1" "$2"
}
cp "$tiny/model/model.safetensors" "$out/safetensors/model"
cp "$tiny/sae/layer_0/sae_weights.safetensors" "$out/safetensors/sae"
split2 "$tiny/model/config.json" "$tiny/model/model.safetensors" > "$out/gpt2/tiny"
split2 tests/reference/data/gpt2_tiny_a/config.json "$tiny/model/model.safetensors" > "$out/gpt2/config_a"
split2 "$tiny/sae/layer_0/cfg.json" "$tiny/sae/layer_0/sae_weights.safetensors" > "$out/sae/tiny"
for d in tests/reference/data/sae/*/; do
    split2 "$d/cfg.json" "$tiny/sae/layer_0/sae_weights.safetensors" > "$out/sae/$(basename "$d")"
done
{ printf '\0'; cat tests/reference/data/gpt2_tiny_a/tokens.txt; } > "$out/token_file/text"
{ printf '\1'; cat "$tiny/corpus.npy"; } > "$out/token_file/npy"
for c in configs/*.ini; do
    { echo "$c"; cat "$c"; printf '\0analysis.k=4\nsweep.analysis.a=1 | 2\n'; } > "$out/run_config/$(basename "$c")"
done
printf 'x.ini\n[model]\ndir = m\n[sweep]\nanalysis.k = 1 | 2 | 3\ncorpus.n_ctx = 8 | 16\n' > "$out/run_config/sweep"
printf '\0\0Hello world.\n\nA second document, with  spaces\ttabs.\r\n' > "$out/corpus/text"
printf '\1\41{"text": "one document"}\n{"text": "two\\u0000 \\ud83d\\ude00", "id": [1, {"a": "}"}]}\n\n' > "$out/corpus/jsonl"
printf '\2\20Compressed text here.\n' > "$out/corpus/gz"
printf '\3\41{"text": "zstd"}\n' > "$out/corpus/zst"
{ printf '\6\0'; cat "$tiny/corpus.npy"; } > "$out/corpus/npy"
{ printf '\7\0\x88\xd8\x34\x01\1\0\0\0\4\0\0\0'; head -c 1012 /dev/zero; printf '\1\0\2\0\x50\xc4\3\0'; } > "$out/corpus/bin"
head -c 2000 ../shared/data/text/utf8-demo.txt > "$out/bpe/utf8"
printf 'S<|endoftext|>DON'"'"'T I’m hello   a\xc2\xa0b x² \xff\xfe' > "$out/bpe/cases"
printf '\0{"format": "qkscope-run-shards", "config_hash": "%064d", "complete": true, "ranks": 2, "aggregates": "aggregates.h5", "shards": ["shard-000000.h5", "shard-000001.h5"]}' 0 > "$out/manifest/manifest"
printf '\1{"format": "qkscope-plan", "tasks": 4, "settings": 2}' > "$out/manifest/plan"
rm -rf "$tiny"
