"""Test side of tests/xen/agent.py: drive Python code running as a simulated domain."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.simworld import SimWorld

AGENT = Path(__file__).with_name("agent.py")


class AgentError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply['error']}: {reply['message']}")
        self.reply = reply
        self.type: str = reply["error"]
        self.errno: int | None = reply["errno"]
        self.call: str | None = reply["call"]
        self.message: str = reply["message"]


class Peer:
    """A Python process running as domain ``domid`` of ``sim``."""

    def __init__(self, sim: SimWorld, domid: int) -> None:
        self.domid = domid
        self.proc = sim.popen(
            domid,
            [sys.executable, "-u", str(AGENT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(AGENT.parents[2]),
        )

    def send(self, code: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"code": textwrap.dedent(code)}) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait(timeout=10)
            raise AssertionError(f"dom{self.domid} agent died (exit status {rc})")
        reply = json.loads(line)
        if "error" in reply:
            raise AgentError(reply)
        return reply["result"]

    def run(self, code: str) -> Any:
        self.send(code)
        return self.recv()

    def error(self, code: str) -> AgentError:
        """Run ``code``, which must fail; the failure as the agent reported it."""
        try:
            result = self.run(code)
        except AgentError as exc:
            return exc
        raise AssertionError(f"dom{self.domid}: expected an error, got {result!r}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
