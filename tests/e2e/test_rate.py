"""The backend entry's ``rate`` (libxl's ``BYTES,USEC``) on xensim: iperf3 from a guest
through a rate-limited vif measures the rate (within 10%), another vif of the same
backend at the same time is not limited, a live change of the key changes the
measured rate, a bad value leaves the vif unlimited with one log line naming the key.

The limit is an upper bound, so ``<= 110%`` is asserted on every run; ``>= 90%`` needs
the machine to reach the rate at all: the rate is chosen from an unlimited run first
(100 Mbit/s, or lower on a slow or loaded machine) and a run that falls short may be
repeated (never one that is too fast)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bench.iperf import iperf_once
from ncd import layout
from tests.e2e.harness import Net

pytestmark = pytest.mark.skipif(shutil.which("iperf3") is None, reason="no iperf3 (setup.sh)")

MACS = {1: "00:16:3e:00:01:00", 2: "00:16:3e:00:02:00"}
SECONDS = 5  # per run, the first one omitted (slow start, the first interval's credit)
ATTEMPTS = 3  # runs that fall short of 90% (a loaded machine) may be repeated
INTERVAL_US = 50_000  # xl's default rate interval


def dom0_ip(g: int) -> str:
    return f"198.18.{g}.1"


def guest_ip(g: int) -> str:
    return f"198.18.{g}.2"


def rate_value(mbps: float) -> str:
    """libxl's ``rate`` for ``mbps`` Mbit/s at xl's 50 ms interval."""
    return f"{int(mbps * 1e6 / 8 * INTERVAL_US / 1e6)},{INTERVAL_US}"


@pytest.fixture(scope="module")
def net(sim_module, tmp_path_factory) -> Iterator[Net]:
    n = Net(sim_module, tmp_path_factory.mktemp("logs"))
    try:
        n.start(0, "backend")
        for g in (1, 2):
            n.start(g, "frontend")
            n.attach(g, 0, MACS[g])
        for g in (1, 2):
            n.wait_connected(g, 0)
            n.addr(0, f"ncvif{g}.0", f"{dom0_ip(g)}/24")
            n.addr(g, "nc0", f"{guest_ip(g)}/24")
        yield n
    finally:
        n.close()


def write_rate(net: Net, g: int, value: str | None) -> None:
    """The toolstack's way: xenstore-write (xenstore-rm) in dom0's backend entry."""
    key = f"{layout.backend_dir(0, g, 0)}/rate"
    cmd = ["xenstore-write", key, value] if value is not None else ["xenstore-rm", key]
    net.sim.run(0, cmd)


def wait_rate(net: Net, g: int, want: dict[str, Any] | None) -> None:
    def ok() -> bool:
        v = net.vif(0, g, 0)
        return v is not None and v.get("rate") == want

    net.wait(ok, 10, f"vif {g}/0 with rate {want}")


def iperf_mbps(net: Net, g: int) -> float:
    """Guest ``g`` sends to dom0 over its vif (the guest's transmit direction)."""
    for _ in range(3):
        res = iperf_once(
            net.sim.argv(0, []),
            net.sim.env(0),
            lambda argv, tmo: net.sim.run(g, argv, check=False, timeout=tmo),
            dom0_ip(g),
            SECONDS,
            ["-O", "1"],
        )
        if "end" in res:
            return float(res["end"]["sum_received"]["bits_per_second"]) / 1e6
    raise AssertionError(f"iperf3 from guest {g} failed: {res}")


def both(net: Net) -> tuple[float, float]:
    """Both guests at the same time."""
    got: dict[int, float] = {}
    errors: list[BaseException] = []

    def run(g: int) -> None:
        try:
            got[g] = iperf_mbps(net, g)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(g,)) for g in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return got[1], got[2]


def limited_run(net: Net, mbps: float, with_other: bool) -> tuple[float, float | None]:
    """Runs until one reaches 90% of ``mbps``; every run stays <= 110%."""
    seen: list[float] = []
    other = None
    for _ in range(ATTEMPTS):
        if with_other:
            m, other = both(net)
        else:
            m = iperf_mbps(net, 1)
        assert m <= 1.10 * mbps, f"vif 1 limited to {mbps} Mbit/s measured {m:.1f} ({seen})"
        seen.append(m)
        print(f"rate {mbps:g} Mbit/s: vif 1 {m:.1f}" + (f", vif 2 {other:.1f}" if other else ""))
        if m >= 0.90 * mbps:
            return m, other
    raise AssertionError(f"vif 1 limited to {mbps} Mbit/s reached only {seen} Mbit/s")


def spec(value: str) -> dict[str, Any]:
    b, u = (int(x) for x in value.split(","))
    return {"bytes": b, "usec": u, "bits_per_second": b * 8 * 1e6 / u}


def test_rate_limits_one_vif_live_and_not_the_other(net: Net) -> None:
    unlimited = iperf_mbps(net, 1)
    print(f"unlimited: vif 1 {unlimited:.1f} Mbit/s")
    # 100 Mbit/s as the issue asks, unless this machine (now) cannot clearly exceed it
    rate = 100.0 if unlimited >= 300 else max(5.0, round(unlimited / 4))
    value = rate_value(rate)
    write_rate(net, 1, value)
    wait_rate(net, 1, spec(value))
    m1, m2 = limited_run(net, rate, with_other=True)
    assert m2 is not None and m2 > 1.5 * rate, f"vif 2 (no rate) measured {m2:.1f} Mbit/s"
    st = {(v["domid"], v["devid"]): v for v in net.stats(0)["vifs"]}
    assert st[(1, 0)]["rate_limited_frames"] > 0 and st[(1, 0)]["rate_delay_usec"] > 0
    assert st[(2, 0)]["rate_limited_frames"] == 0
    assert (st[(1, 0)]["rate_bytes"], st[(1, 0)]["rate_usec"]) == tuple(
        int(x) for x in value.split(",")
    )
    # live: the key changes, the running channel follows (no reconnect)
    connected = net.vif(0, 1, 0)["connected_for"]  # type: ignore[index]
    slower = rate / 2
    value = rate_value(slower)
    write_rate(net, 1, value)
    wait_rate(net, 1, spec(value))
    limited_run(net, slower, with_other=False)
    assert net.vif(0, 1, 0)["connected_for"] >= connected  # type: ignore[index]
    log = net.daemons[0].log_text()
    assert f"rate limit now {value}" in log


def test_bad_rate_is_one_log_line_and_unlimited(net: Net) -> None:
    write_rate(net, 1, rate_value(10))
    wait_rate(net, 1, spec(rate_value(10)))
    write_rate(net, 1, "100Mb/s@50ms")  # xl's syntax is for ncctl, not the backend entry
    wait_rate(net, 1, None)
    key = f"{layout.backend_dir(0, 1, 0)}/rate"
    lines = [ln for ln in net.daemons[0].log_text().splitlines() if key in ln]
    assert len(lines) == 1 and "not BYTES,USEC" in lines[0], lines
    assert net.vif(0, 1, 0)["state"] == "Connected"  # type: ignore[index]
    assert iperf_mbps(net, 1) > 1.5 * 10
    write_rate(net, 1, None)  # key removed: unlimited, quietly
    wait_rate(net, 1, None)
    assert len([ln for ln in net.daemons[0].log_text().splitlines() if key in ln]) == 1
