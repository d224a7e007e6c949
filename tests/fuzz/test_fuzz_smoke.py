"""CI's short fuzzing run: every target of fuzz/ for 5 seconds through scripts/fuzz.sh."""

from __future__ import annotations

import pytest

from tests.fuzz.conftest import ALL_TARGETS, need_atheris, need_clang, run_fuzz_sh

# scripts/fuzz.sh builds and keeps its scratch corpus in build/fuzz: one worker at a time
pytestmark = pytest.mark.xdist_group("build-fuzz")


def test_fuzz_smoke() -> None:
    need_clang()
    need_atheris()
    r = run_fuzz_sh(5)
    assert r.crashes == 0, r.output
    assert r.returncode == 0, r.output
    assert r.targets == len(ALL_TARGETS), r.output
    assert r.runs > 0, r.output
