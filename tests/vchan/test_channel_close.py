"""Closing a vchan is explicit: close() removes a server's xenstore entry; a finalizer
does no I/O (it frees the C handle and warns)."""

from __future__ import annotations

import gc

import pytest

from ncd.vchan.channel import VchanServer, local_server


class RecordingStore:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def rm(self, path: str, missing_ok: bool = False) -> None:
        self.removed.append(path)


def server_with_entry(xs: RecordingStore, path: str) -> VchanServer:
    """An in-memory server that believes it published ``path`` through ``xs``."""
    mem = local_server(1024, 1024)
    handle, mem._h = mem._h, None
    return VchanServer(handle, 0, xs, path)


def test_close_removes_the_entry_once():
    xs = RecordingStore()
    srv = server_with_entry(xs, "device/ncvif/0/queue-0")
    srv.close()
    srv.close()
    assert srv.closed and xs.removed == ["device/ncvif/0/queue-0"]


def test_a_forgotten_server_warns_and_leaves_xenstore_alone():
    xs = RecordingStore()
    srv = server_with_entry(xs, "device/ncvif/0/queue-0")
    with pytest.warns(ResourceWarning, match="VchanServer to dom0 was not closed"):
        del srv
        gc.collect()
    assert xs.removed == []  # no xenstore I/O from a finalizer


def test_with_block_closes():
    xs = RecordingStore()
    with server_with_entry(xs, "q") as srv:
        assert not srv.closed
    assert srv.closed and xs.removed == ["q"]
