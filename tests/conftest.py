"""Fixtures shared by the whole suite, and how it runs in parallel.

The suite runs on pytest-xdist (pyproject.toml's addopts: ``-n auto --dist loadgroup``):
it mostly waits on daemons, worlds and subprocesses, so a few workers share the CPUs.
Every world, namespace and TAP a test makes is named after its process (the worker),
its files live under its own tmp_path; what is shared is a build in the checkout, made
once per run under a lock (tests/buildlock.py). Tests of one file run on one worker (a
module's world is made once); ``@pytest.mark.xdist_group(NAME)`` puts files that share
something else on one worker too. ``-n 0`` runs everything in this process.
"""

from __future__ import annotations

import os
import shutil
import uuid
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


# ---- parallel runs (pytest-xdist) ---------------------------------------------------------
MAX_WORKERS = 3  # the suite's processes mostly sleep; more than this and they contend


def pytest_configure(config: pytest.Config) -> None:
    # one id for the whole run, the controller's, inherited by its workers and by the
    # processes tests start (tests/buildlock.py: what was built in this run)
    os.environ.setdefault("NCD_TEST_RUN", uuid.uuid4().hex)


def _one_file(config: pytest.Config) -> bool:
    """Whether the command line names a single test file (or tests within one)."""
    files = {a.split("::", 1)[0] for a in config.args}
    return len(files) == 1 and Path(next(iter(files))).is_file()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto``: none for one file (no start-up cost), else one more than
    this machine's CPUs, at most MAX_WORKERS; PYTEST_XDIST_AUTO_NUM_WORKERS overrides."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    if _one_file(config):
        return 0
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)) + 1)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadgroup`` by file: a file's tests stay on one worker (its module-scoped
    worlds are made once), and so do all tests of one ``xdist_group``."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FileGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = super()._split_scope(nodeid)
            return group if group != nodeid else nodeid.split("::", 1)[0]

    return FileGroupScheduling(config, log)
