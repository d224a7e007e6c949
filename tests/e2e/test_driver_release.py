"""A driver domain outlives the destroy of a guest it backs (the lab's ``driver_release``).

dom0 ``ncd backend`` with bridge br0; domain 1 ``ncd driver --uplink-switch up``, its
uplink a trunk vif on br0; domain 2 ``ncd frontend`` attached ``--backend 1 --switch
up``. Destroying domain 2 (``ncd-sim destroy``) removes its home, so domain 1 reading
anything there gets ``EACCES`` (the nearest existing ancestor, ``/local/domain``, is
dom0's; real Xen's xenstored answers the same, docs/lab.md). Domain 1's daemon must
keep running, release the vif with one line saying why, and back a new guest (domain 3,
created afterwards) through to Connected and ping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import PY, Daemon, Net
from tests.needs import require_root
from tests.simworld import SimWorld

from .test_forwarding import MAC, check_tracker

BR = "198.18.20.1"


@pytest.fixture
def hop(tmp_path: Any) -> Iterator[Net]:
    require_root("a xensim world: network namespaces")
    sim = SimWorld(tmp_path / "world", domains=2)
    n = Net(sim, tmp_path)
    try:
        n.ip(0, "link", "add", "br0", "type", "bridge")
        n.ip(0, "link", "set", "br0", "up")
        n.addr(0, "br0", f"{BR}/24")
        n.start(0, "backend")
        n.start(1, "driver", "--uplink-switch", "up")
        n.ncctl("attach", "1", "--devid", "0", "--mac", MAC[1], "--bridge", "br0", "--trunk")
        n.wait_state(0, 1, 0, timeout=15)
        n.wait_state(1, 1, 0, timeout=15)
        yield n
    finally:
        n.close()
        sim.down()


def _guest(n: Net, domid: int) -> Daemon:
    """Frontend in ``domid``, attached through domain 1's switch "up", pinging dom0."""
    fe = n.start(domid, "frontend")
    n.ncctl(
        "attach",
        str(domid),
        "--devid",
        "0",
        "--mac",
        MAC[domid],
        "--backend",
        "1",
        "--switch",
        "up",
    )
    n.wait_state(1, domid, 0, timeout=15)
    n.wait_state(domid, domid, 0, timeout=15)
    n.addr(domid, "nc0", f"198.18.20.{10 + domid}/24")
    n.wait(lambda: n.ping_ok(domid, BR, count=1), 10, f"domain {domid} -> dom0 br0")
    r = n.ping(domid, BR, count=5)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
    return fe


def _listed(n: Net, domid: int) -> list[tuple[int, str]]:
    """(domid, role) of the vifs ``ncctl list`` shows in ``domid``."""
    out = n.sim.run(domid, [PY, "-m", "ncd.ncctl", "list", "--json"]).stdout
    return sorted((v["domid"], v["role"]) for v in json.loads(out)["vifs"])


def test_driver_survives_destroy_of_its_frontend(hop: Net) -> None:
    n = hop
    drv = next(d for d in n.daemons if d.role == "driver")
    _guest(n, 2)
    assert _listed(n, 1) == [(1, "frontend"), (2, "backend")]
    n.sim.world.destroy(2)
    n.wait(lambda: n.vif(1, 2, 0) is None, 10, "vif 2/0 gone in domain 1", drv)
    entries = ["xenstore-read", "/local/domain/1/backend/ncvif/2/0"]
    n.wait(
        lambda: n.sim.run(0, entries, check=False).returncode != 0,
        10,
        "domain 2's backend entries removed by domain 1",
        drv,
    )
    assert drv.alive(), drv.log_text()
    # what domain 1 fronts (its uplink) is all it lists: the vif it backed is gone
    assert _listed(n, 1) == [(1, "frontend")]
    text = drv.log_text()
    assert "Traceback" not in text and "discovery failed" not in text, text
    assert "domain 2 is gone" in text, text

    assert n.sim.world.create_domain() == 3
    n.quiet_ipv6(3)
    _guest(n, 3)
    assert drv.alive(), drv.log_text()
    assert "Traceback" not in drv.log_text(), drv.log_text()
    check_tracker(n, [0, 1])
