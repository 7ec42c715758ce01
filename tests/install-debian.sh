#!/usr/bin/env bash
# Debian packages some tests drive (chromium and fonts-noto-cjk for the pages, wrk for
# `booking bench`, haproxy for the multi-host rehearsal), installed with apt-get when missing.
# `.ci/run` runs it before the tests, and the tests that need a package run it when they find
# it missing, so `.venv/bin/pytest` alone works on a fresh Debian machine (as root, or with
# sudo). A package's own service is not started by the tests (the rehearsal runs a haproxy of
# its own on a free port).
#   bash tests/install-debian.sh PACKAGE...
set -euo pipefail
missing=()
for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "Installing ${missing[*]} with apt-get for the tests ..." >&2
apt_install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
}
apt_install || { $sudo apt-get update -qq >/dev/null && apt_install; }
