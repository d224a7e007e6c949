"""Builds in the checkout that concurrent test processes share: made once per test run.

The suite's workers (pytest-xdist), and the pytest runs some tests start, use the same
builds (the sanitized hot path in build/sanitize/, xensim's shim libraries): one
process builds while the others wait on a lock, and a build already made in this run
(``NCD_TEST_RUN``, set by tests/conftest.py for the whole run) is not made again, so
nothing rewrites a library another process has loaded.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from tests.needs import ROOT

LOCK_DIR = ROOT / "build"


def once_per_run(
    name: str, build: Callable[[], None], fresh: Callable[[], bool] = lambda: False
) -> None:
    """Call ``build`` unless this run already did or ``fresh()`` says it is up to date,
    holding ``build/NAME.lock`` (every process of every run on this checkout takes it)."""
    LOCK_DIR.mkdir(exist_ok=True)
    run = os.environ.get("NCD_TEST_RUN", "")
    stamp = LOCK_DIR / f"{name}.run"
    with open(LOCK_DIR / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        built_in_this_run = bool(run) and stamp.exists() and stamp.read_text() == run
        if built_in_this_run or fresh():
            return
        build()
        stamp.write_text(run)
