#!/usr/bin/env bash
# HAProxy (Debian's package), which the cluster rehearsal (`python -m loadtest.cluster`) puts in
# front of its app processes, installed with apt-get when missing. tests/test_cluster_rehearsal.py
# runs this when it finds no haproxy, so `.venv/bin/pytest` alone works on a fresh Debian machine
# (as root, or with sudo). The package's own service is not started here: the rehearsal runs a
# haproxy of its own on a free port.
set -euo pipefail
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "Installing haproxy with apt-get for the cluster rehearsal ..." >&2
apt_install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Use-Pty=0 haproxy >/dev/null
}
apt_install || { $sudo apt-get update -qq >/dev/null && apt_install; }
