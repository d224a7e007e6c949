"""Destroying a guest in the middle of heavy forwarding costs the frames in flight and
never the daemon (issue 10, "safe teardown"), on the ASan/UBSan build.

dom0 runs ``ncd backend`` on the ``-fsanitize=address,undefined`` build of ncd._hotpath
(the pump, the switch, the tracker, the vchan code: everything that copies to and from a
guest's mapped pages). The build and the way a Python process loads it are
tests/vchan/sanitize.py's, shared with the other sanitized tests: compiled once into
build/sanitize/ (a build directory of its own, never the installed package), selected
with ``NCD_HOTPATH_SO``, libasan preloaded because Python itself is not instrumented,
``detect_leaks=0`` (the interpreter's own allocations are not leaks ncd can fix; leaks
of ncd's are checked as the daemon's fds, threads and the hypervisor's counts coming back
to their baseline), ``abort_on_error``/``halt_on_error`` so any report kills the daemon.
Only dom0's daemon is sanitized: it is the one that maps the destroyed guest's pages.

Guests 1 and 2 (``ncd frontend``) are ports of switch sw0 with a ping flood between them
for the whole test. Then ``NCD_DESTROY_CYCLES`` times (default 50): a new domain is
created, runs ``ncd frontend``, is attached to sw0, reaches Connected, floods guest 1
(``ping -f`` with frames preloaded, so frames are in flight both ways) until the switch
has forwarded its frames, and is destroyed (``ncd-sim destroy``: its processes killed
mid-flood, its grants and event channels freed, its xenstore home removed); every fifth
guest is destroyed as soon as dom0 has its vif instead, wherever its handshake is.

Asserted: after every cycle the backend is alive, has removed the guest's vif and its
backend entries, its log has no sanitizer report and no traceback, and its mappings,
event channels, fds and threads are back to what they were with guests 1 and 2 alone.
The flood between guests 1 and 2 got answers and the switch's (1, 2)/(2, 1) accounting
moved during the cycles; afterwards 16 MB TCP 1 -> 2 arrives with the sender's sha256;
dom0's tracker holds exactly its vifs' pages, which are exactly what the hypervisor
counts as mapped (no entry outlives its mapping); sw0 has two ports; SIGTERM stops the
backend cleanly, still with no report, and nothing stays mapped. Every wait is for a
state, with a generous timeout; nothing depends on speed. 50 cycles took 34 s on the
shared 2-CPU machine at a load average of about 3, 59-120 s at 20-30;
``NCD_DESTROY_CYCLES=N`` runs N instead.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Daemon, Net, proc_usage
from tests.needs import require_root
from tests.simworld import SimWorld
from tests.vchan.sanitize import sanitized_env

from .test_forwarding import MAC, check_nothing_mapped, check_tracker, forwarded, transfer_ok

CYCLES = int(os.environ.get("NCD_DESTROY_CYCLES", "50"))
REPORT = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error|Traceback")
ACCEPTCON = 0x10000  # __SO_ACCEPTCON in /proc/net/unix: the listening socket
FLOOD = ["ping", "-q", "-f", "-l", "8", "-s", "1400"]
STEADY_READS = 5


def gip(g: int) -> str:
    return f"198.18.30.{g}"


@pytest.fixture
def sanitized_switch(tmp_path: Path) -> Iterator[tuple[Net, Daemon]]:
    require_root("a xensim world: network namespaces")
    env = sanitized_env()
    sim = SimWorld(tmp_path / "world", domains=2)
    n = Net(sim, tmp_path)
    try:
        be = n.start(0, "backend", env=env)
        for g in (1, 2):
            n.start(g, "frontend")
            n.ncctl("attach", str(g), "--devid", "0", "--mac", MAC[g], "--switch", "sw0")
        for g in (1, 2):
            n.wait_connected(g, 0, timeout=20)
            n.addr(g, "nc0", f"{gip(g)}/24")
        yield n, be
    finally:
        n.close()
        sim.down()


def _sanitized_build_loaded(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libasan" in maps and "/build/sanitize/" in maps


def _no_report(d: Daemon) -> None:
    text = d.log_text()
    m = REPORT.search(text)
    assert m is None, text[max(0, m.start() - 2000) : m.start() + 4000] if m else ""


def _fds(pid: int) -> int:
    """Open fds of ``pid``, not counting connections to its control socket (the test's
    own ``stats`` calls, closed by the daemon whenever it gets to it)."""
    control = set()
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        f = line.split()  # Num RefCount Protocol Flags Type St Inode Path
        if len(f) >= 8 and f[7].endswith("/ncd.sock") and not int(f[3], 16) & ACCEPTCON:
            control.add(f"socket:[{f[6]}]")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") not in control
        except FileNotFoundError:
            continue
    return count


def _resources(n: Net, be: Daemon) -> dict[str, Any]:
    broker = n.broker_stats()[0]
    return {
        "mappings": broker["mappings"],
        "mapped_pages": broker["mapped_pages"],
        "ports": broker["ports"],
        "fds": _fds(be.pid),
        "threads": proc_usage(be.pid)["threads"],
    }


def _steady(n: Net, be: Daemon) -> dict[str, Any]:
    """dom0's resources once they hold still (the same over STEADY_READS readings 0.2 s
    apart): the handshakes just done may still be closing a setup fd, later on a busy
    machine (the suite's parallel workers) than on an idle one."""
    seen: list[dict[str, Any]] = []

    def steady() -> dict[str, Any] | None:
        seen.append(_resources(n, be))
        time.sleep(0.2)
        recent = seen[-STEADY_READS:]
        held = len(recent) == STEADY_READS and all(r == recent[0] for r in recent)
        return recent[0] if held else None

    return n.wait(steady, 20, "dom0's resources holding still", be)


def _settled(n: Net, be: Daemon, baseline: dict[str, Any], when: str) -> None:
    """dom0's mappings, event channels, fds and threads come back to ``baseline``."""
    seen: list[dict[str, Any]] = []

    def back() -> bool:
        seen[:] = [_resources(n, be)]
        return seen[0] == baseline

    try:
        n.wait(back, 20, f"dom0's resources {when} back to {baseline}", be)
    except AssertionError as exc:
        raise AssertionError(f"{when}: {seen[0]} != {baseline}\n{exc}") from None


def _cycle(n: Net, be: Daemon, i: int) -> None:
    """One guest: created, attached to sw0, flooding guest 1, destroyed mid-flood (every
    fifth one instead as soon as dom0 has its vif, wherever its handshake is)."""
    d = n.sim.world.create_domain()
    n.quiet_ipv6(d)
    n.start(d, "frontend")
    mac = f"00:16:3e:0c:{i >> 8:02x}:{i & 0xFF:02x}"
    n.ncctl("attach", str(d), "--devid", "0", "--mac", mac, "--switch", "sw0")
    if i % 5 == 4:
        n.wait(lambda: n.vif(0, d, 0), 20, f"vif {d}/0 in dom0", be)
        n.sim.world.destroy(d)
    else:
        _flood_then_destroy(n, be, d, i)
    n.wait(lambda: n.vif(0, d, 0) is None, 20, f"vif {d}/0 gone in dom0", be)
    entries = ["xenstore-read", f"/local/domain/0/backend/ncvif/{d}"]
    n.wait(
        lambda: n.sim.run(0, entries, check=False).returncode != 0,
        20,
        f"dom0's backend entries of domain {d} removed",
        be,
    )
    assert be.alive(), be.log_text()[-4000:]


def _flood_then_destroy(n: Net, be: Daemon, d: int, i: int) -> None:
    n.wait_connected(d, 0, timeout=20)
    n.addr(d, "nc0", f"{gip(100 + i % 100)}/24")
    flood = n.sim.popen(d, [*FLOOD, gip(1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # frames of this guest crossed the switch both ways: the flood is under way
        def flowing() -> bool:
            acct = forwarded(n, 0, "sw0")
            return acct.get((d, 1), (0, 0))[0] > 8 and acct.get((1, d), (0, 0))[0] > 8

        n.wait(flowing, 20, f"domain {d} flooding guest 1 through sw0", be)
        n.sim.world.destroy(d)  # kills the flood too, frames in flight
    finally:
        flood.kill()
        flood.wait()


@pytest.mark.slow
def test_destroy_recreate_cycles_under_load_asan(
    sanitized_switch: tuple[Net, Daemon],
) -> None:
    n, be = sanitized_switch
    assert _sanitized_build_loaded(be.pid), "the backend does not run the sanitized build"
    n.wait(lambda: n.ping_ok(1, gip(2), count=1), 10, "guest 1 -> guest 2")
    check_tracker(n, [0])
    baseline = _steady(n, be)
    before = forwarded(n, 0, "sw0")
    flood = n.sim.popen(
        1, [*FLOOD, gip(2)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for i in range(CYCLES):
            _cycle(n, be, i)
            _no_report(be)
            _settled(n, be, baseline, f"after cycle {i}")
    finally:
        flood.send_signal(signal.SIGINT)  # ping's summary
        out, _ = flood.communicate(timeout=30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m and int(m.group(2)) > 0, out
    during = forwarded(n, 0, "sw0")
    for pair in ((1, 2), (2, 1)):
        assert during[pair][0] > before.get(pair, (0, 0))[0], (pair, before, during)

    transfer_ok(n, 1, 2, gip(2), 16 << 20, 5601)
    _settled(n, be, baseline, "after the transfer")
    check_tracker(n, [0])
    sw = next(s for s in n.stats(0)["switches"] if s["name"] == "sw0")
    assert sw["ports"] == 2, sw
    assert be.alive()
    _no_report(be)
    assert n.stop(be) == 0, be.log_text()[-4000:]
    _no_report(be)
    check_nothing_mapped(n)
    print(f"\n{CYCLES} destroy/recreate cycles under load, sanitized backend: no report")
