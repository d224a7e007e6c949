"""The vchan's xenstore entry: ``<path>/ring-ref`` and ``<path>/event-channel``.

Written by the server as libxenvchan 4.17 does (one transaction; each key owned by
the server with no access for others and read access for the peer), removed on
close. Read by the client, where both values are untrusted input from the peer.
"""

from __future__ import annotations

from typing import Protocol

from ncd import parse
from ncd.perms import Perm

RING_REF = "ring-ref"
EVENT_CHANNEL = "event-channel"


class _Writer(Protocol):
    def write(self, path: str, value: str | bytes) -> None: ...
    def set_perms(self, path: str, perms: list[Perm]) -> None: ...


class Store(Protocol):
    """The part of :class:`ncd.xen.xenstore.XenStore` the vchan uses."""

    def read(self, path: str) -> str: ...
    def rm(self, path: str, missing_ok: bool = False) -> None: ...
    def run_in_transaction(self, fn: object) -> object: ...


def own_domid(xs: Store) -> int:
    """Our domid, read from the relative key ``domid`` like libxenvchan does."""
    return parse.domid("domid", xs.read("domid"))


def publish(xs: Store, path: str, owner: int, peer: int, gref: int, port: int) -> None:
    perms = [Perm(owner, "n"), Perm(peer, "r")]

    def fill(t: _Writer) -> None:
        for key, value in ((RING_REF, gref), (EVENT_CHANNEL, port)):
            t.write(f"{path}/{key}", str(value))
            t.set_perms(f"{path}/{key}", perms)

    xs.run_in_transaction(fill)


def read_entry(xs: Store, path: str) -> tuple[int, int]:
    """(ring-ref, event-channel) validated; ValueError for values out of range."""
    gref = parse.gref(f"{path}/{RING_REF}", xs.read(f"{path}/{RING_REF}"))
    port = parse.evtchn_port(f"{path}/{EVENT_CHANNEL}", xs.read(f"{path}/{EVENT_CHANNEL}"))
    return gref, port


def remove(xs: Store, path: str) -> None:
    xs.rm(path, missing_ok=True)
