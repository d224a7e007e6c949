"""Build (or reuse) the lab's boot artefacts, cached by the hash of their inputs.

Artefacts of one build, in ``CACHE/images/<key>/``::

    xen           the hypervisor, gunzipped (QEMU's multiboot loader wants the ELF)
    vmlinuz       dom0's kernel (Debian's)
    dom0.cpio.gz  dom0's initramfs: the guest rootfs + /boot/{vmlinux,domu.cpio.gz}
    manifest.json what went in (package versions, ncd's .deb, source hash)

The root filesystem holds Debian's Xen tools and libraries, busybox, bash, iperf3,
Debian's python3.11, ncd's Debian package (``scripts/build-deb.sh``: cffi extensions
linked against the real ``libxengnttab``/``libxenevtchn``/``libxenstore``) unpacked with
``dpkg-deb -x`` like every other package, with what its ``Depends`` names from Debian
(python3-uvloop, python3-pyroute2, ...), the lab agent and ``/init``. Nothing from
xensim is put on a library path.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab import packages

LAB_DIR = Path(__file__).resolve().parent
REPO = LAB_DIR.parent
GUEST_FILES = ["init.sh", "agent.py", "xsprobe.py", "tcpxfer.py"]  # shipped: /init, /lab/*.py
BUILD_INPUTS = ["images.py", "packages.py", *GUEST_FILES]  # hashed into the cache key
SOURCE_PATHS = [
    "ncd",
    "cext",
    "setup.py",
    "pyproject.toml",
    "README.md",
    "debian",
    "systemd",
    "docs/protocol.md",
    "scripts/build-deb.sh",
]
# Kernel modules the lab loads (their dependencies are added from .modinfo).
MODULES = [
    "xenfs",
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xen-netback",
    "xen-netfront",
    "bridge",
    "tun",
]
PRUNE = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/lib/xen-4.17/boot",
    "usr/share/qemu",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/xen-4.17/lib/x86_64-linux-gnu/xenfsimage",
    "usr/lib/xen-4.17/lib/python",
]
PRUNE_GLOBS = ["usr/lib/python3.11/lib-dynload/nis.*.so"]
SONAME_DIRS = [
    "usr/lib/x86_64-linux-gnu",
    "usr/lib",
    "usr/lib64",
    "usr/lib/xen-4.17/lib/x86_64-linux-gnu",
    "usr/lib/python3.11/lib-dynload",
]


def default_cache() -> Path:
    env = os.environ.get("NCD_LAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ncd-lab"


@dataclass(frozen=True)
class Images:
    dir: Path
    xen: Path
    vmlinuz: Path
    dom0_initrd: Path
    manifest: dict[str, object]


def _log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- ncd's .deb


def source_files(repo: Path = REPO) -> list[str]:
    """Tracked and untracked-but-not-ignored files the Debian package is built from."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", *SOURCE_PATHS],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(f for f in out.splitlines() if (repo / f).is_file())


