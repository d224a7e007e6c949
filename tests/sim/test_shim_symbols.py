"""The shims export every symbol, with its version node, of Debian's Xen 4.17 libraries."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SYSLIB = Path("/usr/lib/x86_64-linux-gnu")


def _exports(lib: Path) -> set[tuple[str, str]]:
    out = subprocess.run(["objdump", "-T", str(lib)], check=True, capture_output=True, text=True)
    syms = set()
    for line in out.stdout.splitlines():
        m = re.match(r"^[0-9a-f]+ g\s+D[FO]? \S+\s+[0-9a-f]+\s+(\S+)\s+(\S+)$", line)
        if m and "*UND*" not in line:
            syms.add((m.group(1), m.group(2)))
    return syms


@pytest.mark.parametrize("name", ["libxengnttab.so.1", "libxenevtchn.so.1"])
def test_every_debian_symbol_and_version_exported(hv_shims, name):
    real = _exports(SYSLIB / name)
    shim = _exports(hv_shims / name)
    assert len(real) > 10
    missing = real - shim
    assert not missing, f"{name} lacks {sorted(missing)}"
    extra = {s for s in shim - real if not s[0].startswith("XENSIM")}
    assert not extra, f"{name} exports unexpected {sorted(extra)}"


def test_libxenctrl_subset(hv_shims):
    """Only the three calls vchan-socket-proxy makes, each as Debian's build versions it."""
    real = _exports(SYSLIB / "libxenctrl.so.4.17")
    shim = {s for s in _exports(hv_shims / "libxenctrl.so.4.17") if s[0] != s[1]}
    want = {
        ("VERS_4.17.0", "xc_interface_open"),
        ("VERS_4.17.0", "xc_interface_close"),
        ("VERS_4.17.0", "xc_domain_getinfo"),
    }
    assert want <= real
    assert shim == want
    soname = subprocess.run(
        ["objdump", "-p", str(hv_shims / "libxenctrl.so.4.17")],
        check=True, capture_output=True, text=True,
    ).stdout
    assert re.search(r"SONAME\s+libxenctrl\.so\.4\.17$", soname, re.M)


def test_program_needing_other_xc_calls_fails_to_load(hv_shims):
    """A libxenctrl user beyond the subset must not start on a half-simulated hypervisor."""
    xen_diag = Path("/usr/lib/xen-4.17/bin/xen-diag")
    if not xen_diag.exists():
        pytest.skip("xen-utils-4.17 not installed")
    r = subprocess.run(
        [str(xen_diag), "gnttab_query_size", "0"],
        env={"LD_LIBRARY_PATH": str(hv_shims)}, capture_output=True, text=True, timeout=10,
    )
    assert r.returncode == 127
    assert "symbol lookup error" in r.stderr and "undefined symbol: xc_" in r.stderr


def test_extension_has_its_own_version_node(hv_shims):
    shim = _exports(hv_shims / "libxengnttab.so.1")
    assert ("XENSIM_1.0", "xensim_grant_existing") in shim
    assert ("XENSIM_1.0", "xensim_end_grant") in shim


def test_debian_binaries_resolve_against_the_shims(hv_shims):
    env = {"LD_LIBRARY_PATH": str(hv_shims)}
    for binary in (
        "/usr/lib/x86_64-linux-gnu/libxenvchan.so.4.17",
        "/usr/lib/xen-4.17/bin/vchan-socket-proxy",
    ):
        out = subprocess.run(
            ["ldd", binary], env=env, capture_output=True, text=True, check=True
        ).stdout
        libs = ["libxengnttab.so.1", "libxenevtchn.so.1"]
        if binary.endswith("vchan-socket-proxy"):
            libs.append("libxenctrl.so.4.17")
        for lib in libs:
            line = next(x for x in out.splitlines() if lib in x)
            assert str(hv_shims) in line, line
        assert "not found" not in out and "version" not in out, out
