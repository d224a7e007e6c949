from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.simworld import SimWorld


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("ncd's tests need root (network namespaces, TAP devices)")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimWorld]:
    """A fresh xensim world with dom0 + two domUs, torn down after the test."""
    w = SimWorld(tmp_path / "world", domains=2)
    try:
        yield w
    finally:
        w.down()


@pytest.fixture(scope="module")
def sim_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimWorld]:
    """One xensim world shared by a test module (dom0 + two domUs)."""
    w = SimWorld(tmp_path_factory.mktemp("world") / "w", domains=2)
    try:
        yield w
    finally:
        w.down()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
