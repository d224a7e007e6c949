"""Regression of the first xs_wire fuzzer finding: xenstored's permission parser
(xensim/xenstored/perms.py, ``_strtol0``) used Python's int(), which accepts what Xen's
``xs_strings_to_perms`` (C strtol) refuses -- trailing whitespace (the fuzzer's
``r0x10\\v``), underscores, non-ASCII digits, ``0x-1`` -- and refused what Xen accepts
(leading whitespace), and wrapped instead of saturating on overflow. Every case is
checked against Xen's own libxenstore."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from tests.fuzz.conftest import ROOT, need_atheris
from xensim.xenstored import perms, wire

REGRESS = ROOT / "fuzz" / "corpus" / "xs_wire" / "regress-perm-trailing-space"


class XsPermissions(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint), ("perms", ctypes.c_int)]


def libxenstore() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libxenstore.so.4")
    except OSError:
        pytest.skip("libxenstore.so.4 not installed (scripts/setup.sh installs libxen-dev)")
    lib.xs_strings_to_perms.argtypes = [
        ctypes.POINTER(XsPermissions),
        ctypes.c_uint,
        ctypes.c_char_p,
    ]
    lib.xs_strings_to_perms.restype = ctypes.c_bool
    return lib


def xen(raw: bytes) -> tuple[int, int] | None:
    out = XsPermissions()
    if not libxenstore().xs_strings_to_perms(ctypes.byref(out), 1, raw):
        return None
    return out.id, out.perms


def ours(raw: bytes) -> tuple[int, int] | None:
    try:
        p = perms.parse_one(wire.decode(raw))
    except wire.XsError as e:
        assert e.name == "EINVAL"
        return None
    return p.domid, p.flags


CASES = [
    b"r0x10\x0b",  # found by fuzz/fuzz_xs_wire.py: trailing \v accepted
    b"r5 ",
    b"r5\n",
    b"r1_0",
    b"r0x1_0",
    b"r0\xd9\xa1",
    b"r0x-1",
    b"r0x",
    b"r08",
    b"r",
    b"r ",
    b"r+",
    b"r--1",
    b"r 5",
    b"r\t7",
    b"r 0x5",
    b"r\x0b\x0c5",  # leading whitespace: Xen accepts
    b"r99999999999",
    b"r99999999999999999999",
    b"r-99999999999999999999",  # saturation
    b"r5",
    b"b0x10",
    b"n010",
    b"w+3",
    b"r-1",
    b"r0X1f",
    b"r00",
    b"r0x0",
    b"r-0x10",
]


@pytest.mark.parametrize("raw", CASES, ids=[repr(c) for c in CASES])
def test_perm_entry_parsed_like_xen(raw: bytes) -> None:
    assert ours(raw) == xen(raw)


def test_fuzzer_input_replays_cleanly() -> None:
    need_atheris()
    p = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_xs_wire.py"), str(REGRESS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
