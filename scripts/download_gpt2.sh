#!/usr/bin/env bash
# scripts/download_gpt2.sh: downloads what configs/gpt2-small.ini needs, each file from a PINNED
# Hugging Face revision (a commit hash), and checks SHA-256 against values pinned below.
#
#   scripts/download_gpt2.sh [--dest DIR] [--only GROUPS] [--base-url URL] [--dry-run]
#
#   DIR/gpt2/                                   openai-community/gpt2: config.json,
#                                               model.safetensors, vocab.json, merges.txt
#   DIR/gpt2-small-resid-post-v5-32k/v5_32k_layer_{0..11}.pt/
#                                               jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs
#   DIR/gpt2-small-res-jb/blocks.0.hook_resid_pre/
#                                               jbloom/GPT2-Small-SAEs-Reformatted (layer 0 only)
#
# Needs bash, curl, sha256sum.  About 0.55 GB (GPT-2) + 12 x ~0.2 GB (v5) + ~0.15 GB (jb).
#
# Every file goes to NAME.part first and is renamed to NAME only after its SHA-256 was checked
# (or, where no value is pinned, computed and printed): an interrupted or failed download never
# leaves a file under its final name.  A file already present is re-hashed, not re-downloaded;
# a present file whose hash disagrees with the pinned value is an error (delete it yourself).
#
# Provenance of the pinned values (see the report in configs/README.md, "Downloading"):
#   - every revision and hash below was copied from public material, none was computed here;
#   - where no hash could be found the entry says "-" and the script prints the computed hash
#     with a plain warning: verify it (e.g. on the file's Hugging Face page, "SHA256:") before
#     relying on results.
#
# Revisions can be overridden (e.g. once you have checked a newer commit on the Hub):
#   QK_GPT2_REV, QK_V5_REV, QK_JB_REV.  --base-url (or QK_HF_BASE) replaces https://huggingface.co
#   (a mirror; the offline test uses a local server).
set -euo pipefail

# ---- pinned revisions ----------------------------------------------------------------------------
# openai-community/gpt2 @ 607a30d7...: the snapshot every source below pins, with the
# model.safetensors hash (several independent public projects agree on both).
GPT2_REPO=openai-community/gpt2
GPT2_REV=${QK_GPT2_REV:-607a30d783dfa663caf39e06633721c8d4cfcd7e}
# jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs @ 21df74db...: the only commit of this repo found
# pinned in public code (for layer 5).  NOT verified to postdate the layer-8 fix (the first upload
# of v5_32k_layer_8.pt held layer 9's SAE): the script checks what it can after downloading
# (layer 8's weights must differ from layer 9's; every cfg.json must name its own hook).
V5_REPO=jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs
V5_REV=${QK_V5_REV:-21df74db7b9f690cd2403a20485cf75f46330d0d}
# jbloom/GPT2-Small-SAEs-Reformatted @ 57d08a4f...: pinned by several public projects.
JB_REPO=jbloom/GPT2-Small-SAEs-Reformatted
JB_REV=${QK_JB_REV:-57d08a4fd333fbf18caf3fbea63ceeb88e2f50d9}

# ---- the file table: GROUP REPO REV PATH-IN-REPO DEST-RELATIVE SHA256 ('-': none pinned) --------
files() {
    local g=gpt2/
    # vocab.json / merges.txt: the hashes also equal those of shared/data/gpt2/encoder.json and
    # vocab.bpe (checked in this project), the same files under their OpenAI names.
    echo "gpt2 $GPT2_REPO $GPT2_REV vocab.json ${g}vocab.json 196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
    echo "gpt2 $GPT2_REPO $GPT2_REV merges.txt ${g}merges.txt 1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
    echo "gpt2 $GPT2_REPO $GPT2_REV config.json ${g}config.json 0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4"
    echo "gpt2 $GPT2_REPO $GPT2_REV model.safetensors ${g}model.safetensors 248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"
    local d=blocks.0.hook_resid_pre
    echo "jb $JB_REPO $JB_REV $d/cfg.json gpt2-small-res-jb/$d/cfg.json -"
    echo "jb $JB_REPO $JB_REV $d/sae_weights.safetensors gpt2-small-res-jb/$d/sae_weights.safetensors -"
    for l in 0 1 2 3 4 5 6 7 8 9 10 11; do
        d=v5_32k_layer_$l.pt
        echo "v5 $V5_REPO $V5_REV $d/cfg.json gpt2-small-resid-post-v5-32k/$d/cfg.json -"
        echo "v5 $V5_REPO $V5_REV $d/sae_weights.safetensors gpt2-small-resid-post-v5-32k/$d/sae_weights.safetensors -"
    done
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

DEST=models
BASE=${QK_HF_BASE:-https://huggingface.co}
ONLY=gpt2,v5,jb
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
    --dest) DEST=${2:?--dest needs a folder}; shift 2 ;;
    --dest=*) DEST=${1#*=}; shift ;;
    --base-url) BASE=${2:?--base-url needs a URL}; shift 2 ;;
    --base-url=*) BASE=${1#*=}; shift ;;
    --only) ONLY=${2:?--only needs groups}; shift 2 ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --dry-run|-n) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "download_gpt2.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
