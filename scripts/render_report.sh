#!/usr/bin/env bash
# Renders a sightline report.html in headless Chromium to a PNG screenshot (1400×3000), offline,
# with a throw-away profile. Fails when Chromium fails or writes no image; the test
# crates/report/tests/render.rs also checks the image is not blank.
#
#   scripts/render_report.sh report/report.html report.png
#
# Chromium comes from $CHROMIUM, else `chromium` / `chromium-browser` on PATH
# (Debian/Ubuntu: apt-get install -y chromium).
set -euo pipefail

html=${1:?usage: render_report.sh REPORT.html OUT.png}
out=${2:?usage: render_report.sh REPORT.html OUT.png}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$browser" ]; then
    echo "render_report.sh: chromium is not installed (apt-get install -y chromium)" >&2
    exit 2
fi
[ -f "$html" ] || { echo "render_report.sh: $html: no such file" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
page="file://$(realpath "$html")"
shot="$(realpath -m "$out")"
rm -f "$shot"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$profile" --screenshot="$shot" --window-size=1400,3000 "$page" \
    >"$profile/log" 2>&1 || { cat "$profile/log" >&2; exit 1; }
if [ ! -s "$shot" ]; then
    cat "$profile/log" >&2
    echo "render_report.sh: no screenshot written to $shot" >&2
    exit 1
fi
echo "rendered $html to $shot"
