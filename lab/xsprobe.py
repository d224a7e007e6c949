"""Ask the real xenstored what a guest may do: one JSON line per probe (run in the guest).

Runs inside the lab images through ncd's own libxenstore binding, so the errno each
refusal carries is the one ncd sees. ``python3 /lab/xsprobe.py DOMID``.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from typing import Any

from ncd.xen.errors import XenError
from ncd.xen.xenstore import Perm, XenStore


def probe(name: str, fn: Callable[[], Any]) -> None:
    try:
        value = fn()
        out = {"probe": name, "ok": True, "value": value if value is None else str(value)}
    except XenError as exc:
        out = {"probe": name, "ok": False, "errno": errno.errorcode.get(exc.errno or 0, "?")}
    except (OSError, ValueError) as exc:
        out = {"probe": name, "ok": False, "error": repr(exc)}
    print(json.dumps(out), flush=True)


def main(domid: int) -> int:
    home = f"/local/domain/{domid}"
    with XenStore() as xs:
        probe("read own name (relative path)", lambda: xs.read("name"))
        probe("read missing node in own home", lambda: xs.read("no-such-node"))
        probe("read /local/domain/0/name", lambda: xs.read("/local/domain/0/name"))
        probe("read missing node in dom0's home", lambda: xs.read("/local/domain/0/no-such-node"))
        probe("list /local/domain", lambda: xs.directory("/local/domain"))
        probe("list /local/domain/0", lambda: xs.directory("/local/domain/0"))
        probe("perms of own home", lambda: xs.get_perms(home))
        probe("perms of data/", lambda: xs.get_perms("data"))
        probe("perms of device/", lambda: xs.get_perms("device"))
        probe("write own home (not data/)", lambda: xs.write("labprobe", "x"))
        probe("write data/labprobe", lambda: xs.write("data/labprobe", "x"))
        probe("perms of a node the guest created in data/", lambda: xs.get_perms("data/labprobe"))
        probe("write under device/ (toolstack-owned)", lambda: xs.write("device/labprobe", "x"))
        probe("write /tool/labprobe", lambda: xs.write("/tool/labprobe", "x"))
        probe(
            "write /local/domain/0/data/labprobe",
            lambda: xs.write("/local/domain/0/data/labprobe", "x"),
        )
        probe(
            "set perms n<self>,r0 on own node",
            lambda: xs.set_perms("data/labprobe", [Perm(domid, "n"), Perm(0, "r")]),
        )
        probe("perms after set", lambda: xs.get_perms("data/labprobe"))
        probe(
            "set perms giving ownership to dom0",
            lambda: xs.set_perms("data/labprobe", [Perm(0, "n"), Perm(domid, "b")]),
        )
        probe("perms after giving away", lambda: xs.get_perms("data/labprobe"))
        probe("write after giving away", lambda: xs.write("data/labprobe", "y"))
        probe("rm after giving away", lambda: xs.rm("data/labprobe"))
        for size in (1024, 2000, 2048, 3000, 4000):
            probe(
                f"write a {size}-byte value in data/",
                lambda size=size: xs.write("data/labsize", "v" * size),
            )
        probe("rm data/labsize", lambda: xs.rm("data/labsize"))
        probe("get_domain_path(0)", lambda: xs.get_domain_path(0))
        probe("get_domain_path(999)", lambda: xs.get_domain_path(999))
        probe("rm missing node in own data/", lambda: xs.rm("data/no-such-node"))

        def transaction() -> str:
            t = xs.transaction_start()
            t.write("data/labtx", "1")
            t.commit()
            return xs.read("data/labtx")

        probe("transaction write+commit", transaction)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
