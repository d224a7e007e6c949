"""The backend entry's ``rate`` (libxl's ``BYTES,USEC``) on xensim, on TAP vifs (the
pump): iperf3 from a guest through a rate-limited vif measures the rate (within 10%,
see ratecheck.py), another vif of the same backend at the same time is not limited, a
live change of the key changes the measured rate, a bad value leaves the vif unlimited
with one log line naming the key. Switch ports: test_rate_switch.py."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net, dom0_ip, two_guests
from tests.e2e.ratecheck import (
    choose_rate,
    iperf_mbps,
    limited_run,
    rate_key,
    rate_value,
    spec,
    wait_rate,
    write_rate,
)

pytestmark = pytest.mark.skipif(shutil.which("iperf3") is None, reason="no iperf3 (setup.sh)")



@pytest.fixture(scope="module")
def net(sim_module, tmp_path_factory) -> Iterator[Net]:
    with two_guests(sim_module, tmp_path_factory.mktemp("logs")) as n:
        yield n


def both(net: Net) -> tuple[float, float]:
    """Both guests at the same time."""
    got: dict[int, float] = {}
    errors: list[BaseException] = []

    def run(g: int) -> None:
        try:
            got[g] = iperf_mbps(net, g, 0, dom0_ip(g))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(g,)) for g in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return got[1], got[2]


def test_rate_limits_one_vif_live_and_not_the_other(net: Net) -> None:
    unlimited = iperf_mbps(net, 1, 0, dom0_ip(1))
    print(f"unlimited: vif 1 {unlimited:.1f} Mbit/s")
    rate = choose_rate(unlimited)
    value = rate_value(rate)
    write_rate(net, 1, value)
    wait_rate(net, 1, spec(value))
    _, m2 = limited_run(rate, lambda: both(net))
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
    limited_run(slower, lambda: (iperf_mbps(net, 1, 0, dom0_ip(1)), None))
    assert net.vif(0, 1, 0)["connected_for"] >= connected  # type: ignore[index]
    log = net.daemons[0].log_text()
    assert f"rate limit now {value}" in log


def test_bad_rate_is_one_log_line_and_unlimited(net: Net) -> None:
    write_rate(net, 1, rate_value(10))
    wait_rate(net, 1, spec(rate_value(10)))
    write_rate(net, 1, "100Mb/s@50ms")  # xl's syntax is for ncctl, not the backend entry
    wait_rate(net, 1, None)
    key = rate_key(1)
    lines = [ln for ln in net.daemons[0].log_text().splitlines() if key in ln]
    assert len(lines) == 1 and "not BYTES,USEC" in lines[0], lines
    assert net.vif(0, 1, 0)["state"] == "Connected"  # type: ignore[index]
    assert iperf_mbps(net, 1, 0, dom0_ip(1)) > 1.5 * 10
    write_rate(net, 1, None)  # key removed: unlimited, quietly
    wait_rate(net, 1, None)
    assert len([ln for ln in net.daemons[0].log_text().splitlines() if key in ln]) == 1


def test_rate_is_read_at_connect(net: Net) -> None:
    """A backend that starts with the key already there (here: restarted after a
    crash, its vifs connect again) limits from the first frame."""
    value = rate_value(20)
    write_rate(net, 1, value)
    wait_rate(net, 1, spec(value))
    old = net.daemons[0]
    net.kill9(old)
    new = net.restart(old)
    net.wait_connected(1, 0, timeout=30)
    wait_rate(net, 1, spec(value))
    assert f"rate limit {value} (20 Mbit/s) on what the guest sends" in new.log_text()
    m = iperf_mbps(net, 1, 0, dom0_ip(1))
    assert m <= 1.10 * 20, f"limited to 20 Mbit/s from the start, measured {m:.1f}"
    write_rate(net, 1, None)
    wait_rate(net, 1, None)
