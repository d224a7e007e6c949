from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.simworld import SimWorld
from tests.xen.peers import Peer


@pytest.fixture
def peer(sim_module: SimWorld) -> Iterator[Callable[[int], Peer]]:
    """``peer(domid)`` starts a Python agent as that domain; all are stopped afterwards."""
    started: list[Peer] = []

    def start(domid: int) -> Peer:
        p = Peer(sim_module, domid)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()
