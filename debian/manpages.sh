#!/bin/sh
# Manual pages of the built programs with help2man (each program runs with Debian's
# python3 and the package's modules: a check that they start at all).
# Usage: debian/manpages.sh SITE BINDIR MANDIR VERSION
set -eu
SITE=$1 BIN=$2 MAN=$3 VERSION=$4
export PYTHONPATH="$SITE"
cd /
mkdir -p "$MAN"
h2m() { help2man --no-info --no-discard-stderr --version-string="$VERSION" "$@"; }
# ncd's roles have their own options: add both help texts to its page
{
    echo '[ROLES]'
    for role in backend frontend; do
        echo ".SS ncd $role"
        echo '.nf'
        "$BIN/ncd" "$role" --help | sed -e 's/\\/\\e/g' -e "s/^[.']/\\\\\\&&/"
        echo '.fi'
    done
    echo '[FILES]'
    echo '.TP'
    echo '.I /etc/ncd/ncd.toml'
    echo 'The configuration: every key, commented out, with its default; flags override it.'
} >"$MAN/ncd.h2m"
h2m --section=8 --name='network channel daemon for Xen (backend or frontend)' \
    --include="$MAN/ncd.h2m" -o "$MAN/ncd.8" "$BIN/ncd"
h2m --section=8 --name='attach, detach and list ncd virtual interfaces' \
    -o "$MAN/ncctl.8" "$BIN/ncctl"
h2m --section=1 --name='relay stdin/stdout over a Xen vchan' \
    -o "$MAN/ncd-vchan.1" "$BIN/ncd-vchan"
rm "$MAN/ncd.h2m"
