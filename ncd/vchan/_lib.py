"""Loads ``ncd._hotpath`` (the vchan + pump C extension).

``NCD_HOTPATH_SO=/path/to/_hotpath.so`` loads that build instead (e.g. the
``NCD_SANITIZE=1`` build in ``build/sanitize/``), for sanitizer runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any


def _load() -> Any:
    override = os.environ.get("NCD_HOTPATH_SO")
    if override:
        spec = importlib.util.spec_from_file_location("ncd._hotpath", override)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load NCD_HOTPATH_SO={override}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["ncd._hotpath"] = mod
        spec.loader.exec_module(mod)
        return mod
    try:
        import ncd._hotpath as mod
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise ImportError(
            "ncd._hotpath is not built: run `python ncd/_build/hotpath_build.py` "
            "(or `pip install -e .`)"
        ) from exc
    return mod


_mod = _load()
ffi: Any = _mod.ffi
lib: Any = _mod.lib

__all__ = ["ffi", "lib"]
