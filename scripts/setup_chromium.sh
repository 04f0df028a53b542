#!/usr/bin/env bash
# Installs Debian's headless Chromium for the report's browser test (tests/integration/test_report.py),
# when it is missing and this machine can: root, and apt-get present. About 2 minutes on a fresh machine.
# Anything else (not root, no apt, no network) prints one line and leaves the test to skip itself;
# LLMDISTILL_NO_CHROMIUM=1 skips this step. It never fails the caller.
set -uo pipefail
[ "${LLMDISTILL_NO_CHROMIUM:-0}" = "1" ] && exit 0
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "llmdistill: headless Chromium is not installed and cannot be installed here (needs root and apt-get):" \
    "the report's browser test will be skipped (install Debian's chromium package to run it)" >&2
  exit 0
fi
echo "llmdistill: installing Debian's chromium for the report's browser test (about 2 minutes, once)" >&2
log=$(mktemp)
if DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
   && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1; then
  rm -f "$log"
else
  echo "llmdistill: apt-get install chromium failed (log: $log): the report's browser test will be skipped" >&2
fi
exit 0
