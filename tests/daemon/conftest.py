"""Fixtures shared by the daemon-side tests."""

from __future__ import annotations

import pytest

from .memstore import MemStore


@pytest.fixture
def tree() -> MemStore:
    """An in-memory xenstore (xensim's rules) with dom0 and two domUs as the toolstack
    leaves them."""
    t = MemStore()
    for d in (0, 1, 2):
        t.add_domain(d)
    return t
