#!/usr/bin/env bash
# Install the built .deb on this machine, run the installed programs with Debian's
# python3 and libraries end to end on xensim, then purge the package and check that
# nothing of it is left. Needs root, a built dist/ncd_*.deb and the repo's .venv (for
# ncd-sim, the simulator, which is no part of the package).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
    cat <<'EOF'
usage: scripts/smoke-deb.sh [--deb FILE] [--keep] [-h]

  --deb FILE  the package to test (default: the newest dist/ncd_*.deb)
  --keep      leave the package installed afterwards (default: purge it)
  -h, --help  show this help and exit
EOF
}

DEB=
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
        --deb) [ $# -ge 2 ] || { usage >&2; exit 2; }; DEB=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "smoke-deb: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$DEB" ] || DEB=$(ls -t dist/ncd_*.deb 2>/dev/null | head -n1)
[ -f "$DEB" ] || { echo "smoke-deb: no .deb (run scripts/build-deb.sh)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "smoke-deb: needs root" >&2; exit 1; }
SIM=$ROOT/.venv/bin/ncd-sim
[ -x "$SIM" ] || { echo "smoke-deb: no $SIM (run scripts/setup.sh)" >&2; exit 1; }

WORLD=$(mktemp -d /tmp/ncd-smoke.XXXXXX)
PREFIX=ncdsmk$$-
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -f "$WORLD/world.json" ] && "$SIM" down --dir "$WORLD" >/dev/null 2>&1 || true
    rm -rf "$WORLD"
    if [ "$KEEP" = 0 ] && dpkg-query -W ncd >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ncd >/dev/null
    fi
}
trap cleanup EXIT
say() { echo "smoke-deb: $*"; }
in_dom() { local d=$1; shift; "$SIM" exec --dir "$WORLD" "$d" -- "$@"; }

say "installing $DEB"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall "./${DEB#./}" >/dev/null
dpkg-query -W -f='${Package} ${Version} ${Status}\n' ncd
for cmd in "/usr/bin/ncd --help" "/usr/bin/ncd backend --help" "/usr/bin/ncd frontend --help" \
           "/usr/bin/ncctl --help" "/usr/bin/ncd-vchan --help"; do
    (cd / && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $cmd >/dev/null) || {
        say "FAILED: $cmd"; exit 1; }
    say "ok: $cmd"
done

say "xensim world in $WORLD (netns ${PREFIX}N)"
"$SIM" up --dir "$WORLD" --netns-prefix "$PREFIX" --domains 1 >/dev/null
# ncd-sim exec execs `ip netns exec`, which execs the daemon: $! is the daemon
"$SIM" exec --dir "$WORLD" 0 -- /usr/bin/ncd backend >"$WORLD/backend.log" 2>&1 &
PIDS+=($!)
"$SIM" exec --dir "$WORLD" 1 -- /usr/bin/ncd frontend >"$WORLD/frontend.log" 2>&1 &
PIDS+=($!)
in_dom 0 /usr/bin/ncctl attach 1 --mac 00:16:3e:5e:00:01
ok=0
for _ in $(seq 1 100); do
    if in_dom 0 /usr/bin/ncctl list 2>/dev/null | grep -q Connected \
        && in_dom 1 /usr/bin/ncctl list 2>/dev/null | grep -q Connected; then ok=1; break; fi
    sleep 0.2
done
[ "$ok" = 1 ] || { say "FAILED: vif not Connected"; tail -n 20 "$WORLD"/*.log; exit 1; }
say "ok: vif 1/0 Connected on both ends"
# each daemon runs Debian's python3 with the package's C extension
for p in "${PIDS[@]}"; do
    [ "$(readlink "/proc/$p/exe")" = /usr/bin/python3.11 ] \
        && grep -q /usr/lib/python3/dist-packages/ncd/_hotpath "/proc/$p/maps" \
        || { say "FAILED: pid $p does not run the package's modules"; exit 1; }
done
say "ok: the daemons run /usr/bin/python3.11 with /usr/lib/python3/dist-packages/ncd"
in_dom 0 ip addr add 198.18.0.1/24 dev ncvif1.0
in_dom 1 ip addr add 198.18.0.2/24 dev nc0
in_dom 1 ping -c 3 -i 0.2 -W 2 198.18.0.1 | grep 'packet loss'
in_dom 0 ping -c 3 -i 0.2 -W 2 -s 1472 198.18.0.2 | grep 'packet loss'
in_dom 0 /usr/bin/ncctl stats
in_dom 0 /usr/bin/python3 -c "import urllib.request; print(urllib.request.urlopen(
    'http://127.0.0.1:9477/metrics', timeout=5).read().decode())" | grep -c '^ncd_' \
    | sed 's/^/smoke-deb: metrics samples: /'
in_dom 0 /usr/bin/ncctl detach 1 0
for p in "${PIDS[@]}"; do kill -TERM "$p"; done
for p in "${PIDS[@]}"; do wait "$p" || { say "FAILED: a daemon exited non-zero"; exit 1; }; done
PIDS=()
say "ok: daemons stopped cleanly (SIGTERM, exit 0)"
"$SIM" down --dir "$WORLD" >/dev/null

if [ "$KEEP" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ncd >/dev/null
    left=$(ls -d /etc/ncd /usr/bin/ncd /usr/bin/ncctl /usr/bin/ncd-vchan \
        /lib/systemd/system/ncd-*.service /usr/lib/python3/dist-packages/ncd* \
        /usr/share/doc/ncd 2>/dev/null || true)
    [ -z "$left" ] || { say "FAILED: left after purge: $left"; exit 1; }
    say "ok: purged, nothing left"
fi
say "PASSED"
