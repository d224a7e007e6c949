"""The checked-in corpus (seeds, and the regress-* reproducers of every crash a fuzzer
found) replays cleanly through every target: `scripts/fuzz.sh 0`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.conftest import ALL_TARGETS, ROOT, need_atheris, need_clang, run_fuzz_sh

# scripts/fuzz.sh builds and keeps its scratch corpus in build/fuzz: one worker at a time
pytestmark = pytest.mark.xdist_group("build-fuzz")

CORPUS = ROOT / "fuzz" / "corpus"


def corpus_files(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file())


def test_corpus_is_small_and_present() -> None:
    for t in ALL_TARGETS:
        files = corpus_files(t)
        assert len(files) >= 5, t
        assert sum(p.stat().st_size for p in files) < 512 * 1024, t


def test_corpus_replays_cleanly() -> None:
    need_clang()
    need_atheris()
    r = run_fuzz_sh(0)
    assert r.crashes == 0 and r.returncode == 0, r.output
    assert r.targets == len(ALL_TARGETS), r.output
    assert r.runs >= sum(len(corpus_files(t)) for t in ALL_TARGETS), r.output
