"""The foreign-page tracker (cext/tracker) in-process: handles, validation, slot reuse,
capacity, address lookup and classification, threads, a forked process, and hypothesis
sequences against a Python model.

Page addresses are made-up page-aligned numbers: the tracker never dereferences them.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from ncd.vchan._lib import ffi, lib

PAGE = 4096
BASE = 0x7F0000000000


def page(i: int) -> int:
    return BASE + i * PAGE


def ptr(addr: int) -> Any:
    return ffi.cast("void *", addr)


class TrackerError(OSError):
    pass


class Tracker:
    """Thin test wrapper over the C API."""

    def __init__(self, capacity: int) -> None:
        self.t = lib.ncd_tracker_create(capacity)
        if self.t == ffi.NULL:
            raise TrackerError(ffi.errno, "ncd_tracker_create")

    def close(self) -> None:
        if self.t is not None:
            lib.ncd_tracker_destroy(self.t)
            self.t = None

    @property
    def id(self) -> int:
        return int(lib.ncd_tracker_id(self.t))

    def count(self, ctxt: int | None = None) -> int:
        if ctxt is None:
            return int(lib.ncd_tracker_count(self.t))
        return int(lib.ncd_tracker_count_ctxt(self.t, ptr(ctxt)))

    def track(self, domid: int, gref: int, addr: int, ctxt: int = 0) -> int:
        h = ffi.new("uint64_t *")
        if lib.ncd_tracker_track(self.t, domid, gref, ptr(addr), ptr(ctxt), h) < 0:
            raise TrackerError(ffi.errno, "ncd_tracker_track")
        return int(h[0])

    def untrack(self, handle: int) -> None:
        if lib.ncd_tracker_untrack(self.t, handle) < 0:
            raise TrackerError(ffi.errno, "ncd_tracker_untrack")

    def untrack_ctxt(self, ctxt: int) -> int:
        return int(lib.ncd_tracker_untrack_ctxt(self.t, ptr(ctxt)))

    def lookup(self, handle: int) -> tuple[int, int, int, int]:
        e = ffi.new("struct ncd_track_entry *")
        if lib.ncd_tracker_lookup(self.t, handle, e) < 0:
            raise TrackerError(ffi.errno, "ncd_tracker_lookup")
        assert e.handle == handle
        return int(e.domid), int(e.gref), int(e.page), int(ffi.cast("uintptr_t", e.ctxt))

    def lookup_addr(self, addr: int) -> int:
        return int(lib.ncd_tracker_lookup_addr(self.t, ptr(addr)))

    def classify(self, addr: int, length: int) -> dict[str, int]:
        o = ffi.new("struct ncd_mem_origin *")
        r = lib.ncd_tracker_classify(self.t, ptr(addr), length, o)
        assert r == o.foreign
        return {k: int(getattr(o, k)) for k in
                ("foreign", "domid", "gref", "offset", "len", "handle")}

    def classify_range(self, addr: int, length: int, maxseg: int = 16) -> list[tuple[int, ...]]:
        segs = ffi.new("struct ncd_mem_origin[]", maxseg)
        n = lib.ncd_tracker_classify_range(self.t, ptr(addr), length, segs, maxseg)
        if n < 0:
            raise TrackerError(ffi.errno, "ncd_tracker_classify_range")
        return [(s.foreign, s.domid, s.gref, s.offset, s.len) for s in segs[0:n]]


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker(8)
    yield t
    t.close()


def err(fn: Any, *args: Any) -> int:
    with pytest.raises(TrackerError) as ei:
        fn(*args)
    return ei.value.errno


def test_track_lookup_untrack(tracker: Tracker) -> None:
    h = tracker.track(3, 1234, page(5), ctxt=0xABC0)
    assert h >> 48 == tracker.id and h != 0
    assert tracker.count() == 1 and tracker.count(0xABC0) == 1 and tracker.count(0x1) == 0
    assert tracker.lookup(h) == (3, 1234, page(5), 0xABC0)
    # any byte of the page finds it; the neighbours do not
    assert tracker.lookup_addr(page(5)) == h
    assert tracker.lookup_addr(page(5) + 4095) == h
    assert tracker.lookup_addr(page(5) - 1) == 0
    assert tracker.lookup_addr(page(6)) == 0
    assert lib.ncd_tracker_find(h) == tracker.t
    tracker.untrack(h)
    assert tracker.count() == 0
    assert tracker.lookup_addr(page(5) + 17) == 0


def test_bad_arguments(tracker: Tracker) -> None:
    assert err(tracker.track, 1, 1, page(1) + 8) == errno.EINVAL  # not page-aligned
    assert err(tracker.track, 1, 1, 0) == errno.EINVAL
    tracker.track(1, 1, page(1))
    assert err(tracker.track, 2, 9, page(1)) == errno.EEXIST  # already tracked
    assert lib.ncd_tracker_create(0) == ffi.NULL and ffi.errno == errno.EINVAL
    too_big = lib.NCD_TRACKER_MAX_CAPACITY + 1
    assert lib.ncd_tracker_create(too_big) == ffi.NULL and ffi.errno == errno.EINVAL


def test_handle_validation_never_out_of_bounds(tracker: Tracker) -> None:
    h = tracker.track(7, 77, page(0))
    tid, gen, idx = h >> 48, (h >> 24) & 0xFFFFFF, h & 0xFFFFFF
    other = Tracker(4)
    try:
        foreign_h = other.track(7, 77, page(0))
        assert foreign_h >> 48 != tid
        assert err(tracker.lookup, foreign_h) == errno.EINVAL  # another tracker's handle
        assert err(tracker.untrack, foreign_h) == errno.EINVAL
        assert lib.ncd_tracker_find(foreign_h) == other.t
    finally:
        other.close()
    assert lib.ncd_tracker_find(foreign_h) == ffi.NULL  # destroyed: the id names nothing
    for bad_idx in (8, 0xFFFFFF):  # beyond capacity
        assert err(tracker.lookup, (tid << 48) | (gen << 24) | bad_idx) == errno.EINVAL
    assert err(tracker.lookup, (tid << 48) | (gen << 24) | (idx + 1)) == errno.ESTALE  # free
    assert err(tracker.lookup, (tid << 48) | ((gen + 1) << 24) | idx) == errno.ESTALE
    assert err(tracker.lookup, 0) == errno.EINVAL
    assert lib.ncd_tracker_find(0) == ffi.NULL
    assert tracker.lookup(h)[:2] == (7, 77)


def test_stale_handles_after_slot_reuse(tracker: Tracker) -> None:
    h1 = tracker.track(1, 10, page(1))
    tracker.untrack(h1)
    assert err(tracker.lookup, h1) == errno.ESTALE
    assert err(tracker.untrack, h1) == errno.ESTALE  # double untrack
    h2 = tracker.track(2, 20, page(2))
    assert h2 & 0xFFFFFF == h1 & 0xFFFFFF  # the free list gave the slot back
    assert h2 != h1  # ... under a new generation
    assert err(tracker.lookup, h1) == errno.ESTALE
    assert err(tracker.untrack, h1) == errno.ESTALE
    assert tracker.lookup(h2)[:3] == (2, 20, page(2))
    assert tracker.count() == 1


def test_capacity_exhaustion(tracker: Tracker) -> None:
    hs = [tracker.track(1, 100 + i, page(i)) for i in range(8)]
    assert tracker.count() == 8
    assert err(tracker.track, 1, 999, page(100)) == errno.ENOSPC
    assert tracker.count() == 8
    tracker.untrack(hs[3])
    h = tracker.track(1, 999, page(100))
    assert tracker.lookup(h)[:2] == (1, 999)
    assert err(tracker.track, 1, 1000, page(101)) == errno.ENOSPC
    # every page is still found at its own entry
    for i, hh in enumerate(hs):
        if i != 3:
            assert tracker.lookup_addr(page(i) + 100) == hh


def test_untrack_by_ctxt(tracker: Tracker) -> None:
    for i in range(3):
        tracker.track(1, i, page(i), ctxt=0x1000)
    keep = tracker.track(2, 50, page(10), ctxt=0x2000)
    assert tracker.count(0x1000) == 3
    assert tracker.untrack_ctxt(0x1000) == 3
    assert tracker.count() == 1 and tracker.count(0x1000) == 0
    assert tracker.lookup_addr(page(1)) == 0
    assert tracker.lookup_addr(page(10)) == keep


def test_classify(tracker: Tracker) -> None:
    h = tracker.track(5, 4321, page(2))
    c = tracker.classify(page(2) + 100, 60)
    assert c == {"foreign": 1, "domid": 5, "gref": 4321, "offset": 100, "len": 60, "handle": h}
    c = tracker.classify(page(2) + 4000, 1500)  # clipped at the page end
    assert c["foreign"] == 1 and c["offset"] == 4000 and c["len"] == 96
    c = tracker.classify(page(3) + 1, 10)
    assert c == {"foreign": 0, "domid": 0, "gref": 0, "offset": 1, "len": 10, "handle": 0}


def test_classify_range_splits_by_origin(tracker: Tracker) -> None:
    tracker.track(5, 11, page(2))
    tracker.track(5, 12, page(3))  # the next ring page: another grant
    tracker.track(6, 13, page(6))
    # a frame starting in page 1 (local), across pages 2 and 3, into local 4, 5
    segs = tracker.classify_range(page(1) + 4000, 96 + 4096 * 4 + 10)
    assert segs == [
        (0, 0, 0, 4000, 96),
        (1, 5, 11, 0, 4096),
        (1, 5, 12, 0, 4096),
        (0, 0, 0, 0, 8192),  # local pages 4 and 5 merged
        (1, 6, 13, 0, 10),
    ]
    assert tracker.classify_range(page(2), 0) == []
    assert err(tracker.classify_range, page(1), 4 * 4096, 2) == errno.E2BIG


def test_process_tracker_is_one_per_process() -> None:
    a = lib.ncd_tracker_process()
    assert a != ffi.NULL and a == lib.ncd_tracker_process()
    assert lib.ncd_tracker_capacity(a) == lib.NCD_TRACKER_PROCESS_CAPACITY
    # classify(NULL, ...) consults it: an untracked address is local
    o = ffi.new("struct ncd_mem_origin *")
    assert lib.ncd_tracker_classify(ffi.NULL, ptr(page(999)), 10, o) == 0


def test_many_trackers_distinct_ids() -> None:
    ts = [Tracker(2) for _ in range(20)]
    try:
        ids = {t.id for t in ts}
        assert len(ids) == 20 and 0 not in ids
        hs = [t.track(1, i, page(i)) for i, t in enumerate(ts)]
        for t, h in zip(ts, hs, strict=True):
            assert lib.ncd_tracker_find(h) == t.t
    finally:
        for t in ts:
            t.close()


def test_table_is_shared_with_a_forked_process(tracker: Tracker) -> None:
    h = tracker.track(1, 42, page(0))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: add one entry, drop the parent's
        code = 1
        try:
            tracker.track(9, 99, page(9))
            tracker.untrack(h)
            code = 0
        finally:
            os.write(w, b"x")
            os._exit(code)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tracker.count() == 1
    assert tracker.lookup_addr(page(0)) == 0
    nh = tracker.lookup_addr(page(9) + 5)
    assert nh and tracker.lookup(nh)[:2] == (9, 99)


def test_concurrent_track_untrack_with_lock_free_readers() -> None:
    t = Tracker(4096)
    try:
        stable = {i: t.track(2, 5000 + i, page(100_000 + i)) for i in range(16)}
        stop = threading.Event()
        failures: list[str] = []

        def writer(w: int) -> None:
            for rnd in range(150):
                hs = [t.track(1, w * 1000 + j, page(w * 1000 + j)) for j in range(40)]
                for j, h in enumerate(hs):
                    if t.lookup(h)[:3] != (1, w * 1000 + j, page(w * 1000 + j)):
                        failures.append(f"writer {w} round {rnd}: wrong entry")
                for h in hs:
                    t.untrack(h)
                    if err(t.lookup, h) != errno.ESTALE:
                        failures.append("handle alive after untrack")

        def reader() -> None:
            o = ffi.new("struct ncd_mem_origin *")
            while not stop.is_set():
                for i, h in stable.items():
                    a = page(100_000 + i) + 7
                    if lib.ncd_tracker_classify(t.t, ptr(a), 64, o) != 1 or \
                            (o.domid, o.gref, o.handle) != (2, 5000 + i, h):
                        failures.append(f"stable page {i} misclassified")
                # never-tracked addresses stay local
                if lib.ncd_tracker_lookup_addr(t.t, ptr(page(50_000))) != 0:
                    failures.append("untracked page found")

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for th in readers + writers:
            th.start()
        for th in writers:
            th.join()
        stop.set()
        for th in readers:
            th.join()
        assert not failures, failures[:5]
        assert t.count() == 16
    finally:
        t.close()


class TrackerModel(RuleBasedStateMachine):
    """Random track / untrack / lookups against a dict model."""

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.t = Tracker(6)
        self.live: dict[int, tuple[int, int, int]] = {}  # handle -> (domid, gref, page)
        self.dead: set[int] = set()

    def teardown(self) -> None:
        self.t.close()

    @rule(target=handles, domid=st.integers(0, 0x7FEF), gref=st.integers(0, 2**32 - 1),
          pg=st.integers(0, 12))
    def track(self, domid: int, gref: int, pg: int) -> int:
        in_use = {p for (_, _, p) in self.live.values()}
        if page(pg) in in_use:
            assert err(self.t.track, domid, gref, page(pg)) == errno.EEXIST
            return 0
        if len(self.live) == 6:
            assert err(self.t.track, domid, gref, page(pg)) == errno.ENOSPC
            return 0
        h = self.t.track(domid, gref, page(pg))
        assert h not in self.live and h not in self.dead
        self.live[h] = (domid, gref, page(pg))
        return h

    @rule(h=consumes(handles))
    def untrack(self, h: int) -> None:
        if h in self.live:
            self.t.untrack(h)
            del self.live[h]
            self.dead.add(h)
        else:
            assert err(self.t.untrack, h) in (errno.ESTALE, errno.EINVAL)

    @rule(h=handles)
    def lookup(self, h: int) -> None:
        if h in self.live:
            assert self.t.lookup(h)[:3] == self.live[h]
        else:
            assert err(self.t.lookup, h) in (errno.ESTALE, errno.EINVAL)

    @rule(pg=st.integers(0, 13), off=st.integers(0, 4095))
    def lookup_addr(self, pg: int, off: int) -> None:
        want = [h for h, (_, _, p) in self.live.items() if p == page(pg)]
        got = self.t.lookup_addr(page(pg) + off)
        assert got == (want[0] if want else 0)
        c = self.t.classify(page(pg) + off, 5000)
        assert c["len"] == 4096 - off and c["offset"] == off
        if want:
            assert (c["foreign"], c["domid"], c["gref"]) == (1, *self.live[want[0]][:2])
        else:
            assert c["foreign"] == 0

    @invariant()
    def counted(self) -> None:
        assert self.t.count() == len(self.live)


TestTrackerModel = TrackerModel.TestCase
TestTrackerModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
