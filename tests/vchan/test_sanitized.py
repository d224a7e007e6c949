"""The in-process ring, pump and codec tests again, against the
``-fsanitize=address,undefined`` build of ncd._hotpath (see sanitize.py).

By hand: ``NCD_SANITIZE=1 .venv/bin/python ncd/_build/hotpath_build.py`` then
``NCD_HOTPATH_SO=$PWD/build/sanitize/ncd/_hotpath.cpython-311-x86_64-linux-gnu.so
LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0
.venv/bin/pytest tests/vchan/test_ring.py tests/vchan/test_wait.py tests/vchan/test_pump_local.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .sanitize import run_pytest_sanitized


@pytest.mark.slow
@pytest.mark.parametrize("files", [
    ["test_ring.py", "test_wait.py"],
    ["test_pump_local.py", "test_frame_codec.py", "test_pump_lock.py", "test_pump_lateeoi.py"],
    ["test_vchan_state.py"],
], ids=["ring+wait", "pump+codec", "state"])
def test_under_asan_ubsan(files: list[str], tmp_path: Path) -> None:
    run_pytest_sanitized(files, tmp_path)
