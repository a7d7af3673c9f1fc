#!/usr/bin/env bash
# Render an evaluation report.html to a PNG with headless Chromium, to check its layout.
#
#   scripts/screenshot_report.sh REPORT_DIR_OR_HTML OUT.png [WIDTH [HEIGHT]]
#
# Installs chromium with apt-get when it is missing (needs root). Network features are
# switched off: report.html is self-contained, so a correct page renders fully offline.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 REPORT_DIR_OR_HTML OUT.png [WIDTH [HEIGHT]]" >&2
    exit 2
fi
src=$1
out=$2
width=${3:-1280}
height=${4:-2400}

if [[ -d $src ]]; then
    src=$src/report.html
fi
if [[ ! -f $src ]]; then
    echo "error: $src: no such file" >&2
    exit 1
fi

browser=""
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then
        browser=$b
        break
    fi
done
if [[ -z $browser ]]; then
    echo "chromium not found; installing it with apt-get" >&2
    apt-get install -y chromium >&2
    browser=chromium
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_src=$(cd "$(dirname "$src")" && pwd)/$(basename "$src")
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$abs_out" --window-size="$width,$height" "file://$abs_src" >&2

if [[ ! -s $abs_out ]]; then
    echo "error: $browser wrote no screenshot to $abs_out" >&2
    exit 1
fi
echo "$abs_out"
