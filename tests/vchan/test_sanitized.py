"""The ring tests again, against an ``-fsanitize=address,undefined`` build of ncd._hotpath.

How: ``NCD_SANITIZE=1 python ncd/_build/hotpath_build.py`` builds into build/sanitize/;
the tests run in a subprocess with ``NCD_HOTPATH_SO`` pointing at that build and
``LD_PRELOAD`` of libasan (Python itself is not instrumented). Any out-of-bounds access
or undefined behaviour aborts the subprocess.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "ncd" / "_build" / "hotpath_build.py"


def libasan():
    out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


@pytest.mark.slow
def test_ring_tests_under_asan_ubsan(tmp_path):
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
         str(ROOT / "tests" / "vchan" / "test_ring.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    tail = (proc.stdout[-3000:] + proc.stderr[-3000:])
    assert proc.returncode == 0, tail
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, tail
    assert " passed" in proc.stdout
