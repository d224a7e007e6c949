"""Command set (tests/domproc.py) that runs Python snippets inside a simulated domain.

``run CODE``: CODE is a JSON string; the snippet runs in a namespace that persists
across requests (``ncd.xen``'s and ``tests.xenbind``'s names, ``aio``, ``asyncio``,
``errno``, ``os`` imported: ``PRELUDE``)
and may set ``result``, the reply's ``result``. A failure is domproc's error reply
(``type``, ``errno``, ``call``, ``message``).
"""

from __future__ import annotations

import json
from typing import Any

from tests.domproc import whole_line

PRELUDE = """
import asyncio, errno, os
from ncd.xen import *
from ncd.xen import aio
from tests.xenbind.evtchn import AsyncEvtchn, Evtchn
from tests.xenbind.gntshr import Gntshr, SharedPages
from tests.xenbind.gnttab import CopySegment, Gnttab, GrantRef, GrantStatus
from tests.xenbind.mapping import PAGE_SIZE, Mapping, MappingReleasedError
"""


class Agent:
    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__agent__"}
        exec(PRELUDE, self.ns)

    @whole_line
    def cmd_run(self, code: str) -> dict[str, Any]:
        self.ns.pop("result", None)
        exec(json.loads(code), self.ns)
        return {"result": self.ns.get("result")}
