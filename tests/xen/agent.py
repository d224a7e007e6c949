"""Runs inside a simulated domain: executes Python snippets sent by a test, one per line.

Protocol (JSON lines): request ``{"code": "..."}``; the snippet runs in a namespace that
persists across requests and may set ``result``; the reply is ``{"result": ...}`` or
``{"error": TYPE, "errno": N, "call": CALL, "message": STR}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any


def main() -> None:
    ns: dict[str, Any] = {"__name__": "__agent__"}
    exec("import asyncio, errno, os\nfrom ncd.xen import *\nfrom ncd.xen import aio", ns)
    for line in sys.stdin:
        req = json.loads(line)
        ns.pop("result", None)
        try:
            exec(req["code"], ns)
            reply: dict[str, Any] = {"result": ns.get("result")}
            json.dumps(reply)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            traceback.print_exc(file=sys.stderr)
            reply = {
                "error": type(exc).__name__,
                "errno": getattr(exc, "errno", None),
                "call": getattr(exc, "call", None),
                "message": str(exc),
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
