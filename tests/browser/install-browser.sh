#!/usr/bin/env bash
# Debian's chromium and the CJK fonts a Chinese phone shows, installed with apt-get when
# missing (never a browser of Playwright's own). `.ci/run` runs this before the tests, and
# tests/browser/conftest.py runs it when it finds no chromium, so `.venv/bin/pytest` alone works
# on a fresh Debian machine (as root, or with sudo).
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || missing+=(fonts-noto-cjk)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "Installing ${missing[*]} with apt-get for the browser tests ..." >&2
apt_install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
}
apt_install || { $sudo apt-get update -qq >/dev/null && apt_install; }
