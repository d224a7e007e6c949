"""A frontend daemon carries only what a guest needs (docs/performance.md, "Frontend
memory"): no pyroute2, no hashlib, no backend modules, and prometheus_client only once
the endpoint is scraped. (uvloop, the design's loop for every role, brings ssl.)

Behaviour, not size: the daemon's own import log (``PYTHONPROFILEIMPORTTIME``) and the
libraries it maps, with its vif Connected and passing traffic; then a scrape, served."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import MACS, PY, Daemon, Net, dom0_ip, guest_ip

# what the frontend once imported and does not need (the backend's, or a scrape's)
NOT_IN_A_FRONTEND = {
    "pyroute2",  # rtnetlink: ioctls and one RTM_DELLINK do (ncd.tap)
    "prometheus_client",  # at the first scrape
    "wsgiref",  # likewise (the HTTP server)
    "hashlib",  # OpenSSL's libcrypto: only stable_mac, a backend's
    "ctypes",  # ethtool buffers are arrays
    "shutil",  # argparse's terminal width
}
BACKEND_ONLY = {"ncd.daemon.backend", "ncd.daemon.declared", "ncd.ovs"}


def imported(d: Daemon) -> set[str]:
    """Modules in the daemon's import log: ``import time: 230 | 230 |   _datetime``."""
    out = set()
    for line in d.log_text().splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                out.add(name)
    return out


def mapped(pid: int) -> set[str]:
    """Base names of the files the process maps (shared libraries among them)."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            names.add(Path(parts[5]).name)
    return names


def test_a_frontend_with_traffic_imports_only_what_a_guest_needs(net: Net) -> None:
    net.start(0, "backend")
    fe = net.start(1, "frontend", env={"PYTHONPROFILEIMPORTTIME": "1"})
    net.attach(1, 0, MACS[1])
    net.wait_connected(1, 0)
    net.addr(0, "ncvif1.0", f"{dom0_ip(1)}/24")
    net.addr(1, "nc0", f"{guest_ip(1)}/24")
    r = net.ping(1, dom0_ip(1), count=3)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr

    mods = imported(fe)
    assert {"ncd.daemon.frontend", "ncd.vchan.pump", "asyncio"} <= mods, "no import log?"
    tops = {m.split(".")[0] for m in mods}
    assert not tops & NOT_IN_A_FRONTEND, sorted(tops & NOT_IN_A_FRONTEND)
    assert "uvloop" in tops  # the loop of every role (design.md, Operations)
    assert not mods & BACKEND_ONLY, sorted(mods & BACKEND_ONLY)
    libs = mapped(fe.pid)
    assert "_hotpath.abi3.so" in libs
    assert not [n for n in libs if n.startswith("_hashlib.")], sorted(libs)

    # the first scrape brings prometheus_client, and is served
    code = (
        "import urllib.request;print(urllib.request.urlopen("
        f"'http://127.0.0.1:{net.metrics_port}/metrics',timeout=30).read().decode())"
    )
    text = net.sim.run(1, [PY, "-c", code]).stdout
    assert 'ncd_vif_frames_total{devid="0",direction="tx",domid="1"}' in text, text[:500]
    assert 'ncd_build_info{role="frontend"' in text
    assert "prometheus_client" in {m.split(".")[0] for m in imported(fe)}
