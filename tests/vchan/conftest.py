"""Fixtures shared by the in-process vchan tests."""

from collections.abc import Iterator

import pytest

from ncd.vchan import local_pair
from ncd.vchan.channel import VchanClient, VchanServer


@pytest.fixture
def pair() -> Iterator[tuple[VchanServer, VchanClient]]:
    """An in-memory vchan pair: the server reads 4 KiB, writes 8 KiB rings."""
    srv, cli = local_pair(4096, 8192)
    yield srv, cli
    cli.close()
    srv.close()
