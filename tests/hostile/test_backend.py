"""A hostile backend against the running frontend daemon.

Guest 1 runs ``ncd frontend`` with devid 0 backed by ``ncd backend`` in dom0 (the good
one) and, one per case, devid N backed by domain 2, where the test's
:class:`tests.hostile.backend_peer.HostileBackend` maps the frontend's vchan and then
misbehaves. Every case: the frontend stays up, bounded and idle afterwards; its devid 1
ends not Connected with one log line naming the rule and a counter; devid 0 carries a TCP
transfer intact meanwhile; devid 1 reconnects once the backend starts over.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.domproc import DomProc
from tests.e2e.harness import Daemon, Net, proc_usage
from tests.hostile.peer import CLI_LIVE, eth_frame, record
from tests.hostile.world import (
    IDLE_CPU,
    IDLE_WINDOW,
    RSS_BOUND_KB,
    cpu_share,
    daemon_env,
    sanitizer_report,
)

BE, FE = "198.18.1.1", "198.18.1.2"
PORTS = itertools.count(5501)
FRAME = eth_frame(b"\x02\0\0\0\0\x02", 40, ethertype=0x0800)


class Front:
    """The world: the frontend under attack, its good device, the hostile backend."""

    def __init__(self, net: Net) -> None:
        self.net = net
        net.start(0, "backend")
        self.frontend: Daemon = net.start(1, "frontend", env=daemon_env())
        net.attach(1, 0, "00:16:3e:00:01:00")
        net.wait_connected(1, 0)
        net.addr(0, "ncvif1.0", f"{BE}/24")
        net.addr(1, "nc0", f"{FE}/24")
        self.devid = 0
        self.peer: DomProc | None = None
        self.fresh_device()
        self.baseline_rss = proc_usage(self.frontend.pid)["rss_kb"]

    def fresh_device(self) -> None:
        """A new device 1/N backed by domain 2 and a new hostile backend for it: each
        case starts with a new vif (and its own budget of peer-caused log lines,
        ncd/ratelog.py); the previous hostile backend closes first."""
        if self.peer is not None:
            self.peer.call("closed")
            self.peer.close()
        self.devid += 1
        n = self.devid
        mac = f"00:16:3e:00:01:{n:02x}"
        self.net.ncctl("attach", "1", "--devid", str(n), "--backend", "2", "--mac", mac)
        self.peer = DomProc.python(
            self.net.sim,
            2,
            "tests.hostile.backend_peer:HostileBackend",
            "1",
            str(n),
            errlog=self.net.logdir / f"hostile-backend-{n}.log",
        )
        self.net._helpers.append(self.peer)
        self.connect()

    def vif(self) -> dict | None:
        return self.net.vif(1, 1, self.devid)

    def vif_stats(self) -> dict:
        return next(v for v in self.net.stats(1)["vifs"] if v["devid"] == self.devid)

    def failures(self) -> int:
        return sum(self.net.stats(1)["handshake_failures"].values())

    def connect(self) -> None:
        self.peer.call("init_wait")
        self.peer.call("connect 15")
        self.net.wait_state(1, 1, self.devid, "Connected", timeout=15)

    def attack(self, kind: str, rule: str, *lines: str) -> None:
        """Run ``lines`` on the connected hostile backend while the good device carries a
        TCP transfer; devid 1 must fail with ``failed (KIND): ...RULE...``."""
        before, mark = self.failures(), len(self.frontend.log_text())
        port = next(PORTS)
        recv = self.net.receiver(0, BE, port)
        send = self.net.sender(1, BE, port, 1 << 20, mbps=2)
        for line in lines:
            self.peer.call(line)
        self.net.wait(
            lambda: re_search(
                rf"vif 1/{self.devid}: failed \({kind}\): [^\n]*{rule}",
                self.frontend.log_text()[mark:],
            ),
            10,
            f"the frontend failing devid {self.devid} on {rule!r}",
            self.frontend,
        )
        self.net.wait(lambda: self.failures() > before, 5, "the failure counted")
        self.net.wait(
            lambda: (v := self.vif()) is not None and v["state"] != "Connected",
            10,
            "the hostile device not Connected",
            self.frontend,
        )
        sent, got = Net.result(send), Net.result(recv)
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
        assert self.net.ping_ok(1, BE, count=2)
        assert self.net.vif(1, 1, 0)["state"] == "Connected"
        self.stop_attack()
        self.connect()  # re-attachable: a backend that starts over gets a fresh vchan
        before = self.vif_stats()["frames_rx"]
        self.peer.call("frames 3")
        self.net.wait(
            lambda: self.vif_stats()["frames_rx"] >= before + 3,
            10,
            "frames over the reconnected device",
            self.frontend,
        )

    def stop_attack(self) -> None:
        """The hostile backend closes (nothing mapped); the frontend must be up, bounded
        and idle (over twice the backend's window: its own retry of the device, a setup
        of some 10-50 ms, may still fall in it)."""
        self.peer.call("closed")
        self.check_survived()

    def check_survived(self) -> None:
        assert self.frontend.alive(), self.frontend.log_text()[-3000:]
        assert sanitizer_report(self.frontend.log_text()) is None
        rss = proc_usage(self.frontend.pid)["rss_kb"]
        assert rss < self.baseline_rss + RSS_BOUND_KB, (rss, self.baseline_rss)
        share = cpu_share(self.frontend.pid, 2 * IDLE_WINDOW)
        assert share < IDLE_CPU, f"the frontend spins after the attack: {share:.0%} of a core"


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


@pytest.fixture(scope="module")
def front(sim_module, tmp_path_factory) -> Iterator[Front]:
    net = Net(sim_module, tmp_path_factory.mktemp("logs"))
    try:
        yield Front(net)
    finally:
        net.close()


RECORDS = [
    ("rec-len-0", record(b"", rec_len=0), "record shorter"),
    ("rec-len-0xffffffff", record(FRAME, rec_len=0xFFFFFFFF), "record longer"),
    (
        "vnet-gso-size-0",
        record(FRAME, flags=1, gso_type=1, gso_size=0, hdr_len=54, csum_start=34, csum_offset=16),
        "gso_type/gso_size",
    ),
    (
        "vnet-csum-beyond-frame",
        record(FRAME, flags=1, csum_start=50, csum_offset=16),
        "checksum position beyond the frame",
    ),
]


@pytest.mark.parametrize("data,rule", [c[1:] for c in RECORDS], ids=[c[0] for c in RECORDS])
def test_bad_record_from_the_backend(front: Front, data: bytes, rule: str) -> None:
    front.fresh_device()
    bad = front.vif_stats()["drops"]["bad_record_from_peer"]
    front.attack("link_lost", rule, "frames 2", f"send {data.hex()}")
    assert front.vif_stats()["drops"]["bad_record_from_peer"] > bad


def test_producer_beyond_the_ring(front: Front) -> None:
    front.fresh_device()
    front.attack("link_lost", "producer index", "set_index left_prod +0x10000000")


def test_bad_client_live_flag(front: Front) -> None:
    front.fresh_device()
    front.attack("link_lost", "live flag", f"poke {CLI_LIVE} 09")


def test_bad_backend_state(front: Front) -> None:
    front.fresh_device()
    front.attack("bad_state", "state", "state 9")


def test_backend_states_flapping(front: Front) -> None:
    """Connected <-> InitWait 200 times: the frontend neither crashes nor spins, and
    serves a fresh vchan when the backend starts over."""
    front.fresh_device()
    mark = len(front.frontend.log_text())
    front.peer.call("flap 200")
    assert front.frontend.alive()
    assert front.net.ping_ok(1, BE, count=2)
    front.stop_attack()
    front.connect()
    assert "Traceback" not in front.frontend.log_text()[mark:]
