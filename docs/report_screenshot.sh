#!/usr/bin/env bash
# Screenshot of a selfsup report in headless Chromium (Debian: apt-get install chromium).
#   docs/report_screenshot.sh RUN_DIR OUT.png [WIDTHxHEIGHT]
# The report is opened from disk with every network request refused (--host-resolver-rules), so
# a figure that needed the network would be missing from the picture.
set -euo pipefail
run="$1"; out="$2"; size="${3:-1200,3000}"
[ -f "$run/report.html" ] || selfsup report "$run"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
  --host-resolver-rules="MAP * ~NOTFOUND" --window-size="$size" \
  --screenshot="$out" "file://$(realpath "$run")/report.html"
