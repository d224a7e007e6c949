"""Test side of tests/xen/agent.py: drive Python code running as a simulated domain."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from tests.domproc import DomProc, python_argv
from tests.simworld import SimWorld


class AgentError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply['type']}: {reply['message']}")
        self.reply = reply
        self.type: str = reply["type"]
        self.errno: int | None = reply["errno"]
        self.call: str | None = reply["call"]
        self.message: str = reply["message"]


class Peer(DomProc):
    """A Python process running as domain ``domid`` of ``sim`` (tests.xen.agent)."""

    def __init__(self, sim: SimWorld, domid: int) -> None:
        self.domid = domid
        argv, env = python_argv(sim, domid, "tests.xen.agent:Agent")
        super().__init__(argv, env, name=f"dom{domid} agent", timeout=120)

    def submit(self, code: str) -> None:
        """Start running ``code``; :meth:`result` waits for it."""
        self.send("run " + json.dumps(textwrap.dedent(code)))

    def result(self) -> Any:
        reply = self.reply(what="a snippet")
        if not reply["ok"]:
            raise AgentError(reply)
        return reply["result"]

    def run(self, code: str) -> Any:
        self.submit(code)
        return self.result()

    def error(self, code: str) -> AgentError:
        """Run ``code``, which must fail; the failure as the agent reported it."""
        try:
            result = self.run(code)
        except AgentError as exc:
            return exc
        raise AssertionError(f"dom{self.domid}: expected an error, got {result!r}")
