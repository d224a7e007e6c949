"""The per-vif rate limit of peer-caused log lines (ncd/ratelog.py), on a fake clock."""

from __future__ import annotations

import logging

import pytest

from ncd.ratelog import RateLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_burst_then_one_per_interval_with_the_suppressed_counted(caplog):
    clock = Clock()
    rl = RateLog(logging.getLogger("t.ratelog"), "vif 3/0", burst=10, every=5.0, clock=clock)
    caplog.set_level(logging.INFO, "t.ratelog")
    # a peer flapping at 70 lines a second for 20 s
    for _ in range(20 * 70):
        rl.warning("vif 3/0: failed (ill_timed): %s", "backend state Closed while Connected")
        clock.now += 1 / 70
    rl.flush()
    out = lines(caplog)
    passed = [ln for ln in out if "failed" in ln]
    reports = [ln for ln in out if "similar messages suppressed" in ln]
    assert 10 <= len(passed) <= 10 + 20 / 5.0 + 1  # the burst, then one per 5 s
    assert 1 <= len(reports) <= 20 / 5.0 + 2
    total = sum(int(ln.split(": ")[1].split()[0]) for ln in reports)
    assert total == 20 * 70 - len(passed)  # every dropped line is counted, once
    assert all(ln.startswith("vif 3/0: ") for ln in reports)


def test_a_quiet_peer_is_not_limited(caplog):
    clock = Clock()
    rl = RateLog(logging.getLogger("t.ratelog"), "vif 1/0", burst=3, every=1.0, clock=clock)
    caplog.set_level(logging.INFO, "t.ratelog")
    for i in range(50):
        assert rl.info("vif 1/0: connected %d", i)
        clock.now += 1.0
    rl.flush()
    assert len(lines(caplog)) == 50 and rl.suppressed_total == 0


def test_the_bucket_refills(caplog):
    clock = Clock()
    rl = RateLog(logging.getLogger("t.ratelog"), "vif 2/0", burst=2, every=1.0, clock=clock)
    caplog.set_level(logging.INFO, "t.ratelog")
    assert [rl.info("x") for _ in range(3)] == [True, True, False]
    clock.now += 2.0
    assert rl.info("y")  # refilled: the report of the one suppressed goes first
    assert lines(caplog) == ["x", "x", "vif 2/0: 1 similar messages suppressed", "y"]


@pytest.mark.parametrize("burst,every", [(0, 1.0), (1, 0.0)])
def test_bad_parameters_are_refused(burst, every):
    with pytest.raises(ValueError, match="must be positive"):
        RateLog(logging.getLogger("t"), "x", burst=burst, every=every)
