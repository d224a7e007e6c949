"""ncd_vif_tracked_foreign_pages for a connected vif: the backend (which maps the
frontend's vchan) reports every page it mapped, equal to what the hypervisor counts as
mapped by dom0; the frontend (which only grants) reports 0."""

from __future__ import annotations

import re
import sys

from ncd.vchan.channel import grants_needed
from tests.e2e.harness import Net

MAC = "00:16:3e:00:07:00"
RING = 131072  # the default ring_bytes each way


def _tracked(net: Net, domid: int) -> float | None:
    code = ("import urllib.request;print(urllib.request.urlopen("
            f"'http://127.0.0.1:{net.metrics_port}/metrics',timeout=5).read().decode())")
    text = net.sim.run(domid, [sys.executable, "-c", code]).stdout
    m = re.search(r'^ncd_vif_tracked_foreign_pages\{([^}]*)\} (\S+)$', text, re.M)
    if m is None:
        return None
    labels = dict(kv.split("=", 1) for kv in m.group(1).split(","))
    assert labels["domid"] == '"1"' and labels["devid"] == '"0"'
    return float(m.group(2))


def test_tracked_foreign_pages_metric(net: Net) -> None:
    net.start(0, "backend")
    net.start(1, "frontend")
    net.attach(1, 0, MAC)
    net.wait_connected(1, 0)
    per_queue = grants_needed(RING, RING)  # control page + 32 + 32 ring pages
    assert per_queue == 65
    pages = per_queue * net.vif(0, 1, 0)["queues"]  # one vchan per queue
    assert _tracked(net, 0) == pages
    assert net.broker_stats()[0]["mapped_pages"] == pages  # what the hypervisor says
    assert _tracked(net, 1) == 0  # the frontend grants, it maps nothing foreign
    be = [v for v in net.stats(0)["vifs"] if (v["domid"], v["devid"]) == (1, 0)]
    assert be and be[0]["tracked_foreign_pages"] == pages
