#!/usr/bin/env bash
# What the cluster fault tests (tests/it/cluster/) need beyond the Rust toolchain: etcd
# (3.4 or later: each test runs a three-member etcd cluster), iptables (partitions are
# rules inside a host's network namespace), iproute2 (`ip netns`, veths, a bridge) and
# HAProxy (examples/haproxy.cfg runs in front of a test cluster).
# Installs with apt-get only what is missing; quiet, and a no-op when all is there.
#
#   tests/cluster/install.sh
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)

if ((${#missing[@]})); then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "tests/cluster/install.sh: need root (or sudo) to install ${missing[*]}" >&2
            exit 1
        }
        sudo=(sudo -E)
    fi
    echo "tests/cluster/install.sh: installing ${missing[*]}"
    "${sudo[@]}" apt-get -qq update
    "${sudo[@]}" apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
    # The package may start a system etcd on 127.0.0.1:2379; the tests run their own
    # members on private addresses and need none.
    # Likewise HAProxy's service, with its own configuration.
    if command -v systemctl >/dev/null 2>&1; then
        for unit in etcd haproxy; do
            "${sudo[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
        done
    fi
fi

# etcd 3.3 lacks flags the harness passes (--pre-vote): say so here rather than in a
# failed test's etcd log.
version=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: *//p' || true)
case "$version" in
    3.[0-3].*) echo "tests/cluster/install.sh: etcd $version is too old; the cluster tests need 3.4 or later" >&2 ;;
esac
