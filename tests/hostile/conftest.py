from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net
from tests.hostile.backend_world import Front
from tests.hostile.world import Arena


@pytest.fixture(scope="module")
def arena(sim_module, tmp_path_factory) -> Iterator[Arena]:
    """One world per module: the backend, a good guest, a hostile guest (tests.hostile.world)."""
    net = Net(sim_module, tmp_path_factory.mktemp("logs"))
    try:
        yield Arena(net)
    finally:
        net.close()


@pytest.fixture(scope="module")
def front(request, sim_module, tmp_path_factory) -> Iterator[Front]:
    """One world per module: the frontend under attack (started with the module's
    ``FRONTEND_ARGS``, if any), its good device, the hostile backend of each case
    (tests.hostile.backend_world)."""
    net = Net(sim_module, tmp_path_factory.mktemp("logs"))
    try:
        front = Front(net, *getattr(request.module, "FRONTEND_ARGS", ()))
        try:
            yield front
        finally:
            front.close()
    finally:
        net.close()
