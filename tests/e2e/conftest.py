from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net


@pytest.fixture
def net(sim, tmp_path) -> Iterator[Net]:
    """Daemons and helpers on a fresh xensim world for one test (modules that share
    one world for all their tests override this with a module-scoped `net`)."""
    n = Net(sim, tmp_path)
    try:
        yield n
    finally:
        n.close()
