"""Fixtures for the switch tests: a switch and guests on local vchan pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ncd.switch import Switch

from .helpers import Guest


@pytest.fixture
def switch() -> Iterator[Callable[..., Switch]]:
    made: list[Switch] = []

    def make(**kw: object) -> Switch:
        sw = Switch(**kw)  # type: ignore[arg-type]
        made.append(sw)
        return sw

    yield make
    for sw in made:
        sw.close()


@pytest.fixture
def guests() -> Iterator[Callable[..., Guest]]:
    made: list[Guest] = []

    def make(sw: Switch, domid: int, **kw: object) -> Guest:
        g = Guest(sw, domid, **kw)  # type: ignore[arg-type]
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()
