"""A stack of undo actions (mirage-net-xen's ``Cleanup``): every acquisition pushes its undo.

``await stack.close()`` runs the undo actions newest first, each exactly once, and
carries on when one raises (logged); closing again does nothing. So one ``close`` is
the normal teardown and the error unwind alike, whatever was acquired by then. An
undo action is a plain callable or returns an awaitable (which is awaited); a stack's
``close`` may itself be pushed onto another stack, for resources with a shorter life.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("ncd.undo")

Undo = Callable[[], Awaitable[None] | None]


class UndoStack:
    """Undo actions of one owner (named in the logs), run in reverse order by :meth:`close`."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._undo: list[tuple[str, Undo]] = []

    def push(self, what: str, undo: Undo) -> None:
        """Register ``undo`` for something just acquired (``what`` names it in the logs)."""
        self._undo.append((what, undo))

    def __len__(self) -> int:
        return len(self._undo)

    async def close(self) -> None:
        """Run every undo action, newest first. One that raises is logged and the rest
        still run; a cancellation (or other BaseException) arriving meanwhile is
        re-raised once all of them ran."""
        pending: BaseException | None = None
        while self._undo:
            what, undo = self._undo.pop()  # popped first: runs once even if re-entered
            try:
                result = undo()
                if inspect.isawaitable(result):
                    await result
            except OSError as exc:
                log.warning("%s: undoing %s: %s", self.owner, what, exc)
            except Exception:
                log.exception("%s: undoing %s failed", self.owner, what)
            except BaseException as exc:  # CancelledError: finish the unwind first
                pending = pending or exc
        if pending is not None:
            raise pending
