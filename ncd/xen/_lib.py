"""Loads the compiled cffi module and names the few helpers every binding needs."""

from __future__ import annotations

from typing import NoReturn

from .errors import XenError, check_errno

try:
    from ._xenlib import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "ncd.xen._xenlib is not built: run `python ncd/_build/xenlib_build.py` "
        "(or `pip install -e .`)"
    ) from exc

__all__ = ["ffi", "lib", "fail"]


def fail(call: str, err: int | None = None, cls: type[XenError] = XenError) -> NoReturn:
    """Raise ``cls`` for ``call`` with the errno of the last C call (or ``err``)."""
    raise cls(check_errno(ffi.errno if err is None else err), call)

