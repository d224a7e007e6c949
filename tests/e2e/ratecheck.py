"""Helpers of the rate-limit tests on xensim (test_rate.py, test_rate_switch.py): the
backend entry's ``rate`` written as the toolstack does, iperf3 runs, the 10% check.

The limit is an upper bound, so ``<= 110%`` is asserted on every run; ``>= 90%`` needs
the machine to reach the rate at all: the rate is chosen from an unlimited run first
(100 Mbit/s, or lower on a slow or loaded machine) and a run that falls short may be
repeated (never one that is too fast)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.iperf import iperf_once
from ncd import layout
from tests.e2e.harness import Net

SECONDS = 5  # per run, the first one omitted (slow start, the first interval's credit)
ATTEMPTS = 3  # runs that fall short of 90% (a loaded machine) may be repeated
INTERVAL_US = 50_000  # xl's default rate interval


def rate_value(mbps: float) -> str:
    """libxl's ``rate`` for ``mbps`` Mbit/s at xl's 50 ms interval."""
    return f"{int(mbps * 1e6 / 8 * INTERVAL_US / 1e6)},{INTERVAL_US}"


def spec(value: str) -> dict[str, Any]:
    """How ``ncctl list --json`` shows the rate ``value`` in effect."""
    b, u = (int(x) for x in value.split(","))
    return {"bytes": b, "usec": u, "bits_per_second": b * 8 * 1e6 / u}


def rate_key(g: int) -> str:
    return f"{layout.backend_dir(0, g, 0)}/rate"


def write_rate(net: Net, g: int, value: str | None) -> None:
    """The toolstack's way: xenstore-write (xenstore-rm) in dom0's backend entry."""
    cmd = (
        ["xenstore-write", rate_key(g), value]
        if value is not None
        else ["xenstore-rm", rate_key(g)]
    )
    net.sim.run(0, cmd)


def wait_rate(net: Net, g: int, want: dict[str, Any] | None) -> None:
    def ok() -> bool:
        v = net.vif(0, g, 0)
        return v is not None and v.get("rate") == want

    net.wait(ok, 10, f"vif {g}/0 with rate {want}")


def iperf_mbps(net: Net, g: int, server: int, server_ip: str) -> float:
    """Guest ``g`` sends to an iperf3 server at ``server_ip`` in domain ``server``."""
    res: dict[str, Any] = {}
    for _ in range(3):
        res = iperf_once(
            net.sim.argv(server, []),
            net.sim.env(server),
            lambda argv, tmo: net.sim.run(g, argv, check=False, timeout=tmo),
            server_ip,
            SECONDS,
            ["-O", "1"],
        )
        if "end" in res:
            return float(res["end"]["sum_received"]["bits_per_second"]) / 1e6
    raise AssertionError(f"iperf3 from guest {g} to {server_ip} failed: {res}")


def choose_rate(unlimited: float) -> float:
    """100 Mbit/s as the issue asks, unless this machine (now) cannot clearly exceed it."""
    return 100.0 if unlimited >= 300 else max(5.0, round(unlimited / 4))


def limited_run(
    mbps: float, measure: Callable[[], tuple[float, float | None]], low: float = 0.90
) -> tuple[float, float | None]:
    """Runs until one reaches ``low`` (90%) of ``mbps``; every run stays <= 110%."""
    seen: list[float] = []
    for _ in range(ATTEMPTS):
        m, other = measure()
        assert m <= 1.10 * mbps, f"limited to {mbps} Mbit/s, measured {m:.1f} ({seen})"
        seen.append(m)
        print(f"rate {mbps:g} Mbit/s: {m:.1f}" + (f", the other {other:.1f}" if other else ""))
        if m >= low * mbps:
            return m, other
    raise AssertionError(f"limited to {mbps} Mbit/s, reached only {seen} Mbit/s")
