"""The vchan's xenstore entry: ``<path>/ring-ref`` and ``<path>/event-channel``.

Written by the server as libxenvchan 4.17 does (one transaction; each key owned by
the server with no access for others and read access for the peer), removed on
close. Read by the client, where both values are untrusted input from the peer.
"""

from __future__ import annotations

from typing import Protocol

from ncd.xen.xenstore import Perm

RING_REF = "ring-ref"
EVENT_CHANNEL = "event-channel"
MAX_EVTCHN_PORT = (1 << 17) - 1  # FIFO event-channel ABI limit
MAX_GREF = (1 << 32) - 1


class _Writer(Protocol):
    def write(self, path: str, value: str | bytes) -> None: ...
    def set_perms(self, path: str, perms: list[Perm]) -> None: ...


class Store(Protocol):
    """The part of :class:`ncd.xen.xenstore.XenStore` the vchan uses."""

    def read(self, path: str) -> str: ...
    def rm(self, path: str, missing_ok: bool = False) -> None: ...
    def run_in_transaction(self, fn: object) -> object: ...


def parse_uint(raw: str, what: str, lo: int, hi: int) -> int:
    """A strict decimal in [lo, hi]; anything else raises ValueError naming ``what``."""
    if not (0 < len(raw) <= 10 and raw.isascii() and raw.isdigit()):
        raise ValueError(f"{what}: {raw[:32]!r} is not a decimal number")
    value = int(raw)
    if not lo <= value <= hi:
        raise ValueError(f"{what}: {value} outside {lo}..{hi}")
    return value


def own_domid(xs: Store) -> int:
    """Our domid, read from the relative key ``domid`` like libxenvchan does."""
    return parse_uint(xs.read("domid"), "domid", 0, 0x7FEF)


def publish(xs: Store, path: str, owner: int, peer: int, gref: int, port: int) -> None:
    perms = [Perm(owner, "n"), Perm(peer, "r")]

    def fill(t: _Writer) -> None:
        for key, value in ((RING_REF, gref), (EVENT_CHANNEL, port)):
            t.write(f"{path}/{key}", str(value))
            t.set_perms(f"{path}/{key}", perms)

    xs.run_in_transaction(fill)


def read_entry(xs: Store, path: str) -> tuple[int, int]:
    """(ring-ref, event-channel) validated; ValueError for values out of range."""
    gref = parse_uint(xs.read(f"{path}/{RING_REF}"), f"{path}/{RING_REF}", 1, MAX_GREF)
    port = parse_uint(
        xs.read(f"{path}/{EVENT_CHANNEL}"), f"{path}/{EVENT_CHANNEL}", 1, MAX_EVTCHN_PORT
    )
    return gref, port


def remove(xs: Store, path: str) -> None:
    xs.rm(path, missing_ok=True)
