#!/usr/bin/env bash
# Build ncd's Debian package with Debian's own tooling (debhelper, dh-python/pybuild
# with the pyproject plugin, dh_installsystemd): dist/ncd_<version>_<arch>.deb.
#
# The build runs in a clean copy of the work tree (tracked and untracked, not ignored,
# files) without the simulator (xensim/, cext/xensim/): it never enters the package.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
    cat <<'EOF'
usage: scripts/build-deb.sh [--outdir DIR] [--no-lintian] [--build-deps-only] [-h]

Builds dist/ncd_<version>_<arch>.deb from debian/ (dpkg-buildpackage -b), installing
the Build-Depends of debian/control first when some are missing (apt-get build-dep:
needs root), then runs lintian on the .deb (fails on errors; warnings are printed).

  --outdir DIR       write the .deb (and its .buildinfo/.changes) to DIR (default: dist)
  --no-lintian       skip the lintian check
  --build-deps-only  only install the missing Build-Depends (and lintian), build nothing
  -h, --help         show this help and exit
EOF
}

OUTDIR=$ROOT/dist
LINTIAN=1
DEPS_ONLY=0
while [ $# -gt 0 ]; do
    case $1 in
        --outdir) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUTDIR=$2; shift 2 ;;
        --outdir=*) OUTDIR=${1#--outdir=}; shift ;;
        --no-lintian) LINTIAN=0; shift ;;
        --build-deps-only) DEPS_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-deb: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "build-deb: missing Debian packages ($*); run as root or install them" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; }
}

# dpkg-dev (dpkg-checkbuilddeps, dpkg-buildpackage) first, then what debian/control
# lists, through apt's own build-dep on this source tree
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
tools=()
for p in dpkg-dev fakeroot; do installed "$p" || tools+=("$p"); done
if [ "$LINTIAN" = 1 ] || [ "$DEPS_ONLY" = 1 ]; then installed lintian || tools+=(lintian); fi
[ ${#tools[@]} -eq 0 ] || apt_install "${tools[@]}"
if ! dpkg-checkbuilddeps debian/control 2>/dev/null; then
    [ "$(id -u)" -eq 0 ] || { dpkg-checkbuilddeps debian/control; exit 1; }
    echo "build-deb: installing the Build-Depends of debian/control"
    export DEBIAN_FRONTEND=noninteractive
    apt-get build-dep -y -q --no-install-recommends "$ROOT" \
        || { apt-get update -q && apt-get build-dep -y -q --no-install-recommends "$ROOT"; }
fi
[ "$DEPS_ONLY" = 0 ] || exit 0

VERSION=$(dpkg-parsechangelog -l debian/changelog -S Version)
PYVERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)
if [ "$VERSION" != "$PYVERSION" ]; then
    echo "build-deb: debian/changelog says $VERSION, pyproject.toml $PYVERSION" >&2
    exit 1
fi
ARCH=$(dpkg --print-architecture)
DEB=ncd_${VERSION}_${ARCH}.deb

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ncd-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/ncd-$VERSION
mkdir -p "$SRC"
# the work tree as git sees it (uncommitted edits included), minus the simulator;
# outside a git checkout, the tree minus the simulator and what .gitignore names
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard
else
    find . \( -name .git -o -name .venv -o -name build -o -name dist -o -name '*.egg-info' \
        -o -name __pycache__ -o -name '.*_cache' -o -name lab-out \) -prune -o \
        \( -type f -o -type l \) ! -name '*.so' ! -name '*.so.*' ! -name '*.o' -print0 \
        | sed -z 's|^\./||'
fi | grep -zv -e '^xensim/' -e '^cext/xensim/' \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar -c --null -T - -f - | tar -x -C "$SRC" -f -

# no -dbgsym package: nothing here would ship it
export DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:+$DEB_BUILD_OPTIONS }noddebs"
echo "build-deb: building $DEB in $SRC"
# Debian's python3 and nothing else: a clean environment (no venv, pyenv, PYTHONPATH)
(cd "$SRC" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$WORK" LC_ALL=C.UTF-8 \
    TMPDIR="$WORK" DEB_BUILD_OPTIONS="$DEB_BUILD_OPTIONS" \
    dpkg-buildpackage -b -us -uc --no-sign) >"$WORK/build.log" 2>&1 || {
    tail -n 60 "$WORK/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (last lines above)" >&2
    exit 1
}

mkdir -p "$OUTDIR"
for f in "$WORK"/ncd_"$VERSION"_*; do
    case $f in *.deb|*.buildinfo|*.changes) mv -f "$f" "$OUTDIR"/ ;; esac
done
[ -f "$OUTDIR/$DEB" ] || { echo "build-deb: $DEB was not built" >&2; exit 1; }
echo "build-deb: built $OUTDIR/$DEB"

if [ "$LINTIAN" = 1 ]; then
    echo "build-deb: lintian $DEB"
    lintian --fail-on error --tag-display-limit 0 "$OUTDIR/$DEB"
fi
