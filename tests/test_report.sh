#!/usr/bin/env bash
# tests/test_report.sh RUN.h5 STATIC.h5 OUT_DIR HEAD...: `qkscope report` on a run, rendered in
# headless Chromium (Debian's chromium; scripts/install-deps.sh).  Fails on a blank page, any
# console message (the page has no script: anything logged is an error), or a missing section
# (metrics, heads, head-L.H for every HEAD given, grids, pairs, marked example contexts).  The
# checker is first run on two broken pages and must reject both, so the test can fail.
# Without chromium: SKIP, saying so.  QKSCOPE: the binary (default bin/qkscope).
set -euo pipefail
run=$1 static=$2 out=$3
shift 3
heads=("$@")
qk=${QKSCOPE:-bin/qkscope}
mkdir -p "$out"
"$qk" report "$run" "$static" -o "$out/report.html" > /dev/null
grep -q '<section id="metrics">' "$out/report.html" || { echo "FAIL: report.html has no metrics section"; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "SKIP: no chromium (scripts/install-deps.sh installs it): report.html written, not rendered"
    exit 0
fi

# check PAGE: renders PAGE, prints why it is bad (exit 1) or nothing.
check() {
    local page=$1 dom=$out/dom.html log=$out/console.log
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu --enable-logging=stderr --v=0 \
        --dump-dom "file://$(realpath "$page")" > "$dom" 2> "$log" || { echo "chromium failed on $page"; return 1; }
    if grep -q 'CONSOLE' "$log"; then echo "console: $(grep 'CONSOLE' "$log" | head -1)"; return 1; fi
    local text
    text=$(sed -e 's/<[^>]*>//g' "$dom" | tr -s ' \n' | wc -c)
    [ "$text" -ge 2000 ] || { echo "blank page: $text characters of text"; return 1; }
    local want=('id="metrics"' 'id="heads"' '<svg' '<table class="pairs">' '<mark class="q">' '<mark class="k">' 'class="ctx"')
    for h in "${heads[@]}"; do want+=("id=\"head-$h\""); done
    for w in "${want[@]}"; do
        grep -qF "$w" "$dom" || { echo "missing: $w"; return 1; }
    done
    [ "$(grep -o '<svg' "$dom" | wc -l)" -ge 10 ] || { echo "missing: the 10 metric grids"; return 1; }
}

# The checker must reject a page with a script error and a page without a head's section.
sed 's|</body>|<script>undefinedFunction()</script></body>|' "$out/report.html" > "$out/bad-console.html"
sed "s|id=\"head-${heads[0]}\"|id=\"gone\"|" "$out/report.html" > "$out/bad-section.html"
for bad in bad-console bad-section; do
    if why=$(check "$out/$bad.html"); then echo "FAIL: the checker accepted $bad.html"; exit 1; fi
    echo "  checker rejects $bad.html ($why)"
done
if ! why=$(check "$out/report.html"); then echo "FAIL: report.html: $why"; exit 1; fi
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2200 \
    --screenshot="$(realpath "$out")/report.png" "file://$(realpath "$out/report.html")" 2> /dev/null
[ "$(stat -c %s "$out/report.png")" -gt 20000 ] || { echo "FAIL: the screenshot is (nearly) blank"; exit 1; }
echo "ok   report: $out/report.html renders (sections, ${#heads[@]} heads, no console message); screenshot $out/report.png"
