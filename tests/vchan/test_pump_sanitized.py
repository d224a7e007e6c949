"""The pump and codec tests again, against an ``-fsanitize=address,undefined`` build of
ncd._hotpath (built by ``NCD_SANITIZE=1 python ncd/_build/hotpath_build.py`` into
build/sanitize/), in a subprocess with ``NCD_HOTPATH_SO`` pointing at it and libasan
preloaded. Any out-of-bounds access or undefined behaviour in the pump, its parser or
the fuzzed hostile streams aborts the subprocess.

By hand: ``NCD_SANITIZE=1 .venv/bin/python ncd/_build/hotpath_build.py`` then
``NCD_HOTPATH_SO=$PWD/build/sanitize/ncd/_hotpath.cpython-311-x86_64-linux-gnu.so
LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0
.venv/bin/pytest tests/vchan/test_pump_local.py tests/vchan/test_frame_codec.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "ncd" / "_build" / "hotpath_build.py"


def libasan() -> str | None:
    out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


@pytest.mark.slow
def test_pump_tests_under_asan_ubsan(tmp_path: Path) -> None:
    asan = libasan()
    if asan is None:
        pytest.skip("libasan not installed")
    env = dict(os.environ, NCD_SANITIZE="1")
    subprocess.run([sys.executable, str(BUILDER)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    found = sorted((ROOT / "build" / "sanitize" / "ncd").glob("_hotpath*.so"))
    assert found, "sanitized build produced no module"
    env = dict(os.environ)
    env.pop("NCD_SANITIZE", None)
    env.update(
        NCD_HOTPATH_SO=str(found[0]),
        LD_PRELOAD=asan,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "vchan" / "test_pump_local.py"),
         str(ROOT / "tests" / "vchan" / "test_frame_codec.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, tail
    assert " passed" in proc.stdout
