"""A hostile frontend for tests/e2e/test_storms.py: domain 2, no ncd there.

It completes a real handshake with dom0's backend, its vchan built by hand on the
tests' own Xen bindings (tests/xenbind: grant-shared pages, an event channel it
owns, so it can notify at will), then storms. Run in domain 2 with stdin a pipe::

    python -m tests.e2e.stormpeer MODE SECONDS

``notify``  notifies its event channel as fast as it can;
``writes``  rewrites keys of its device directory (a junk key, and ``state`` with
            the value it already has) as fast as xenstored answers;
``states``  flaps its state Initialising / Connected, each time with a good page;
``refused`` flaps its state likewise with a control page the backend must refuse,
            then behaves: a good page, Initialising, Connected.

Prints ``connected`` once the backend mapped its page (not for ``refused``), waits
for a line ``go``, storms for SECONDS, prints ``storm COUNT ELAPSED`` (for
``refused`` after the good page is up: ``behaving``), then waits for stdin to close.
"""

from __future__ import annotations

import struct
import sys
import time

from ncd.vchan import xsentry
from ncd.xen.xenstore import XenStore
from tests.xenbind._lib import lib
from tests.xenbind.evtchn import Evtchn
from tests.xenbind.gntshr import Gntshr

ME, BACKEND = 2, 0
FE = f"/local/domain/{ME}/device/ncvif/0"
QUEUE = f"{FE}/queue-0"
FEATURES = {
    "protocol-version": "1",
    "feature-vnet-hdr": "1",
    "max-frame": "1514",
    "feature-csum": "0",
    "feature-gso-tcpv4": "0",
    "feature-gso-tcpv6": "0",
    "feature-gso-udp-l4": "0",
}
RING_ORDER = 12  # each ring one page of its own
CLI_LIVE = 20  # offset of cli_live in struct vchan_interface (xen/io/libxenvchan.h)


class Server:
    """The vchan server side, by hand: control page + two ring pages, one port."""

    def __init__(self, xs: XenStore) -> None:
        self.xs = xs
        self.gnt = Gntshr()
        self.evt = Evtchn()
        self.pages = self.gnt.share_pages(BACKEND, 3)
        self.port = self.evt.bind_unbound_port(BACKEND)

    def page(self, left_order: int = RING_ORDER) -> None:
        """A fresh control page: indices 0, server live, client not yet (2)."""
        refs = self.pages.refs
        ctrl = struct.pack(
            "<IIIIHHBBBBII", 0, 0, 0, 0, left_order, RING_ORDER, 2, 1, 0, 0, refs[1], refs[2]
        )
        self.pages.write(0, ctrl)

    def publish(self) -> None:
        for k, v in FEATURES.items():
            self.xs.write(f"{FE}/{k}", v)
        xsentry.publish(self.xs, QUEUE, ME, BACKEND, self.pages.refs[0], self.port)

    def client_live(self) -> int:
        return self.pages.read(CLI_LIVE, 1)[0]


def wait_go() -> None:
    if sys.stdin.readline().strip() != "go":
        sys.exit("stormpeer: expected go")


def main(mode: str, seconds: float) -> None:
    xs = XenStore()
    srv = Server(xs)
    srv.page(left_order=99 if mode == "refused" else RING_ORDER)
    srv.publish()
    xs.write(f"{FE}/state", "4")
    if mode != "refused":
        deadline = time.monotonic() + 20
        while srv.client_live() != 1:
            if time.monotonic() > deadline:
                sys.exit("stormpeer: the backend never mapped the page")
            time.sleep(0.02)
        print("connected", flush=True)
    wait_go()
    count, start = 0, time.monotonic()
    end = start + seconds
    if mode == "notify":
        h, port, notify = srv.evt._handle("notify"), srv.port, lib.xenevtchn_notify
        while time.monotonic() < end:
            for _ in range(1000):
                notify(h, port)
            count += 1000
    elif mode == "writes":
        while time.monotonic() < end:
            xs.write(f"{FE}/storm", str(count))
            xs.write(f"{FE}/state", "4")
            count += 2
    elif mode in ("states", "refused"):
        while time.monotonic() < end:
            if mode == "states":
                srv.page()
            xs.write(f"{FE}/state", "1")
            xs.write(f"{FE}/state", "4")
            count += 2
    else:
        sys.exit(f"stormpeer: unknown mode {mode!r}")
    print(f"storm {count} {time.monotonic() - start:.3f}", flush=True)
    if mode == "refused":  # behave: a page the backend accepts, a fresh handshake
        srv.page()
        xs.write(f"{FE}/state", "1")
        xs.write(f"{FE}/state", "4")
        print("behaving", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
