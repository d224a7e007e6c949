"""The ``-fsanitize=address,undefined`` build of ncd._hotpath, for tests.

``NCD_SANITIZE=1 python ncd/_build/hotpath_build.py`` builds into build/sanitize/;
a process loads it with ``NCD_HOTPATH_SO`` pointing at it and libasan preloaded
(Python itself is not instrumented). Any out-of-bounds access or undefined
behaviour aborts that process.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.buildlock import once_per_run
from tests.needs import require_writable

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "ncd" / "_build" / "hotpath_build.py"


def libasan() -> str | None:
    out = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


def _compile() -> None:
    subprocess.run(
        [sys.executable, str(BUILDER)],
        cwd=ROOT,
        env=dict(os.environ, NCD_SANITIZE="1"),
        check=True,
        capture_output=True,
    )


@functools.cache
def _build() -> str:
    once_per_run("sanitize", _compile)
    found = sorted((ROOT / "build" / "sanitize" / "ncd").glob("_hotpath*.so"))
    assert found, "sanitized build produced no module"
    return str(found[0])


def sanitized_env() -> dict[str, str]:
    """Environment additions that make a child process use the sanitized build
    (built once per test run, tests/buildlock.py); skips the test when libasan is missing."""
    asan = libasan()
    if asan is None:
        pytest.skip("libasan not installed")
    require_writable()  # the sanitized build goes to build/sanitize in the checkout
    return {
        "NCD_HOTPATH_SO": _build(),
        "LD_PRELOAD": asan,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }


def run_sanitized(args: list[str], cwd: Path, *, timeout: float = 900, **extra: str) -> str:
    """``pytest args`` (one process, output not captured) in a subprocess against the
    sanitized build, with ``extra`` in its environment: it must pass with no ASan or
    UBSan report. Returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "NCD_SANITIZE"}
    env.update(sanitized_env())
    env.update(extra)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-n", "0", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    reports = [
        ln
        for ln in proc.stderr.splitlines()
        if "SUMMARY:" in ln or "ERROR: AddressSanitizer" in ln or "runtime error" in ln
    ]
    tail = "\n".join(reports) + "\n" + proc.stdout[-2000:] + proc.stderr[-1000:]
    assert proc.returncode == 0, tail
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, tail
    assert " passed" in proc.stdout, tail
    return proc.stdout


def run_pytest_sanitized(test_files: list[str], cwd: Path) -> None:
    """Run tests/vchan/<test_files> in a subprocess against the sanitized build."""
    run_sanitized([str(ROOT / "tests" / "vchan" / f) for f in test_files], cwd, timeout=600)
