#!/bin/sh
# Make sure a Chromium for the browser test (tests/test_browser.py) is at /usr/bin/chromium.
# Uses Debian's `chromium` package; never downloads Playwright's own browsers.
# Exits 0 when Chromium is present afterwards, non-zero (with a message) when it could not be installed;
# the browser test then skips with that reason instead of failing.
set -u
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser_setup: $CHROMIUM missing and apt-get not available" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "browser_setup: $CHROMIUM missing; installing it needs root (apt-get install chromium)" >&2
        exit 1
    fi
fi
echo "browser_setup: installing Debian's chromium (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
APT="$SUDO apt-get -q -o DPkg::Lock::Timeout=120"
$APT update >&2 || { echo "browser_setup: apt-get update failed" >&2; exit 1; }
$APT install -y --no-install-recommends chromium >&2 \
    || { echo "browser_setup: apt-get install chromium failed" >&2; exit 1; }
# With no font at all the page (and the screenshot) shows boxes instead of text: add one small font.
if [ -z "$(fc-list 2>/dev/null | head -n 1)" ]; then
    $APT install -y --no-install-recommends fonts-dejavu-core >&2 || true
fi
if [ -x "$CHROMIUM" ]; then
    "$CHROMIUM" --version >&2 || true
    exit 0
fi
echo "browser_setup: chromium installed but $CHROMIUM not found" >&2
exit 1
