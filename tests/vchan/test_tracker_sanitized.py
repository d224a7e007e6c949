"""The tracker tests again, against the ``-fsanitize=address,undefined`` build of
ncd._hotpath (see sanitize.py): the in-process unit, thread and hypothesis tests, and the
xensim tests (their domain agents inherit the sanitized build through the environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .sanitize import run_pytest_sanitized


@pytest.mark.slow
@pytest.mark.parametrize("files", [["test_tracker.py"], ["test_tracker_sim.py"]],
                         ids=["unit", "xensim"])
def test_tracker_under_asan_ubsan(files: list[str], tmp_path: Path) -> None:
    run_pytest_sanitized(files, tmp_path)
