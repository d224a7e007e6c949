"""ncd-sim's command line: up/exec/env/destroy/down, and that down leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xensim import netns, paths

CLI = [sys.executable, "-m", "xensim"]


def ncd_sim(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], text=True, capture_output=True, check=check,
                          timeout=60, **kw)


def leftovers(world: Path, prefix: str) -> list[str]:
    """Everything a world could leave behind: namespaces, daemons, sockets, memfds."""
    found = [f"netns {n}" for n in os.listdir(netns.NETNS_RUN) if n.startswith(prefix)] \
        if netns.NETNS_RUN.exists() else []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(world).encode() in cmd and b"xensim." in cmd:
            found.append(f"process {pid}: {cmd!r}")
    if world.exists():
        found += [f"file {p}" for p in world.rglob("*")]
    return found


def test_up_exec_env_down(tmp_path: Path, netns_root: None) -> None:
    world = tmp_path / "w"
    prefix = f"ncdt{os.getpid()}-x"
    out = ncd_sim("up", "--dir", str(world), "--domains", "2", "--netns-prefix", prefix).stdout
    try:
        assert "dom0" in out and "dom2" in out
        for d in (0, 1, 2):
            assert netns.exists(f"{prefix}{d}")
        # exec runs in the domain's netns with the domain's environment, exit code passes
        r = ncd_sim("exec", "--dir", str(world), "1", "--", "sh", "-c",
                    'echo "$XENSIM_DOMID $XENSTORED_PATH"; ip -o link show | wc -l; exit 7',
                    check=False)
        assert r.returncode == 7, r.stderr
        dom, xs, links = r.stdout.split()
        assert dom == "1" and xs == str(paths.xenstored_socket(world, 1))
        assert links == "1"  # only lo: a fresh namespace
        # env prints exports that a shell can eval
        env = ncd_sim("env", "--dir", str(world), "2").stdout
        assert "export XENSIM_DOMID=2" in env and "LD_LIBRARY_PATH=" in env
        # libxl's entries as a guest sees them, through Debian's xenstore-read
        r = ncd_sim("exec", "--dir", str(world), "2", "--", "xenstore-read", "name", "domid")
        assert r.stdout.split() == ["domU2", "2"]
        r = ncd_sim("exec", "--dir", str(world), "0", "--", "xenstore-read",
                    "/local/domain/0/name")
        assert r.stdout.strip() == "Domain-0"
        # a second `up` on the same dir is refused with a clear message
        r = ncd_sim("up", "--dir", str(world), check=False)
        assert r.returncode == 1 and "already exists" in r.stderr
    finally:
        ncd_sim("down", "--dir", str(world))
    assert leftovers(world, prefix) == []


def test_exec_unknown_domain_and_no_world(tmp_path: Path) -> None:
    r = ncd_sim("exec", "--dir", str(tmp_path / "none"), "1", "--", "true", check=False)
    assert r.returncode == 1 and "no running world" in r.stderr


def test_up_down_cycles_leave_nothing(tmp_path: Path, netns_root: None) -> None:
    world = tmp_path / "cycle"
    prefix = f"ncdt{os.getpid()}-c"
    for i in range(20):
        ncd_sim("up", "--dir", str(world), "--domains", "1", "--netns-prefix", prefix)
        if i % 5 == 0:  # and the world works each time
            r = ncd_sim("exec", "--dir", str(world), "1", "--", "xenstore-read", "domid")
            assert r.stdout.strip() == "1"
        ncd_sim("down", "--dir", str(world))
        assert leftovers(world, prefix) == [], f"cycle {i}"


def test_destroy_releases_domain(sim) -> None:
    # a watch on @releaseDomain in dom0 sees domain 2 go
    watch = sim.popen(0, ["xenstore-watch", "-n", "2", "@releaseDomain"],
                      stdout=subprocess.PIPE, text=True)
    try:
        first = watch.stdout.readline()  # the watch fires once when set
        assert first.strip() == "@releaseDomain"
        sleeper = sim.popen(2, ["sleep", "300"])
        subprocess.run([*CLI, "destroy", "--dir", str(sim.dir), "2"], check=True, timeout=30)
        assert watch.wait(timeout=10) == 0
        assert sleeper.wait(timeout=10) == -9  # the domain's processes were killed
        assert not netns.exists(f"{sim.prefix}2")
        r = sim.run(0, ["xenstore-read", "/local/domain/2/name"], check=False)
        assert r.returncode != 0
    finally:
        watch.kill()
        watch.wait()


@pytest.mark.parametrize("domid", [1, 2])
def test_domains_cannot_read_each_other(sim, domid: int) -> None:
    other = 3 - domid
    r = sim.run(domid, ["xenstore-read", f"/local/domain/{other}/name"], check=False)
    assert r.returncode != 0 and r.stdout == ""
    r = sim.run(domid, ["xenstore-write", f"/local/domain/{other}/data/x", "evil"], check=False)
    assert r.returncode != 0
    assert sim.run(0, ["xenstore-exists", f"/local/domain/{other}/data/x"], check=False).returncode
    sim.run(domid, ["xenstore-write", "data/x", "mine"])
    assert sim.run(0, ["xenstore-read", f"/local/domain/{domid}/data/x"]).stdout == "mine\n"


def test_two_worlds_side_by_side(tmp_path: Path, netns_root: None) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    pa, pb = f"ncdt{os.getpid()}-a", f"ncdt{os.getpid()}-b"
    ncd_sim("up", "--dir", str(a), "--domains", "1", "--netns-prefix", pa)
    try:
        # the same prefix again is refused before anything starts, naming the namespace
        r = ncd_sim("up", "--dir", str(b), "--domains", "1", "--netns-prefix", pa, check=False)
        assert r.returncode == 1 and f"{pa}0" in r.stderr and "--netns-prefix" in r.stderr
        assert not b.exists()  # nothing was started for the refused world
        ncd_sim("up", "--dir", str(b), "--domains", "1", "--netns-prefix", pb)
        try:
            # each world's domain 1 is its own: a write in one is not seen in the other
            ncd_sim("exec", "--dir", str(a), "1", "--", "xenstore-write", "data/w", "a")
            ncd_sim("exec", "--dir", str(b), "1", "--", "xenstore-write", "data/w", "b")
            for world, want in ((a, "a"), (b, "b")):
                r = ncd_sim("exec", "--dir", str(world), "1", "--", "xenstore-read", "data/w")
                assert r.stdout.strip() == want
        finally:
            ncd_sim("down", "--dir", str(b))
    finally:
        ncd_sim("down", "--dir", str(a))
    assert leftovers(a, pa) == [] and leftovers(b, pb) == []
