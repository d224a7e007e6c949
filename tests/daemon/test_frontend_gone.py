"""A driver domain's view of a destroyed frontend (docs/lab.md, ``driver_release``).

Domain 1 backs a vif of domain 2; the toolstack destroys domain 2 (its home goes). From
then on domain 1 reading anything under ``/local/domain/2`` gets ``EACCES``, not
``ENOENT`` (the nearest existing ancestor, ``/local/domain``, is dom0's: Xen's rule, and
xensim's, whose ops the in-memory store runs). The backend must read that as "gone":
no device picked up, the entries it owns removed, one line saying why, no exception.
"""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from ncd import layout
from ncd.daemon import backend

from .memstore import MemStore

MAC = "00:16:3e:01:02:03"
FE_DIR = layout.frontend_dir(2, 0)
BE_DIR = layout.backend_dir(1, 2, 0)


def test_destroyed_domain_reads_are_eacces_for_a_domu_enoent_for_dom0(tree: MemStore) -> None:
    layout.attach(tree.conn(0), backend=1, frontend=2, mac=MAC)
    d1 = tree.conn(1)
    assert layout.read_peer(d1, f"{FE_DIR}/state") == b"1"
    tree.conn(0).rm("/local/domain/2")
    with pytest.raises(OSError) as e:
        layout.read_optional(d1, f"{FE_DIR}/state")
    assert e.value.errno == errno.EACCES
    assert layout.read_peer(d1, f"{FE_DIR}/state") is None
    assert layout.read_optional(tree.conn(0), f"{FE_DIR}/state") is None  # ENOENT for dom0
    # a missing node in a home we may read is still ENOENT
    assert layout.read_optional(d1, f"{BE_DIR}/nothing") is None


def test_read_peer_keeps_other_errors() -> None:
    class Broken:
        def read_bytes(self, path: str) -> bytes:
            raise OSError(errno.EIO, f"xs_read({path!r})")

    with pytest.raises(OSError) as e:
        layout.read_peer(Broken(), FE_DIR)  # type: ignore[arg-type]
    assert e.value.errno == errno.EIO


def test_frontend_alive_in_a_driver_domain(tree: MemStore) -> None:
    d1 = tree.conn(1)
    layout.attach(tree.conn(0), backend=1, frontend=2, mac=MAC)
    assert backend.frontend_alive(d1, 1, 2)  # /local/domain/2 is EACCES; its device dir is not
    tree.conn(0).rm("/local/domain/2")
    assert not backend.frontend_alive(d1, 1, 2)


class _Vif:
    def __init__(self, guest: int) -> None:
        self.guest = guest
        self.pokes: list[str] = []

    def poke(self, why: str) -> None:
        self.pokes.append(why)


def _ctx(tree: MemStore) -> Any:
    return SimpleNamespace(xs=tree.conn(1), domid=1)


def test_discovery_skips_and_sweeps_a_destroyed_frontend(
    tree: MemStore, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _ctx(tree)
    devices = backend.devices(ctx)
    layout.attach(tree.conn(0), backend=1, frontend=2, mac=MAC, switch="up")
    assert devices.ready((2, 0))
    tree.conn(0).rm("/local/domain/2")
    assert not devices.ready((2, 0))
    gone, other = _Vif(2), _Vif(3)
    table = SimpleNamespace(vifs=lambda: [gone, other])
    with caplog.at_level(logging.INFO, logger="ncd.backend"):
        backend.reap_dead_domains(ctx, table)
        backend.reap_dead_domains(ctx, table)  # nothing left to say
    assert [r.getMessage() for r in caplog.records] == [
        "domain 2 is gone: removing its ncvif backend entries"
    ]
    assert gone.pokes == ["domain gone"] and other.pokes == []
    # the device dir (ours) is gone; the per-domain dir above it is the toolstack's
    assert layout.read_optional(tree.conn(0), BE_DIR) is None
    assert layout.list_backend_devices(ctx.xs, 1) == []
    assert layout.read_optional(tree.conn(0), f"{layout.backend_root(1)}/2") == b""


def test_dom0_sweep_removes_the_per_domain_dir_too(tree: MemStore) -> None:
    layout.attach(tree.conn(0), backend=0, frontend=2, mac=MAC)
    tree.conn(0).rm("/local/domain/2")
    ctx = SimpleNamespace(xs=tree.conn(0), domid=0)
    backend.reap_dead_domains(ctx, SimpleNamespace(vifs=lambda: []))
    assert layout.list_optional(tree.conn(0), layout.backend_root(0)) == []


def test_dom0_sweep_between_release_and_the_toolstacks_rm(tree: MemStore) -> None:
    """xenstored releases a dead domain (@releaseDomain; the nodes it owns, its device
    directories, go) before the toolstack removes /local/domain/<fe>. A sweep in between
    (the backend's vif ended as the device dir went) must see the domain as gone:
    nothing else would make the backend sweep again (the destroy-cycles race)."""
    layout.attach(tree.conn(0), backend=0, frontend=2, mac=MAC)
    ctx = SimpleNamespace(xs=tree.conn(0), domid=0)
    assert backend.frontend_alive(ctx.xs, 0, 2)
    tree.release(2)
    assert layout.domain_exists(ctx.xs, 2)  # the toolstack has not removed it yet
    assert not backend.frontend_alive(ctx.xs, 0, 2)
    backend.reap_dead_domains(ctx, SimpleNamespace(vifs=lambda: []))
    assert layout.list_backend_devices(ctx.xs, 0) == []


def test_a_domain_not_introduced_yet_with_its_device_dir_is_alive(tree: MemStore) -> None:
    """Not introduced (being built, or xenstored does not say) but its device directory
    for us is there: alive, as in a driver domain."""
    layout.attach(tree.conn(0), backend=0, frontend=2, mac=MAC)
    tree.released.add(2)  # xenstored says no; its nodes are still there
    assert backend.frontend_alive(tree.conn(0), 0, 2)
