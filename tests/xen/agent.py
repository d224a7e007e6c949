"""Command set (tests/domproc.py) that runs Python snippets inside a simulated domain.

``run CODE``: CODE is a JSON string; the snippet runs in a namespace that persists
across requests (``ncd.xen``'s names, ``aio``, ``asyncio``, ``errno``, ``os`` imported)
and may set ``result``, the reply's ``result``. A failure is domproc's error reply
(``type``, ``errno``, ``call``, ``message``).
"""

from __future__ import annotations

import json
from typing import Any

from tests.domproc import whole_line


class Agent:
    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__agent__"}
        exec("import asyncio, errno, os\nfrom ncd.xen import *\nfrom ncd.xen import aio", self.ns)

    @whole_line
    def cmd_run(self, code: str) -> dict[str, Any]:
        self.ns.pop("result", None)
        exec(json.loads(code), self.ns)
        return {"result": self.ns.get("result")}
