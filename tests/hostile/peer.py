"""A hostile ncd frontend: a guest that runs no ncd and serves the vchan itself.

:class:`HostileFrontend` is a command set for tests/domproc.py, run as the guest
(``DomProc.python(sim, guest, "tests.hostile.peer:HostileFrontend", ...)``). Built on the
project's own Xen bindings (tests/xenbind: grant sharing, event channels) and
libxenstore (ncd.xen.xenstore), it does what a real frontend does — grants a control
page and ring pages to the backend, offers an unbound event channel, publishes
``queue-0/{ring-ref,event-channel}`` and its ``feature-*`` keys, writes its xenbus state
— and then whatever the test asks: any control page value, ring indices, raw records,
grants withdrawn, ports closed, states flapped.

The vchan is libxenvchan's (the frontend is the server: it reads the left ring, writes
the right one; see docs/protocol.md): this module keeps its own copy of the layout on
purpose, so that a bug in cext/vchan cannot hide in both ends.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

from ncd.perms import Perm
from ncd.xen.xenstore import XenStore
from tests.xenbind.evtchn import Evtchn
from tests.xenbind.gntshr import Gntshr, SharedPages
from tests.xenbind.mapping import PAGE_SIZE

# struct vchan_interface (xen/io/libxenvchan.h)
LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD = 0, 4, 8, 12
LEFT_ORDER, RIGHT_ORDER, CLI_LIVE, SRV_LIVE, CLI_NOTIFY, SRV_NOTIFY = 16, 18, 20, 21, 22, 23
GRANTS = 24
SMALL_OFFSET, LARGE_OFFSET = 1024, 2048  # in-page rings of order 10 / 11
NOTIFY_WRITE = 1
MAX_SHARED = 16  # pages per ring this peer really shares

GOOD_FEATURES = {
    "protocol-version": "1",
    "feature-vnet-hdr": "1",
    "max-frame": "65664",
    "feature-csum": "1",
    "feature-gso-tcpv4": "1",
    "feature-gso-tcpv6": "1",
    "feature-gso-udp-l4": "0",
}
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_off


def record(
    frame: bytes,
    flags: int = 0,
    gso_type: int = 0,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
    rec_len: int | None = None,
) -> bytes:
    """One record: ``rec_len`` (default: the true length), vnet header, frame."""
    body = VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) + frame
    return struct.pack("<I", len(body) if rec_len is None else rec_len) + body


def eth_frame(
    src: bytes, payload_len: int = 0, dst: bytes = b"\x02\0\0\0\0\x01", ethertype: int = 0x88B5
) -> bytes:
    """An Ethernet frame (local experimental ethertype: nobody answers it)."""
    return dst + src + struct.pack(">H", ethertype) + bytes(payload_len)


NEEDS_CSUM, GSO_TCPV4 = 1, 1  # virtio_net_hdr flags / gso_type


def bad_records(src: bytes, over_ring: int) -> list[tuple[str, bytes, str]]:
    """Records the receiving side must refuse, each as (case id, record, the rule's log
    text as a regex), from a peer whose frames come from ``src``; ``over_ring`` is a
    record length within the maximum frame but larger than the receiver's ring. The
    same list attacks the backend (tests/hostile/test_ring.py) and the frontend
    (tests/hostile/test_backend_records.py): one parser, one set of rules."""
    tcp = eth_frame(src, 40, ethertype=0x0800)  # 54 bytes: enough for the vnet header cases
    csum = {"csum_start": 34, "csum_offset": 16}
    return [
        ("rec-len-0", record(b"", rec_len=0), "length 0\\): record shorter"),
        ("rec-len-23", record(bytes(13), rec_len=23), "length 23\\): record shorter"),
        ("rec-len-65675", record(tcp, rec_len=65675), "length 65675\\): record longer"),
        (
            "rec-len-0xffffffff",
            record(tcp, rec_len=0xFFFFFFFF),
            "length 4294967295\\): record long",
        ),
        (
            "rec-len-over-ring",
            record(tcp, rec_len=over_ring),
            f"length {over_ring}\\): record larger than the ring",
        ),
        ("vnet-unknown-flags", record(tcp, flags=0x80), "flags"),
        (
            "vnet-unknown-gso-type",
            record(tcp, flags=NEEDS_CSUM, gso_type=2, gso_size=1000, hdr_len=54),
            "gso_type/gso_size",
        ),
        ("vnet-ecn-without-gso", record(tcp, gso_type=0x80), "gso_type/gso_size"),
        (
            "vnet-gso-without-csum",
            record(tcp, gso_type=GSO_TCPV4, gso_size=1000, hdr_len=54),
            "gso_type/gso_size",
        ),
        (
            "vnet-gso-size-0",
            record(tcp, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=0, hdr_len=54, **csum),
            "gso_type/gso_size",
        ),
        (
            "vnet-csum-beyond-frame",
            record(tcp, flags=NEEDS_CSUM, csum_start=50, csum_offset=16),
            "checksum position beyond the frame",
        ),
        (
            "vnet-hdr-len-beyond-frame",
            record(tcp, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1000, hdr_len=2000, **csum),
            "hdr_len beyond the frame",
        ),
    ]


def _order_pages(order: int) -> int:
    """Pages of a ring of ``order`` (0: in the control page); absurd orders are capped
    at what fits the grant list (the backend must refuse them before it counts)."""
    return 1 << (min(order, 22) - 12) if order >= 12 else 0


class Scribbler:
    """A thread writing ``blobs`` in turn at ``off`` of a shared page until stopped,
    calling ``notify`` every 64 rounds and once when stopped: a value the other side
    reads changing between two of its reads (XSA-155), and what the scribbling left
    looked at even when the thread was stopped before its first 64 rounds (on a loaded
    machine). Both hostile peers use it."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._notify: Any = None
        self.rounds = 0

    def start(self, page: Any, off: int, blobs: list[bytes], notify: Any) -> None:
        self.stop()
        self._stop.clear()
        self.rounds = 0

        def run() -> None:
            while not self._stop.is_set():
                for b in blobs:
                    page.write(off, b)
                self.rounds += 1
                if self.rounds % 64 == 0:
                    notify()

        self._notify = notify
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop the thread (if any), then notify; the rounds it wrote."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
            self._thread = None
            self._notify()
        return self.rounds


