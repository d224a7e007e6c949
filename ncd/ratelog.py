"""Rate-limited logging of the lines a peer causes, one token bucket per vif.

The other domain decides how often a vif fails, reconnects or goes down: logged
line for line, a peer flapping its xenbus state would write as fast as it writes
xenstore (dom0's journal and disk are shared by every guest). A :class:`RateLog`
lets ``burst`` lines through, then one per ``every`` seconds; what it drops is
counted and reported in one line (``vif 3/0: 482 similar messages suppressed``)
with the next line it lets through, at most every ``every`` seconds while the
peer keeps it busy, and on :meth:`RateLog.flush` (the vif's end). As the kernel's
``printk_ratelimit`` and journald's ``RateLimitBurst``, but per source.
Time is an input (``clock``), for the tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

BURST = 10  # lines let through at once
EVERY = 5.0  # seconds per line after the burst (and between suppression reports)


class RateLog:
    """The peer-caused lines of one vif (``name`` prefixes the suppression report)."""

    def __init__(
        self,
        logger: logging.Logger,
        name: str,
        *,
        burst: int = BURST,
        every: float = EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or every <= 0:
            raise ValueError(f"rate log: burst {burst} / every {every}s must be positive")
        self.logger = logger
        self.name = name
        self.burst = burst
        self.every = every
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._reported = self._last
        self.suppressed = 0  # dropped since the last report
        self.suppressed_total = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` if the bucket allows; True if it was logged."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) / self.every)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._report(now)
            self.logger.log(level, msg, *args)
            return True
        self.suppressed += 1
        self.suppressed_total += 1
        if now - self._reported >= self.every:
            self._report(now)
        return False

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, msg, *args)

    def flush(self) -> None:
        """Report what was suppressed and not reported yet (the vif ends)."""
        self._report(self._clock())

    def _report(self, now: float) -> None:
        self._reported = now
        if self.suppressed:
            n, self.suppressed = self.suppressed, 0
            self.logger.warning("%s: %d similar messages suppressed", self.name, n)
