"""What a test needs from the machine it runs on; skips naming what is missing.

Pure tests (codecs, the xenbus machine, config, layout, ncctl's parsing...) need none
of this and run as any user; fixtures that make network namespaces, TAPs or xensim
worlds call :func:`require_root`, builds into the checkout :func:`require_writable`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def require_root(what: str) -> None:
    """Skip the calling test or fixture unless running as root; ``what`` says why."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root ({what})")


def require_writable(path: Path = ROOT) -> None:
    """Skip unless ``path`` (by default the checkout, which in-place builds write) is writable."""
    if not os.access(path, os.W_OK):
        pytest.skip(f"needs write access to {path} (builds there)")
