"""Debian packages for the lab images: resolve, pin versions, download, unpack.

Everything in the images comes from the machine's Debian mirror through apt's own
clients (``apt-cache``, ``apt-get download``, ``dpkg -x``); nothing else is fetched.
The dependency closure is computed here (first alternative of every ``Depends`` /
``Pre-Depends``), pruned of packages an initramfs does not need (maintainer-script
tooling, the ``python3`` meta package, ...). Missing shared libraries are caught
later by :func:`lab.images.check_sonames`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Packages the images are built from (their Depends are added automatically).
XEN_PACKAGES = [
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "libxenstore4",
    "libxengnttab1",
    "libxenevtchn1",
    "libxenmisc4.17",
    "libxenhypfs1",
    "libxendevicemodel1",
    "libxentoolcore1",
    "libxentoollog1",
    "libxencall1",
    "libxenforeignmemory1",
]
PYTHON_PACKAGES = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib"]
TOOL_PACKAGES = ["busybox-static", "bash", "iperf3", "libiperf0", "libgcc-s1", "libcom-err2"]
ROOT_PACKAGES = XEN_PACKAGES + PYTHON_PACKAGES + TOOL_PACKAGES
HYPERVISOR_PACKAGE = "xen-hypervisor-4.17-amd64"
KERNEL_META = "linux-image-amd64"

# Not wanted in an initramfs: package tooling, docs, data we do not use, and
# things whose job busybox does.
EXCLUDED = {
    "debconf",
    "debconf-2.0",
    "adduser",
    "python3",
    "python3:any",
    "base-files",
    "debianutils",
    "perl-base",
    "ucf",
    "sensible-utils",
    "dpkg",
    "init-system-helpers",
    "lsb-base",
    "sysvinit-utils",
    "media-types",
    "mime-support",
    "tzdata",
    "readline-common",
    "gcc-12-base",
    "libtirpc-common",
    "iproute2",
    "bridge-utils",
    "udev",
    "xen-hypervisor-common",
    "grub-xen-host",
    "qemu-system-xen",
    "python3-xen",
    "libc-bin",
    "e2fsprogs",
    "logsave",
    "libnsl2",
    "libtirpc3",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libkeyutils1",
    "linux-base",
    "kmod",
    "initramfs-tools",
    "busybox",
    "xen-hypervisor-4.17-amd64",
    "xenstore-utils:any",
}

_DEP = re.compile(r"^\s*\|?(Pre)?Depends:\s*(\S+)")


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str

    @property
    def deb_name(self) -> str:
        # apt-get download names files name_version_arch.deb with ':' escaped as %3a
        return f"{self.name}_{self.version.replace(':', '%3a')}"


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} ... failed ({res.returncode}): {res.stderr[-2000:]}"
        )
    return res.stdout


def kernel_package() -> str:
    """The versioned kernel image package that ``linux-image-amd64`` points to."""
    for line in _run(["apt-cache", "depends", KERNEL_META]).splitlines():
        m = _DEP.match(line)
        if m and m.group(2).startswith("linux-image-6"):
            return m.group(2)
    raise RuntimeError(f"apt-cache depends {KERNEL_META}: no linux-image-6.* dependency")


def closure(roots: Iterable[str]) -> list[str]:
    """Root packages plus every (first-alternative) dependency, minus EXCLUDED."""
    seen: set[str] = set()
    todo = [r for r in roots if r not in EXCLUDED]
    while todo:
        batch = [p for p in dict.fromkeys(todo) if p not in seen]
        todo = []
        if not batch:
            break
        seen.update(batch)
        out = _run(
            [
                "apt-cache",
                "depends",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
                *batch,
            ]
        )
        after_or = False
        for line in out.splitlines():
            m = _DEP.match(line)
            if not m:
                after_or = False
                continue
            skip, after_or = after_or, line.lstrip().startswith("|")
            dep = m.group(2).split(":")[0]
            if skip or dep.startswith("<"):
                continue  # a later alternative, or a virtual package
            if dep not in EXCLUDED and dep not in seen:
                todo.append(dep)
    return sorted(seen)


def pin(names: Iterable[str]) -> list[Pkg]:
    """Candidate version of every package (what ``apt-get download`` fetches)."""
    names = list(names)
    out = _run(["apt-cache", "show", "--no-all-versions", *names])
    pkgs: list[Pkg] = []
    name = None
    for line in out.splitlines():
        if line.startswith("Package: "):
            name = line.split(None, 1)[1]
        elif line.startswith("Version: ") and name:
            pkgs.append(Pkg(name, line.split(None, 1)[1]))
            name = None
    missing = set(names) - {p.name for p in pkgs}
    if missing:
        raise RuntimeError(f"apt-cache show: no candidate for {sorted(missing)}")
    return sorted(pkgs, key=lambda p: p.name)


def download(pkgs: Iterable[Pkg], debdir: Path) -> dict[str, Path]:
    """Download what is not cached yet; returns package name -> .deb path."""
    debdir.mkdir(parents=True, exist_ok=True)
    pkgs = list(pkgs)

    def find(p: Pkg) -> Path | None:
        hits = sorted(debdir.glob(f"{p.deb_name}_*.deb"))
        return hits[0] if hits else None

    missing = [p for p in pkgs if find(p) is None]
    if missing:
        _run(["apt-get", "download", *[f"{p.name}={p.version}" for p in missing]], cwd=debdir)
    result: dict[str, Path] = {}
    for p in pkgs:
        path = find(p)
        if path is None:
            raise RuntimeError(f"apt-get download left no .deb for {p.name}={p.version}")
        result[p.name] = path
    return result


def unpack(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])


def deb_depends(deb: Path) -> list[str]:
    """The real packages a .deb's ``Depends`` names (first alternatives; virtual packages,
    such as python3-cffi-backend-api-min, left out: a real package provides them)."""
    field = _run(["dpkg-deb", "-f", str(deb), "Depends"])
    names = []
    for dep in field.split(","):
        name = dep.split("|")[0].split("(")[0].strip().split(":")[0]
        if name and name not in EXCLUDED:
            names.append(name)
    if not names:
        return []
    out = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True
    ).stdout
    real = {ln.split(None, 1)[1] for ln in out.splitlines() if ln.startswith("Package: ")}
    return sorted(n for n in dict.fromkeys(names) if n in real)
