"""Loads the tests' cffi module ``_xenbind`` (built on first use) and the helpers the
bindings share.

The module is built into ``build/xenbind`` of the checkout (or, when the checkout is not
writable, a per-user directory under the temp dir), again when ``_build.py`` is newer;
a lock file serialises the processes (domain agents) that start together.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from ncd.xen.errors import XenError, check_errno

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = Path(__file__).with_name("_build.py")


def _build_dir() -> Path:
    build = ROOT / "build"
    if os.access(build if build.exists() else ROOT, os.W_OK):
        return build / "xenbind"
    return Path(tempfile.gettempdir()) / f"ncd-xenbind-{os.getuid()}"


def _load() -> Any:
    out = _build_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = sorted(out.glob("_xenbind*.so"))
        if not built or built[0].stat().st_mtime < BUILD_SCRIPT.stat().st_mtime:
            spec = importlib.util.spec_from_file_location("_xenbind_build", BUILD_SCRIPT)
            assert spec is not None and spec.loader is not None
            builder = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(builder)
            so = builder.ffi.compile(tmpdir=str(out), verbose=False)
            built = [Path(so)]
    spec = importlib.util.spec_from_file_location("_xenbind", built[0])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_xenbind"] = mod
    spec.loader.exec_module(mod)
    return mod


_mod = _load()
ffi: Any = _mod.ffi
lib: Any = _mod.lib

__all__ = ["ffi", "lib", "fail", "address"]


def fail(call: str, err: int | None = None, cls: type[XenError] = XenError) -> NoReturn:
    """Raise ``cls`` for ``call`` with the errno of the last C call (or ``err``)."""
    raise cls(check_errno(ffi.errno if err is None else err), call)


def address(ptr: Any) -> int:
    """Integer address of a cdata pointer."""
    return int(ffi.cast("uintptr_t", ptr))
