"""The backend entry's ``rate`` on a vif that is a port of the in-daemon switch (no
pump: the switch thread reads the guest's ring): the same limit, applied by the switch,
measured guest to guest with iperf3; the other port is not limited.

The same bounds as a TAP vif's (tests/e2e/ratecheck.py): <= 110% on every run, >= 90%
on one of up to three. A refill lets one interval's credit (625 kB at 100 Mbit/s)
through at once into a 128 KiB destination ring; the switch holds what does not fit
(docs/forwarding.md, "Full destinations") and charges a held frame once, when it goes
(charging it in every round of the hold gave 74-78% of the rate): 98-100% measured."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net
from tests.e2e.ratecheck import (
    choose_rate,
    iperf_mbps,
    limited_run,
    rate_value,
    spec,
    wait_rate,
    write_rate,
)
from tests.simworld import SimWorld

pytestmark = pytest.mark.skipif(shutil.which("iperf3") is None, reason="no iperf3 (setup.sh)")

MACS = {1: "00:16:3e:0b:00:01", 2: "00:16:3e:0b:00:02"}


def gip(g: int) -> str:
    return f"198.18.11.{g}"


@pytest.fixture(scope="module")
def swnet(sim_module: SimWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(sim_module, tmp_path_factory.mktemp("logs"))
    try:
        n.start(0, "backend")
        for g in (1, 2):
            n.start(g, "frontend")
            n.ncctl("attach", str(g), "--devid", "0", "--mac", MACS[g], "--switch", "sw0")
        for g in (1, 2):
            n.wait_connected(g, 0)
            n.addr(g, "nc0", f"{gip(g)}/24")
        yield n
    finally:
        n.close()


def test_rate_limits_a_switch_port(swnet: Net) -> None:
    def one_to_two() -> float:
        return iperf_mbps(swnet, 1, 2, gip(2))

    rate = choose_rate(one_to_two())
    value = rate_value(rate)
    write_rate(swnet, 1, value)
    wait_rate(swnet, 1, spec(value))
    limited_run(rate, lambda: (one_to_two(), None))
    back = iperf_mbps(swnet, 2, 1, gip(1))  # 2 -> 1: port 2 has no rate
    assert back > 1.5 * rate, f"vif 2 (no rate) measured {back:.1f} Mbit/s"
    st = {(v["domid"], v["devid"]): v for v in swnet.stats(0)["vifs"]}
    assert st[(1, 0)]["rate_limited_frames"] > 0
    assert st[(2, 0)]["rate_limited_frames"] == 0
    # live, on the switch port too: unlimited again
    write_rate(swnet, 1, None)
    wait_rate(swnet, 1, None)
    assert one_to_two() > 1.5 * rate
