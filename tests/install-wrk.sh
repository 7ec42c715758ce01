#!/usr/bin/env bash
# wrk (Debian's package), which `booking bench` drives, installed with apt-get when missing.
# `.ci/run` runs this before the tests, and tests/test_capacity_model.py runs it when it finds
# no wrk, so `.venv/bin/pytest` alone works on a fresh Debian machine (as root, or with sudo).
set -euo pipefail
command -v wrk >/dev/null && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "Installing wrk with apt-get for the bench tests ..." >&2
apt_install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Use-Pty=0 wrk >/dev/null
}
apt_install || { $sudo apt-get update -qq >/dev/null && apt_install; }
