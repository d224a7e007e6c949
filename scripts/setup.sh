#!/usr/bin/env bash
# One-time setup on a Debian 12 machine (run as root): Debian packages, then a
# virtualenv in .venv with ncd and the xensim simulator built and installed (editable)
# with the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    # Xen's real libraries and tools: the peers ncd must interoperate with
    libxen-dev xenstore-utils xen-utils-4.17
    # networking used by the simulator, the tests and the benchmarks
    iproute2 iperf3 socat iputils-ping util-linux
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
# package) and ncd itself, both editable, with the test tools.
.venv/bin/python -m pip install -q -e ./xensim -e '.[test]'
echo "setup: done (.venv/bin/ncd-sim, .venv/bin/pytest)"
