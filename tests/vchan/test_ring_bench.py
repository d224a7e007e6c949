"""bench/ring_bench.c on xensim: frames cross one ring intact in both implementations.

Small counts, no timing asserted: this keeps the benchmark honest (it moves and checks
what it claims) and catches a change in the C sources that breaks it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.simworld import SimWorld

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ring", ROOT / "bench" / "bench_ring.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


bench = _load()


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench.build(tmp_path_factory.mktemp("ringbench"))


@pytest.fixture(scope="module")
def doms(sim_module: SimWorld, exe: Path) -> Iterator[object]:
    yield bench.Domains(sim_module.world, exe)


SIZES = [(64, 20_000), (1500, 5_000), (65536, 300)]


@pytest.mark.parametrize("ring", [128 * 1024, 1 << 20])
@pytest.mark.parametrize("frame,n", SIZES)
@pytest.mark.parametrize("spin", [0, 50])
def test_ncd_frames_cross(doms, ring: int, frame: int, n: int, spin: int) -> None:
    run = doms.ncd(ring, n, frame, spin, pin=True)
    assert run.frames == n
    # content checked on frame 0, every 1024th and the last one
    assert run.checked == (n - 1) // 1024 + 1 + (1 if (n - 1) % 1024 else 0)
    assert run.seconds > 0


@pytest.mark.parametrize("frame,n", SIZES)
def test_libxenvchan_frames_cross(doms, frame: int, n: int) -> None:
    run = doms.libxenvchan(1 << 20, n, frame, pin=True)
    assert run.frames == n
    assert run.checked >= 2


@pytest.mark.parametrize("mode", ["raw", "memcpy"])
def test_local_modes(exe: Path, mode: str) -> None:
    run = bench.local(exe, mode, 1 << 20, 2000, 1500)
    assert run.frames == 2000
    assert run.checked >= 1


def test_mismatched_records_are_caught(doms) -> None:
    """The consumer validates every record: a producer sending other lengths fails it."""
    with pytest.raises(RuntimeError, match="client failed"):
        doms.run_pair(["ncd-server", "2", str(1 << 20), "100", "1500", "0", "-1"],
                      ["ncd-client", "1", "{0}", "{1}", "100", "1000", "0", "-1"], 2)