class HostileFrontend:
    """Frontend ``devid`` of this guest for backend ``backend``; see the module doc."""

    def __init__(self, devid: str = "0", backend: str = "0") -> None:
        self.xs = XenStore()
        self.backend = int(backend)
        self.domid = int(self.xs.read("domid"))
        self.dir = f"/local/domain/{self.domid}/device/ncvif/{int(devid)}"
        self.queue = f"{self.dir}/queue-0"
        self.gs = Gntshr()
        self.ev = Evtchn()
        self.ctrl: SharedPages | None = None
        self.extra: list[SharedPages] = []  # ring pages and decoys
        self.port: int | None = None
        self.right_order = 12
        self.right_buf: tuple[SharedPages | None, int] = (None, 0)  # pages, offset
        self.mac = b"\0" * 6
        self._scribbler = Scribbler()

    # ---- xenstore ---------------------------------------------------------------------
    def cmd_state(self, state: str) -> dict[str, Any]:
        self.xs.write(f"{self.dir}/state", state)
        return {}

    def cmd_flap(self, times: str, delay: str = "0") -> dict[str, Any]:
        """Write state 4 -> 1 -> 4 ``times`` times, as fast as xenstored takes it."""
        for _ in range(int(times)):
            for st in ("1", "4"):
                self.xs.write(f"{self.dir}/state", st)
                time.sleep(float(delay))
        return {}

    def cmd_rm_dir(self) -> dict[str, Any]:
        self.xs.rm(self.dir, missing_ok=True)
        return {}

    def cmd_reset(self) -> dict[str, Any]:
        """Withdraw everything shared, remove queue-0, good features, state 1."""
        self._stop_thread()
        self._withdraw()
        self.xs.rm(self.queue, missing_ok=True)
        mac = self.xs.read_or_none(f"{self.dir}/mac")
        if mac:
            self.mac = bytes(int(x, 16) for x in mac.split(":"))
        for k, v in GOOD_FEATURES.items():
            self.xs.write(f"{self.dir}/{k}", v)
        self.xs.write(f"{self.dir}/state", "1")
        return {}

    def _withdraw(self) -> None:
        for pages in [*self.extra, *([self.ctrl] if self.ctrl else [])]:
            if not pages.released:
                pages.unshare()
        self.extra, self.ctrl, self.right_buf = [], None, (None, 0)
        if self.port is not None:
            self.ev.unbind(self.port)
            self.port = None

    # ---- the offer ------------------------------------------------------------------------
    def cmd_offer(
        self, left_order: str = "12", right_order: str = "12", *opts: str
    ) -> dict[str, Any]:
        """Share a control page and rings of these orders, offer a port, publish queue-0,
        write state 4. ``opts`` (``key=value``) make it hostile:

        ``grants=ungranted|otherdom|readonly|short`` what the grant list names (refs never
        granted, pages granted to dom ``other`` instead, the client's write ring read-only,
        only the first ring's pages); ``ctrl=otherdom|readonly`` the control page itself;
        ``cons=N`` both right indices start at N (wrap-around tests); ``other=D``;
        ``state=S`` (default 4; ``none`` writes no state).
        """
        o = dict(x.split("=", 1) for x in opts)
        lo, ro = int(left_order, 0), int(right_order, 0)
        other = int(o.get("other", "1"))
        ctrl_to = other if o.get("ctrl") == "otherdom" else self.backend
        self.ctrl = self.gs.share_pages(ctrl_to, 1, writable=o.get("ctrl") != "readonly")
        page = bytearray(PAGE_SIZE)
        struct.pack_into("<HH", page, LEFT_ORDER, lo & 0xFFFF, ro & 0xFFFF)
        page[CLI_LIVE], page[SRV_LIVE], page[CLI_NOTIFY] = 2, 1, NOTIFY_WRITE
        start = int(o.get("cons", "0"), 0) & 0xFFFFFFFF
        struct.pack_into("<II", page, RIGHT_CONS, start, start)
        refs = self._ring_refs(lo, ro, o.get("grants"), other)
        struct.pack_into(f"<{len(refs)}I", page, GRANTS, *refs)
        self.ctrl.write(0, bytes(page))
        self.right_order = ro
        self.port = self.ev.bind_unbound_port(self.backend)
        perms = [Perm(self.domid, "n"), Perm(self.backend, "r")]
        for key, value in (("ring-ref", self.ctrl.refs[0]), ("event-channel", self.port)):
            self.xs.write(f"{self.queue}/{key}", str(value))
            self.xs.set_perms(f"{self.queue}/{key}", perms)
        state = o.get("state", "4")
        if state != "none":
            self.xs.write(f"{self.dir}/state", state)
        return {"ring_ref": self.ctrl.refs[0], "port": self.port, "grants": refs}

    def _ring_refs(self, lo: int, ro: int, how: str | None, other: int) -> list[int]:
        """The grant list for orders ``lo``/``ro``: at most MAX_SHARED pages per ring are
        really shared (an order that asks for more gets its list padded with ref 0)."""
        lp, rp = _order_pages(lo), _order_pages(ro)
        n = min(lp + rp, (PAGE_SIZE - GRANTS) // 4)
        in_page = SMALL_OFFSET if ro == 10 else LARGE_OFFSET
        self.right_buf = (self.ctrl, in_page) if rp == 0 else (None, 0)
        if n == 0:
            return []
        if how == "ungranted":
            return [0x7FFF0000 + i for i in range(n)]
        to = other if how == "otherdom" else self.backend
        left = (
            self.gs.share_pages(to, min(lp, MAX_SHARED), writable=how != "readonly") if lp else None
        )
        right = self.gs.share_pages(to, min(rp, MAX_SHARED)) if rp and how != "short" else None
        self.extra += [p for p in (left, right) if p is not None]
        if right is not None and rp <= MAX_SHARED:
            self.right_buf = (right, 0)
        lrefs = (left.refs if left else []) + [0] * (lp - (len(left.refs) if left else 0))
        rrefs = right.refs if right else []
        return (lrefs + rrefs + [0] * n)[:n]  # "short": the right ring's refs are 0

    # ---- the control page ------------------------------------------------------------------
    def _page(self) -> SharedPages:
        assert self.ctrl is not None, "offer first"
        return self.ctrl

    def cmd_poke(self, offset: str, data: str) -> dict[str, Any]:
        self._page().write(int(offset), bytes.fromhex(data))
        return {}

    def cmd_peek(self) -> dict[str, Any]:
        raw = self._page().read(0, GRANTS)
        lc, lp, rc, rp, lo, ro, cl, sl, cn, sn = struct.unpack("<IIIIHHBBBB", raw)
        return {
            "left_cons": lc,
            "left_prod": lp,
            "right_cons": rc,
            "right_prod": rp,
            "cli_live": cl,
            "srv_live": sl,
            "cli_notify": cn,
            "srv_notify": sn,
        }

    def cmd_wait_client(self, timeout: str = "10") -> dict[str, Any]:
        """Wait until the backend has mapped the page (cli_live 1)."""
        deadline = time.monotonic() + float(timeout)
        while time.monotonic() < deadline:
            live = self._page().read(CLI_LIVE, 1)[0]
            if live != 2:
                return {"cli_live": live}
            time.sleep(0.01)
        raise TimeoutError(f"the backend did not map the vchan within {timeout}s")

    # ---- the right ring (ours to write) ------------------------------------------------------
    def _idx(self, off: int) -> int:
        return int(struct.unpack("<I", self._page().read(off, 4))[0])

    def _set(self, off: int, value: int) -> None:
        self._page().write(off, struct.pack("<I", value & 0xFFFFFFFF))

    def _ring_write(self, data: bytes, wait: float = 5) -> None:
        """Copy ``data`` in at prod (waiting for room), publish, notify."""
        pages, base = self.right_buf
        assert pages is not None, "no right ring to write"
        size = 1 << self.right_order
        deadline = time.monotonic() + wait
        prod = self._idx(RIGHT_PROD)
        while size - ((prod - self._idx(RIGHT_CONS)) & 0xFFFFFFFF) < len(data):
            if time.monotonic() > deadline:
                raise TimeoutError("the backend does not consume the ring")
            time.sleep(0.001)
        pos = prod % size
        first = min(len(data), size - pos)
        pages.write(base + pos, data[:first])
        if first < len(data):
            pages.write(base, data[first:])
        self._set(RIGHT_PROD, prod + len(data))
        self.cmd_notify()

    def cmd_notify(self) -> dict[str, Any]:
        if self.port is not None:  # a closed port notifies nobody
            self.ev.notify(self.port)
        return {}

    def cmd_send(self, hexdata: str) -> dict[str, Any]:
        """Raw bytes into the ring (a record of any shape)."""
        self._ring_write(bytes.fromhex(hexdata))
        return {}

    def cmd_frames(self, count: str, payload: str = "0", notify: str = "1") -> dict[str, Any]:
        """``count`` valid frames from our MAC (``notify`` 0: publish, never notify)."""
        data = record(eth_frame(self.mac, int(payload)))
        n = int(count)
        if notify == "1":
            for _ in range(n):
                self._ring_write(data)
        else:
            pages, base = self.right_buf
            assert pages is not None
            size, prod = 1 << self.right_order, self._idx(RIGHT_PROD)
            for _ in range(n):
                for i, b in enumerate(data):  # tiny records: byte-wise handles the wrap
                    pages.write(base + (prod + i) % size, bytes([b]))
                prod += len(data)
            self._set(RIGHT_PROD, prod)
        return {"bytes": len(data) * n}

    def cmd_flood(self, seconds: str) -> dict[str, Any]:
        """Minimum valid records, as many as the ring takes, for ``seconds``."""
        one = record(eth_frame(self.mac))
        pages, base = self.right_buf
        assert pages is not None
        size = 1 << self.right_order
        batch = one * (min(size, 8192) // len(one))
        end, sent = time.monotonic() + float(seconds), 0
        while time.monotonic() < end:
            prod = self._idx(RIGHT_PROD)
            if size - ((prod - self._idx(RIGHT_CONS)) & 0xFFFFFFFF) < len(batch):
                time.sleep(0.0005)
                continue
            pos = prod % size
            first = min(len(batch), size - pos)
            pages.write(base + pos, batch[:first])
            if first < len(batch):
                pages.write(base, batch[first:])
            self._set(RIGHT_PROD, prod + len(batch))
            self.cmd_notify()
            sent += len(batch) // len(one)
        return {"frames": sent}

    def cmd_set_index(self, which: str, value: str) -> dict[str, Any]:
        """Set ``right_prod``/``left_cons``/... to ``value`` (``+N``/``-N``: relative), notify."""
        off = {
            "left_cons": LEFT_CONS,
            "left_prod": LEFT_PROD,
            "right_cons": RIGHT_CONS,
            "right_prod": RIGHT_PROD,
        }[which]
        v = self._idx(off) + int(value, 0) if value[0] in "+-" else int(value, 0)
        self._set(off, v)
        self.cmd_notify()
        return {"value": v & 0xFFFFFFFF}

    # ---- a thread rewriting the page -------------------------------------------------------
    def cmd_scribble(self, offset: str, width: str, *values: str) -> dict[str, Any]:
        """A thread writing ``values`` (in turn) at ``offset`` until :meth:`cmd_stop`,
        notifying the backend after each round."""
        off, fmt = int(offset), {"1": "<B", "4": "<I"}[width]
        blobs = [
            struct.pack(fmt, int(v, 0) & (0xFF if width == "1" else 0xFFFFFFFF)) for v in values
        ]
        self._scribbler.start(self._page(), off, blobs, self.cmd_notify)
        return {}

    def cmd_stop(self) -> dict[str, Any]:
        return {"rounds": self._stop_thread()}

    def _stop_thread(self) -> int:
        return self._scribbler.stop()

    # ---- withdrawing ---------------------------------------------------------------------
    def cmd_close_port(self) -> dict[str, Any]:
        assert self.port is not None
        self.ev.unbind(self.port)
        self.port = None
        return {}

    def cmd_unshare(self) -> dict[str, Any]:
        """Ungrant every page (control page and rings) while the backend has them mapped."""
        self._stop_thread()
        for pages in [*self.extra, *([self.ctrl] if self.ctrl else [])]:
            pages.unshare()
        self.extra, self.ctrl, self.right_buf = [], None, (None, 0)
        return {}

    def close(self) -> None:
        self._stop_thread()
        self._withdraw()
        self.gs.close()
        self.ev.close()
        self.xs.close()