BASE=${BASE%/}
for g in ${ONLY//,/ }; do
    case "$g" in gpt2|v5|jb) ;; *) echo "download_gpt2.sh: --only: unknown group '$g' (gpt2, v5, jb)" >&2; exit 2 ;; esac
done
wanted() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

die() { echo "download_gpt2.sh: ERROR: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ "$DRY" = 1 ]; then
    echo "dry run: would download into $DEST/ (nothing is fetched or written)"
    files | while read -r group repo rev path rel want; do
        wanted "$group" || continue
        if [ "$want" = - ]; then w="no pinned SHA-256"; else w="sha256 $want"; fi
        printf '  %s/%s/resolve/%s/%s\n      -> %s/%s  (%s)\n' "$BASE" "$repo" "$rev" "$path" "$DEST" "$rel" "$w"
    done
    exit 0
fi

command -v curl >/dev/null || die "curl not found"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"
mkdir -p "$DEST"
MANIFEST="$DEST/SHA256SUMS.download"
UNPINNED=()
declare -A GOT  # dest-relative path -> sha256

# fetch GROUP REPO REV PATH REL WANT: one file, .part then rename.
fetch() {
    local repo=$2 rev=$3 path=$4 rel=$5 want=$6
    local out="$DEST/$rel" url="$BASE/$repo/resolve/$rev/$path" got
    mkdir -p "$(dirname "$out")"
    if [ -e "$out" ]; then
        got=$(sha "$out")
        if [ "$want" != - ] && [ "$got" != "$want" ]; then
            die "$out is present but its SHA-256 is $got, not the pinned $want ($repo@$rev/$path); delete it and run again"
        fi
        echo "present  $out"
    else
        echo "get      $url"
        rm -f "$out.part"
        if ! curl -fL --retry 3 --retry-delay 2 --connect-timeout 30 -sS -o "$out.part" "$url"; then
            rm -f "$out.part"
            die "download failed: $url (nothing written to $out)"
        fi
        got=$(sha "$out.part")
        if [ "$want" != - ] && [ "$got" != "$want" ]; then
            rm -f "$out.part"
            die "SHA-256 mismatch for $out ($repo@$rev/$path): expected $want, got $got; the download was deleted"
        fi
        mv -f "$out.part" "$out"
    fi
    if [ "$want" = - ]; then
        echo "WARNING: no pinned SHA-256 for $repo@$rev/$path; computed: $got; verify it before relying on results" >&2
        UNPINNED+=("$rel")
    else
        echo "ok       $out  sha256 $got (matches the pinned value)"
    fi
    GOT[$rel]=$got
    printf '%s  %s  %s@%s/%s\n' "$got" "$rel" "$repo" "$rev" "$path" >>"$MANIFEST.tmp"
}

: >"$MANIFEST.tmp"
while read -r group repo rev path rel want; do
    wanted "$group" || continue
    fetch "$group" "$repo" "$rev" "$path" "$rel" "$want"
done < <(files)

# ---- checks that catch a mislabelled SAE ------------------------------------------------------------
# cfg.json must name the hook the folder stands for (SAELens 6 configs: hook_name; older: hook_point).
hook_of() { grep -oE '"hook_(name|point)"[[:space:]]*:[[:space:]]*"[^"]*"' "$1" | head -1 | sed 's/.*"\([^"]*\)"$/\1/'; }
check_hook() {  # FILE EXPECTED
    local h
    h=$(hook_of "$1")
    if [ -z "$h" ]; then
        echo "WARNING: $1 names no hook (hook_name / hook_point); qkscope will not be able to check it either" >&2
    elif [ "$h" != "$2" ]; then
        die "$1 says its SAE was trained on '$h', not on '$2': wrong file at this revision"
    fi
}
if wanted v5; then
    for l in 0 1 2 3 4 5 6 7 8 9 10 11; do
        check_hook "$DEST/gpt2-small-resid-post-v5-32k/v5_32k_layer_$l.pt/cfg.json" "blocks.$l.hook_resid_post"
    done
    # SPEC §3: the first upload of layer 8 held layer 9's SAE.  Identical weights betray it.
    w8=${GOT[gpt2-small-resid-post-v5-32k/v5_32k_layer_8.pt/sae_weights.safetensors]}
    w9=${GOT[gpt2-small-resid-post-v5-32k/v5_32k_layer_9.pt/sae_weights.safetensors]}
    if [ "$w8" = "$w9" ]; then
        die "v5_32k_layer_8.pt and v5_32k_layer_9.pt hold the same weights (sha256 $w8): revision $V5_REV has the known layer-8 mix-up; set QK_V5_REV to a later commit"
    fi
fi
if wanted jb; then
    check_hook "$DEST/gpt2-small-res-jb/blocks.0.hook_resid_pre/cfg.json" "blocks.0.hook_resid_pre"
fi
mv -f "$MANIFEST.tmp" "$MANIFEST"

echo "done: $DEST/ (computed hashes in $MANIFEST)"
if [ ${#UNPINNED[@]} -gt 0 ]; then
    echo "WARNING: ${#UNPINNED[@]} file(s) have no pinned SHA-256 (listed above and in $MANIFEST):" >&2
    echo "         compare them with the values shown on their Hugging Face file pages before relying on results." >&2
fi
