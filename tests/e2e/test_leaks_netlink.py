"""The daemon's long-lived netlink socket must not pile up memory per attach/detach.

pyroute2 files replies no request waits for (one late ACK per configured TAP) in a
queue nobody reads; ``ncd.daemon.netlink`` empties it after every call. Each stray
reply pinned heap memory: RSS grew ~1.8 kB per TAP set up and removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CYCLES = 600

DRIVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from ncd.daemon import netlink
    from ncd.daemon.vif import open_persistent_tap

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    async def cycle():  # what a backend vif does with its TAP from attach to detach
        tap = open_persistent_tap("nclk0")
        await netlink.configure("nclk0", mac="00:16:3e:00:01:00", mtu=1500, bridge="nclkbr")
        tap.set_persist(False)
        tap.close()
        await netlink.delete("nclk0")  # gone already unless persistent, as in Vif._close_tap

    async def main():
        n = int(sys.argv[1])
        # warm-up: caches and allocator arenas fill for the first ~1000 cycles (RSS
        # +1-2 MB, then flat); a leak keeps growing after that
        for _ in range(1000):
            await cycle()
        r0 = rss_kb()
        for _ in range(n):
            await cycle()
        r1 = rss_kb()
        queued = await netlink.call(lambda: netlink._local.ipr.asyncore.msg_queue.root.qsize())
        print(json.dumps({"queued": queued, "rss_kb_per_cycle": (r1 - r0) / n}))

    asyncio.run(main())
    """
)


def test_tap_cycles_leave_no_stray_netlink_replies(netns_root: None) -> None:
    ns = f"ncdt{os.getpid()}-nl"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:  # a bridge port: the operation that goes through pyroute2
        subprocess.run(["ip", "-n", ns, "link", "add", "nclkbr", "type", "bridge"], check=True)
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", DRIVER, str(CYCLES)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    # before the fix: one reply queued per cycle and RSS +1.8 kB per cycle, without end
    assert res["queued"] == 0, res
    assert res["rss_kb_per_cycle"] < 0.5, res
