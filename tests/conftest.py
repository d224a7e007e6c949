from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.needs import require_root
from tests.simworld import SimWorld


@pytest.fixture
def netns_root() -> None:
    """For tests that make network namespaces (or TAPs) themselves."""
    require_root("network namespaces")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimWorld]:
    """A fresh xensim world with dom0 + two domUs, torn down after the test."""
    require_root("a xensim world: network namespaces")
    w = SimWorld(tmp_path / "world", domains=2)
    try:
        yield w
    finally:
        w.down()


@pytest.fixture(scope="module")
def sim_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimWorld]:
    """One xensim world shared by a test module (dom0 + two domUs)."""
    require_root("a xensim world: network namespaces")
    w = SimWorld(tmp_path_factory.mktemp("world") / "w", domains=2)
    try:
        yield w
    finally:
        w.down()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
