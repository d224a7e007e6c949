#!/usr/bin/env bash
# One-time setup on a Debian 12 machine (run as root): Debian packages, then a
# virtualenv in .venv with ncd and the xensim simulator built and installed (editable)
# with the test tools, the Debian packaging tools and promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    # Xen's real libraries and tools: the peers ncd must interoperate with
    libxen-dev xenstore-utils xen-utils-4.17
    # networking used by the simulator, the tests and the benchmarks
    iproute2 iperf3 socat iputils-ping util-linux
    # Open vSwitch (tests/e2e/test_ovs.py: its userspace datapath, private daemons) and
    # systemd (tests/packaging/test_systemd_real.py boots it in namespaces of its own)
    openvswitch-switch systemd
    # building the C parts
    gcc make pkg-config libffi-dev python3-dev python3-venv
    # fuzzing (scripts/fuzz.sh, tests/fuzz): libFuzzer comes with clang
    clang
)
need=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# xensim (the simulator: a development tool, its own distribution, never in ncd's
# package) and ncd itself, both editable, with the test tools and bench/run's plotting
# (matplotlib).
.venv/bin/python -m pip install -q -e ./xensim -e '.[test,bench]'

# The Debian package's tools (tests/packaging builds the .deb): dpkg-dev, lintian and
# the Build-Depends of debian/control, through the build script itself.
./scripts/build-deb.sh --build-deps-only

# promtool (`promtool check metrics` on a live scrape, tests/e2e/test_traffic.py): only
# the binary, from Debian's prometheus package. Installing that package would pull
# 96 MB, a dozen JavaScript packages and a Prometheus server service; promtool itself
# is one static binary (48 MB), extracted into .venv/bin.
if [ ! -x .venv/bin/promtool ]; then
    echo "setup: extracting promtool from Debian's prometheus package into .venv/bin"
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # apt's _apt user downloads into it
    (cd "$tmp" && apt-get download -q prometheus >/dev/null)
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb \
        | tar -x -O ./usr/bin/promtool >"$tmp/promtool"
    install -m 0755 "$tmp/promtool" .venv/bin/promtool
    rm -rf "$tmp"
fi
echo "setup: done (.venv/bin/ncd-sim, .venv/bin/pytest, scripts/build-deb.sh)"
