"""A process acting as domain N that obeys line commands: the one helper for tests and benches.

Test side, :class:`DomProc`: starts a program as a domain, writes one command a line and
reads one reply a line, with a timeout; when the process dies or goes quiet the error
names the domain, the command and what the process wrote on stderr (when logged to a
file). The program is either

* a Python **command set** served by this module,
  ``python -m tests.domproc MODULE:CLASS [ARG...]`` (see :meth:`DomProc.python`), or
* any program that speaks the same framing with replies of words, ``ok ...`` /
  ``err ...`` (``words=True``), e.g. the C helper cext/xensim/tests/xsim_helper.c.

The protocol of a command set: a request is ``NAME ARG...``; ``CLASS(*ARGS)`` runs
``cmd_NAME(*ARGS)`` (a method marked :func:`whole_line` gets the rest of the line as one
string instead) and answers one JSON object: ``{"ok": true, ...what it returned}``, or,
when it raised, ``{"ok": false, "error": MESSAGE, "errno": N|null, "type": EXCEPTION,
"call": CALL|null, "message": str(exc)}`` (traceback on stderr; the set serves on). A
user extends the set by defining ``cmd_*`` methods (or subclassing a set). Every set
answers ``pid``; ``quit`` or end of input calls the set's ``close()`` (if it has one) and
ends the process without a reply.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20.0

F = TypeVar("F", bound=Callable[..., Any])

# ---- the domain side ------------------------------------------------------------------------


def whole_line(fn: F) -> F:
    """Mark a ``cmd_*`` method that takes the rest of the request line as one string."""
    fn.whole_line = True  # type: ignore[attr-defined]
    return fn


def error_reply(exc: BaseException) -> dict[str, Any]:
    message = str(exc)
    return {
        "ok": False,
        "error": message if isinstance(exc, OSError) else f"{type(exc).__name__}: {message}",
        "errno": getattr(exc, "errno", None),
        "type": type(exc).__name__,
        "call": getattr(exc, "call", None),
        "message": message,
    }


def answer(obj: Any, line: str) -> str:
    """The reply line (without newline) of command set ``obj`` to request ``line``."""
    name, _, rest = line.partition(" ")
    try:
        if name == "pid":
            result: dict[str, Any] | None = {"pid": os.getpid()}
        else:
            fn = getattr(obj, f"cmd_{name}", None)
            if fn is None:
                raise ValueError(f"unknown command {name!r}")
            result = fn(rest) if getattr(fn, "whole_line", False) else fn(*rest.split())
        return json.dumps({"ok": True, **(result or {})})
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which decides
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        return json.dumps(error_reply(exc))


def serve(obj: Any) -> None:
    """Answer requests from stdin until ``quit`` or end of input, then ``obj.close()``."""
    try:
        for raw in sys.stdin:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if line.split()[0] == "quit":
                break
            sys.stdout.write(answer(obj, line) + "\n")
            sys.stdout.flush()
    finally:
        close = getattr(obj, "close", None)
        if close is not None:
            close()


def main(argv: list[str]) -> int:
    spec, *args = argv
    module, _, name = spec.partition(":")
    serve(getattr(importlib.import_module(module), name)(*args))
    return 0


# ---- the test side --------------------------------------------------------------------------


def python_argv(world: Any, domid: int, spec: str, *args: str,
                env_extra: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment that serve command set ``spec`` (``MODULE:CLASS``) as domain
    ``domid`` of a xensim world (a :class:`xensim.world.World` or a tests ``SimWorld``)."""
    w = getattr(world, "world", world)
    env = {**w.exec_env(domid), **(env_extra or {})}
    argv = w.exec_argv(domid, [sys.executable, "-u", "-m", "tests.domproc", spec, *args])
    return argv, env


class DomProc:
    """One process acting as a domain, driven one command line at a time."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        name: str,
        words: bool = False,
        errlog: Path | None = None,
        timeout: float = TIMEOUT,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.words = words
        self.timeout = timeout
        self.errlog = errlog
        self._err = open(errlog, "wb") if errlog is not None else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            list(argv), env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._err, preexec_fn=preexec_fn,
        )
        self.pid = self.proc.pid
        self._buf = b""

    @classmethod
    def python(cls, world: Any, domid: int, spec: str, *args: str,
               env_extra: dict[str, str] | None = None, **kw: Any) -> DomProc:
        """Command set ``spec`` (``MODULE:CLASS``, built with ``args``) as domain ``domid``."""
        argv, env = python_argv(world, domid, spec, *args, env_extra=env_extra)
        return cls(argv, env, name=f"dom{domid}", **kw)

    # -- lines
    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float | None = None, what: str = "a reply") -> Any:
        """The next reply line: a dict (JSON), or its words with ``words=True``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"{self.name}: no reply to {what}{self._note()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"{self.name}: helper exited (rc {self.proc.poll()}) on {what}"
                               f"{self._note()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n", 1)
        text = raw.decode()
        return text.split() if self.words else json.loads(text)

    def is_ok(self, reply: Any) -> bool:
        return reply[:1] == ["ok"] if self.words else reply.get("ok") is True

    def cmd(self, line: str, timeout: float | None = None) -> Any:
        """Send ``line``, return its reply unchecked."""
        self.send(line)
        return self.reply(timeout, repr(line))

    def call(self, line: str, check: bool = True, timeout: float | None = None) -> Any:
        """Send ``line``, return its reply; with ``check`` it must have succeeded."""
        r = self.cmd(line, timeout)
        if check and not self.is_ok(r):
            raise AssertionError(f"{self.name}: {line!r} -> {r}{self._note()}")
        return r

    def ok(self, line: str, timeout: float | None = None) -> Any:
        """The reply of a command that must succeed (with words: the words after ``ok``)."""
        r = self.call(line, True, timeout)
        return r[1:] if self.words else r

    def err(self, line: str, timeout: float | None = None) -> Any:
        """The error of a command that must fail (with words: the word after ``err``)."""
        r = self.cmd(line, timeout)
        failed = r[:1] == ["err"] if self.words else r.get("ok") is False
        assert failed, f"{self.name}: {line!r} should fail, got {r}"
        return r[1] if self.words else r["error"]

    # -- the process
    def stderr(self) -> str:
        """What the process wrote on stderr so far (with ``errlog``)."""
        if self._err is None or self.errlog is None:
            return ""
        if not self._err.closed:
            self._err.flush()
        return self.errlog.read_text(errors="replace")

    def _note(self) -> str:
        err = self.stderr()
        return f"; stderr: {err[-2000:]}" if err else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self, timeout: float = 15) -> int:
        """End of input (the process finishes and exits), killed if it does not; its
        exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if self._err is not None:
            self._err.close()
        return self.proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
