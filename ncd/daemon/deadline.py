"""One event-loop timer kept at a state machine's next deadline (aioquic's asyncio adapter).

The machine says when it wants :meth:`handle_timer` (``get_timer()``); the adapter
calls :meth:`DeadlineTimer.set` with that after every step, which (re)arms a loop
timer only when the deadline changed. When it fires, ``wake`` runs (the vif pokes
itself), and :meth:`DeadlineTimer.expired` hands back the deadline once, so the
caller can tell the machine a ``now`` no earlier than it: a loop may run a timer
slightly before its time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    """A loop timer at one deadline (loop time), or none."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None  # the deadline armed (or fired and not yet taken)

    def set(self, at: float | None) -> None:
        """Arm at ``at`` (None: disarm); nothing changes if ``at`` is the current one."""
        if at == self._at:
            return
        self.cancel()
        self._at = at
        if at is not None:
            self._handle = asyncio.get_running_loop().call_at(at, self._fired)

    def _fired(self) -> None:
        self._handle = None
        self._wake()

    def expired(self) -> float | None:
        """The deadline the timer fired for, once; None while armed or disarmed."""
        if self._at is None or self._handle is not None:
            return None
        at, self._at = self._at, None
        return at

    def cancel(self) -> None:
        handle, self._handle, self._at = self._handle, None, None
        if handle is not None:
            handle.cancel()