def source_hash(repo: Path = REPO) -> str:
    h = hashlib.sha256()
    for f in source_files(repo):
        h.update(f.encode() + b"\0" + (repo / f).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_ncd_deb(cache: Path, repo: Path = REPO) -> Path:
    """ncd's Debian package (``scripts/build-deb.sh``: a clean copy of the source, Debian's
    python3 and build tools), cached by the hash of its sources."""
    outdir = cache / "ncd-debs" / f"ncd-{source_hash(repo)}"
    hits = sorted(outdir.glob("ncd_*.deb"))
    if hits:
        return hits[0]
    _log("building ncd's .deb (scripts/build-deb.sh)")
    with tempfile.TemporaryDirectory(prefix="ncd-lab-deb-") as tmp:
        res = subprocess.run(
            [str(repo / "scripts/build-deb.sh"), "--outdir", tmp, "--no-lintian"],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"scripts/build-deb.sh failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
            )
        deb = sorted(Path(tmp).glob("ncd_*.deb"))[0]
        outdir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(deb, outdir / deb.name)
    return outdir / deb.name


# ---------------------------------------------------------------- rootfs


def merge_usr(root: Path) -> None:
    """Debian's merged /usr: /bin, /sbin, /lib, /lib64 become links into /usr."""
    for top in ("bin", "sbin", "lib", "lib64"):
        src, dst = root / top, root / "usr" / top
        dst.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(src)
        if not src.is_symlink():
            src.symlink_to(f"usr/{top}")


def module_depends(ko: Path) -> list[str]:
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko.read_bytes())
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def install_modules(kroot: Path, root: Path) -> str:
    """Copy MODULES and their dependencies from the kernel package; depmod."""
    mods = kroot / "lib/modules"
    kver = next(mods.iterdir()).name
    index = {p.name.split(".ko")[0].replace("-", "_"): p for p in (mods / kver).rglob("*.ko*")}
    todo = [m.replace("-", "_") for m in MODULES]
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        if name not in index:
            raise RuntimeError(f"kernel {kver} has no module {name}")
        done.add(name)
        src = index[name]
        dst = root / "usr/lib/modules" / kver / src.relative_to(mods / kver)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        todo += [d.replace("-", "_") for d in module_depends(src)]
    for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (mods / kver / f).exists():
            shutil.copy2(mods / kver / f, root / "usr/lib/modules" / kver / f)
    subprocess.run(["busybox", "depmod", "-b", str(root), kver], check=True)
    return kver


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED sonames of an ELF file ([] for anything else)."""
    try:
        out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    except FileNotFoundError:  # binutils missing: the check is skipped
        return []
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out.stdout)


def check_sonames(root: Path) -> list[str]:
    """Every shared library some ELF in the image needs and the image lacks."""
    have: set[str] = set()
    for d in SONAME_DIRS:
        if (root / d).is_dir():
            have.update(p.name for p in (root / d).iterdir())
    missing: list[str] = []
    for p in root.rglob("*"):
        if p.is_symlink() or not p.is_file() or p.stat().st_size < 64:
            continue
        with p.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        if "/modules/" in str(p):
            continue
        missing += [f"{p.relative_to(root)}: {so}" for so in elf_needed(p) if so not in have]
    return missing


def extract_vmlinux(vmlinuz: Path, out: Path) -> None:
    """The guest kernel uncompressed (boots much faster under TCG than the bzImage)."""
    data = vmlinuz.read_bytes()
    i = data.find(b"\xfd7zXZ\x00")
    if i < 0:
        raise RuntimeError(f"{vmlinuz}: no xz payload")
    out.write_bytes(lzma.LZMADecompressor().decompress(data[i:]))


def write_cpio(root: Path, out: Path) -> None:
    files = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
    ).stdout
    raw = subprocess.run(
        ["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
        cwd=root,
        input=files,
        capture_output=True,
        check=True,
    ).stdout
    with gzip.open(out, "wb", compresslevel=1) as f:
        f.write(raw)


def prune(root: Path) -> None:
    for rel in PRUNE:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    for pattern in PRUNE_GLOBS:
        for p in root.glob(pattern):
            p.unlink()
    for p in list(root.rglob("__pycache__")):
        shutil.rmtree(p, ignore_errors=True)


def compile_python(root: Path) -> None:
    """Byte-compile for cp311 (Debian ships no .pyc; compiling at boot under TCG is slow)."""
    for d in ("usr/lib/python3.11", "usr/lib/python3/dist-packages", "lab"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "compileall",
                "-q",
                "-j",
                "0",
                "--invalidation-mode",
                "unchecked-hash",
                "-s",
                str(root),
                "-p",
                "/",
                str(root / d),
            ],
            check=False,
            stdout=subprocess.DEVNULL,
        )


def build_rootfs(root: Path, debs: dict[str, Path], kroot: Path, ncd_deb: Path) -> str:
    for _name, deb in sorted(debs.items()):
        packages.unpack(deb, root)
    packages.unpack(ncd_deb, root)  # /usr/bin/{ncd,ncctl,ncd-vchan}, dist-packages/ncd
    merge_usr(root)
    prune(root)
    for d in ("proc", "sys", "dev", "run", "tmp", "var/log", "var/lib", "etc/xen", "lab"):
        (root / d).mkdir(parents=True, exist_ok=True)
    py3 = root / "usr/bin/python3"
    if not py3.exists():
        py3.symlink_to("python3.11")
    kver = install_modules(kroot, root)
    shutil.copy2(LAB_DIR / "init.sh", root / "init")
    (root / "init").chmod(0o755)
    for name in GUEST_FILES[1:]:
        shutil.copy2(LAB_DIR / name, root / "lab" / name)
    compile_python(root)
    missing = check_sonames(root)
    if missing:
        raise RuntimeError("image lacks shared libraries:\n  " + "\n  ".join(missing))
    return kver


# ---------------------------------------------------------------- the build


def prune_cache(cache: Path, keep: int = 3) -> None:
    """Keep the newest ``keep`` image sets and ncd .debs (Debian's debs stay: shared)."""
    for pattern in ("images/*", "ncd-debs/ncd-*"):
        dirs = sorted(
            (p for p in cache.glob(pattern) if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in dirs[keep:]:
            shutil.rmtree(old, ignore_errors=True)


def _resolve(ncd_deb: Path) -> tuple[str, list[packages.Pkg]]:
    kernel = packages.kernel_package()
    names = packages.closure([*packages.ROOT_PACKAGES, *packages.deb_depends(ncd_deb)])
    return kernel, packages.pin([*names, kernel, packages.HYPERVISOR_PACKAGE])


def build(
    cache: Path | None = None, repo: Path = REPO, force: bool = False, _refreshed: bool = False
) -> Images:
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    ncd_deb = build_ncd_deb(cache, repo)
    try:
        kernel, pins = _resolve(ncd_deb)
    except RuntimeError as exc:  # stale or missing apt lists: refresh once
        _log(f"{exc}; running apt-get update")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        kernel, pins = _resolve(ncd_deb)
    manifest: dict[str, object] = {
        "packages": {p.name: p.version for p in pins},
        "kernel_package": kernel,
        "ncd_deb": {ncd_deb.name: _sha256_file(ncd_deb)},
        "lab": {f: _sha256_file(LAB_DIR / f) for f in BUILD_INPUTS},
    }
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    out = cache / "images" / key
    result = Images(out, out / "xen", out / "vmlinuz", out / "dom0.cpio.gz", manifest)
    if (out / "manifest.json").exists() and not force:
        _log(f"images cached: {out}")
        return result
    _log(f"building images {key}")
    try:
        debs = packages.download(pins, cache / "debs")
    except RuntimeError as exc:  # the mirror moved on since the lists were fetched
        _log(f"{exc}; running apt-get update")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        return build(cache, repo, force)
    with tempfile.TemporaryDirectory(prefix="ncd-lab-build-", dir=cache) as tmp:
        t = Path(tmp)
        kroot, hroot, root = t / "kernel", t / "hyp", t / "rootfs"
        packages.unpack(debs.pop(kernel), kroot)
        packages.unpack(debs.pop(packages.HYPERVISOR_PACKAGE), hroot)
        kver = build_rootfs(root, debs, kroot, ncd_deb)
        stage = t / "out"
        stage.mkdir()
        xen_gz = next((hroot / "boot").glob("xen-4.17*.gz"))
        with gzip.open(xen_gz, "rb") as f:
            (stage / "xen").write_bytes(f.read())
        shutil.copy2(next((kroot / "boot").glob("vmlinuz-*")), stage / "vmlinuz")
        write_cpio(root, t / "domu.cpio.gz")
        (root / "boot").mkdir(exist_ok=True)
        extract_vmlinux(stage / "vmlinuz", root / "boot/vmlinux")
        shutil.move(t / "domu.cpio.gz", root / "boot/domu.cpio.gz")
        write_cpio(root, stage / "dom0.cpio.gz")
        manifest["kernel_version"] = kver
        manifest["sizes"] = {p.name: p.stat().st_size for p in stage.iterdir()}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(stage, out)
    prune_cache(cache)
    _log(f"images built: {out} {manifest['sizes']}")
    return Images(out, out / "xen", out / "vmlinuz", out / "dom0.cpio.gz", manifest)
