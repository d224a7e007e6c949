"""A simulated Xen host: the broker and xenstored processes, and its domains.

`World` is what `ncd-sim up/down/destroy` drive. Its state lives in
``WORLD/world.json`` so that separate CLI invocations (and tests) find the
running daemons again, and so that `down` can clean up after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xensim import netns, paths
from xensim.broker.control import BrokerControl
from xensim.xenstored.client import XsClient

log = logging.getLogger("xensim")

STATE_FILE = "world.json"
DAEMONS = ("broker", "xenstored")
READY_TIMEOUT = 15.0


class WorldError(RuntimeError):
    """A world operation failed; the message is meant for the operator."""


@dataclass
class WorldState:
    domains: dict[str, str] = field(default_factory=dict)  # domid -> netns name
    pids: dict[str, int] = field(default_factory=dict)  # daemon -> pid
    netns_prefix: str = paths.NETNS_PREFIX
    created_dir: bool = False
    next_domid: int = 1


class World:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.state = self._load()

    # ---- state --------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    def _load(self) -> WorldState:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return WorldState()
        return WorldState(**raw)

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=1))
        tmp.replace(self.state_file)

    def is_up(self) -> bool:
        return self.state_file.exists() and all(
            _alive(self.state.pids.get(d, 0)) for d in DAEMONS
        )

    def domids(self) -> list[int]:
        return sorted(int(d) for d in self.state.domains)

    def netns(self, domid: int) -> str:
        try:
            return self.state.domains[str(domid)]
        except KeyError:
            raise WorldError(f"no domain {domid} in the world at {self.dir}") from None

    def exec_argv(self, domid: int, cmd: Sequence[str]) -> list[str]:
        """argv that runs `cmd` inside domain `domid`'s network namespace."""
        return ["ip", "netns", "exec", self.netns(domid), *cmd]

    def exec_env(self, domid: int) -> dict[str, str]:
        """This process's environment plus what makes a program domain `domid` (its
        xenstored socket, the shims on LD_LIBRARY_PATH, its broker identity)."""
        return {**os.environ, **paths.domain_env(self.dir, domid)}

    # ---- up -----------------------------------------------------------------
    def up(
        self,
        domains: int,
        netns_prefix: str = paths.NETNS_PREFIX,
        broker_args: Sequence[str] = (),
    ) -> None:
        """Start the broker (with ``broker_args``, e.g. ``--max-evtchn-port 4``: its limits)
        and xenstored, create dom0 and ``domains`` domUs."""
        if self.state_file.exists():
            raise WorldError(
                f"a world already exists at {self.dir} (run `ncd-sim down --dir {self.dir}` first)"
            )
        taken = [
            n for d in range(domains + 1) if netns.exists(n := paths.netns_name(d, netns_prefix))
        ]
        if taken:
            raise WorldError(
                f"network namespace(s) {', '.join(taken)} already exist: another world uses "
                f"prefix {netns_prefix!r}; give this one `--netns-prefix` (and its own `--dir`)"
            )
        self.state = WorldState(netns_prefix=netns_prefix, created_dir=not self.dir.exists())
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save()
        try:
            for daemon in DAEMONS:
                self._start_daemon(daemon, broker_args if daemon == "broker" else ())
            for daemon in DAEMONS:
                self._wait_ready(daemon)
            self._init_dom0()
            for _ in range(domains):
                self.create_domain()
        except BaseException:
            log.error("bringing the world up failed; tearing down what was started")
            self.down(keep_logs=True)
            raise

    def _start_daemon(self, name: str, extra: Sequence[str] = ()) -> None:
        logf = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", f"xensim.{name}", "--dir", str(self.dir), *extra],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        logf.close()
        self.state.pids[name] = proc.pid
        self._save()

    def _socket(self, daemon: str, domid: int = 0) -> Path:
        if daemon == "broker":
            return paths.hypervisor_socket(self.dir, domid)
        return paths.xenstored_socket(self.dir, domid)

    def _wait_ready(self, daemon: str) -> None:
        sock = self._socket(daemon)
        kind = socket.SOCK_SEQPACKET if daemon == "broker" else socket.SOCK_STREAM
        deadline = time.monotonic() + READY_TIMEOUT
        pid = self.state.pids[daemon]
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise WorldError(f"{daemon} exited at start-up:\n{self.log_tail(daemon)}")
            try:
                with socket.socket(socket.AF_UNIX, kind) as s:
                    s.connect(str(sock))
                return
            except OSError:
                time.sleep(0.05)
        raise WorldError(f"{daemon} not ready after {READY_TIMEOUT}s:\n{self.log_tail(daemon)}")

    def log_tail(self, daemon: str, lines: int = 20) -> str:
        try:
            text = (self.dir / f"{daemon}.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def xs(self) -> XsClient:
        """A xenstore connection as dom0 (the toolstack's view)."""
        return XsClient.connect(paths.xenstored_socket(self.dir, 0))

    def broker(self) -> BrokerControl:
        return BrokerControl(self.dir)

    def _add_netns(self, domid: int) -> None:
        name = paths.netns_name(domid, self.state.netns_prefix)
        netns.create(name)
        self.state.domains[str(domid)] = name
        self._save()
        paths.runtime_dir(self.dir, domid).mkdir(parents=True, exist_ok=True)

    def _init_dom0(self) -> None:
        # What xen-init-dom0 leaves in xenstore, plus the backend directory libxl uses.
        self._add_netns(0)
        with self.xs() as xs:
            write_domain_nodes(xs, 0, _perm_text)

    def create_domain(self, name: str | None = None) -> int:
        """Create the next domU: broker domain, xenstore introduction, libxl's nodes, netns.

        ``name`` (default ``domU<domid>``) goes to ``/local/domain/<domid>/name``, written
        before the domain is introduced, as libxl does; like libxl, a name another domain
        has is refused."""
        if name is not None:
            check_domain_name(name)
            with self.xs() as xs:
                for d in xs.directory("/local/domain"):
                    path = f"/local/domain/{d}/name"
                    if xs.exists(path) and xs.read(path) == name.encode():
                        raise WorldError(f"domain with name {name!r} already exists (domain {d})")
        domid = self.state.next_domid
        self.state.next_domid += 1
        self._save()
        self.broker().create_domain(domid)
        self._add_netns(domid)
        with self.xs() as xs:
            write_domain_nodes(xs, domid, _perm_text, name)
            xs.introduce(domid, mfn=0, port=1)
        log.info("domain %d created (netns %s)", domid, self.netns(domid))
        return domid

    # ---- destroy / down -----------------------------------------------------
    def destroy(self, domid: int) -> None:
        """Destroy a domU as `xl destroy` would: its processes die, its resources go."""
        if domid == 0:
            raise WorldError("dom0 cannot be destroyed (use `ncd-sim down`)")
        name = self.netns(domid)
        netns.kill_all(name)
        self.broker().destroy_domain(domid)
        with self.xs() as xs:
            xs.release(domid)
            xs.rm(f"/local/domain/{domid}")
        netns.delete(name)
        shutil.rmtree(paths.domain_dir(self.dir, domid), ignore_errors=True)
        del self.state.domains[str(domid)]
        self._save()
        log.info("domain %d destroyed", domid)

    def down(self, keep_logs: bool = False) -> None:
        """Tear everything down; tolerant of a half-started or crashed world."""
        errors: list[str] = []
        self.state = self._load()  # another process (ncd-sim destroy) may have changed it
        if self.is_up():
            for domid in reversed(self.domids()):
                if domid == 0:
                    continue
                try:
                    self.destroy(domid)
                except Exception as e:  # keep going: down must leave nothing behind
                    errors.append(f"destroy {domid}: {e}")
        for name in list(self.state.domains.values()):
            try:
                netns.delete(name)
            except Exception as e:
                errors.append(f"netns {name}: {e}")
        for daemon in DAEMONS:
            _terminate(self.state.pids.get(daemon, 0))
        for domid in list(self.state.domains):
            shutil.rmtree(paths.domain_dir(self.dir, int(domid)), ignore_errors=True)
        for entry in self.dir.glob("dom*"):
            shutil.rmtree(entry, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        if not keep_logs:
            for daemon in DAEMONS:
                (self.dir / f"{daemon}.log").unlink(missing_ok=True)
            if self.state.created_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
        self.state = WorldState()
        if errors:
            raise WorldError("teardown finished with errors: " + "; ".join(errors))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _is_sim_daemon(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return b"xensim." in cmdline


def _terminate(pid: int, timeout: float = 5.0) -> None:
    if not _alive(pid) or not _is_sim_daemon(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.02)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _perm_text(domid: int, kind: str) -> str:
    return f"{kind}{domid}"


def check_domain_name(name: str) -> None:
    """A name libxl would take: not empty, no '/', printable ASCII, not all digits (xl
    reads those as a domid)."""
    if not name or "/" in name or not (name.isascii() and name.isprintable()):
        raise WorldError(f"bad domain name {name!r}: printable ASCII without '/'")
    if name.isdigit():
        raise WorldError(f"bad domain name {name!r}: all digits reads as a domid")


def write_domain_nodes(
    xs: Any, domid: int, perm: Callable[[int, str], Any], name: str | None = None
) -> None:
    """What the toolstack leaves in xenstore for a new domain: for dom0 what
    xen-init-dom0 writes (plus the backend directory libxl uses), for a domU libxl's
    nodes with libxl's permissions. ``xs`` is any store with ``mkdir``/``write``/
    ``set_perms``; ``perm(domid, kind)`` makes one permission entry in its form
    (tests use it on an in-memory store too)."""
    home = f"/local/domain/{domid}"
    if domid == 0:
        xs.write(f"{home}/domid", "0")
        xs.write(f"{home}/name", "Domain-0")
        for node in ("backend", "device", "data"):
            xs.mkdir(f"{home}/{node}")
        return
    ro = [perm(0, "n"), perm(domid, "r")]  # libxl's roperm: dom0 owns, the guest may read
    rw = [perm(domid, "n")]  # libxl's rwperm: the guest owns
    xs.mkdir(home)
    xs.set_perms(home, ro)
    xs.write(f"{home}/name", name or f"domU{domid}")
    xs.write(f"{home}/domid", str(domid))
    for node in ("device", "control"):
        xs.mkdir(f"{home}/{node}")
        xs.set_perms(f"{home}/{node}", ro)
    for node in ("data", "control/shutdown", "drivers", "feature", "attr", "error"):
        if node == "control/shutdown":
            xs.write(f"{home}/{node}", "")
        else:
            xs.mkdir(f"{home}/{node}")
        xs.set_perms(f"{home}/{node}", rw)
