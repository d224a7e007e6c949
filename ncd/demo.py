"""``ncd-sim demo``: ncd end to end on a simulated Xen host, explained as it goes.

Brings up dom0 and one guest, starts ``ncd backend`` in dom0 and ``ncd frontend``
in the guest (the way the systemd units run them, via ``ncd-sim exec``),
attaches a vif with ``ncctl attach``, gives both ends an address from
198.18.0.0/15, pings across, moves a few MB over TCP with a sha256 check, shows
``ncctl list`` and a few metrics, then tears everything down.

``python -m ncd.demo send|recv ...`` is the TCP helper it runs inside the
domains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ncd.control import ControlClient, ControlError
from xensim import paths
from xensim.world import World, WorldError

GUEST = 1
MAC = "00:16:3e:5e:00:01"
DOM0_IP, GUEST_IP, PREFIX = "198.18.0.1", "198.18.0.2", 24
XFER_BYTES = 8 << 20
PORT = 5201
METRICS = ("ncd_vif_frames_total", "ncd_vif_bytes_total", "ncd_vif_state", "ncd_vifs")


class DemoError(RuntimeError):
    pass


def _say(text: str) -> None:
    print(text, flush=True)


def _step(n: int, text: str) -> None:
    _say(f"\n[{n}] {text}")


class Demo:
    def __init__(self, world_dir: Path) -> None:
        self.world = World(world_dir)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[str, Path] = {}

    # ---- running things as a domain ---------------------------------------------
    def env(self, domid: int) -> dict[str, str]:
        return self.world.exec_env(domid)

    def argv(self, domid: int, cmd: list[str]) -> list[str]:
        return self.world.exec_argv(domid, cmd)

    def run(self, domid: int, cmd: list[str], show: bool = False) -> str:
        if show:
            shown = " ".join(cmd).replace(f"{sys.executable} -m ncd.ncctl", "ncctl")
            _say(f"    $ ncd-sim exec {domid} -- {shown}")
        res = subprocess.run(
            self.argv(domid, cmd), env=self.env(domid), capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise DemoError(f"`{' '.join(cmd)}` in dom{domid} failed:\n{res.stderr.strip()}")
        if show and res.stdout.strip():
            for line in res.stdout.rstrip().splitlines():
                _say(f"      {line}")
        return res.stdout

    def start_daemon(self, domid: int, role: str) -> None:
        log = self.world.dir / f"ncd-{role}-dom{domid}.log"
        self.logs[role] = log
        cmd = [sys.executable, "-m", "ncd.daemon.main", role]
        _say(f"    $ ncd-sim exec {domid} -- ncd {role}    (log: {log})")
        with open(log, "wb") as fh:
            self.procs.append(
                subprocess.Popen(
                    self.argv(domid, cmd), env=self.env(domid), stdout=fh, stderr=fh,
                    stdin=subprocess.DEVNULL,
                )
            )

    def control(self, domid: int) -> ControlClient:
        return ControlClient(paths.runtime_dir(self.world.dir, domid) / "ncd.sock", timeout=5)

    def wait_connected(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            for domid in (0, GUEST):
                try:
                    with self.control(domid) as c:
                        vifs = c.call("list")["vifs"]
                    states[domid] = vifs[0]["state"] if vifs else "none"
                except (ControlError, OSError, IndexError, KeyError):
                    states[domid] = "not running"
            if all(s == "Connected" for s in states.values()):
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise DemoError(f"a daemon exited (status {p.returncode}); see its log")
            time.sleep(0.1)
        raise DemoError(f"vif not connected after {timeout:g}s: {states}")

    # ---- the story --------------------------------------------------------------
    def main(self) -> None:
        t0 = time.monotonic()
        _step(1, "Bring up a simulated Xen host: hypervisor broker, xenstored, dom0 + 1 guest")
        self.world.up(1)
        for d in self.world.domids():
            _say(f"    dom{d}: network namespace {self.world.netns(d)}")

        _step(2, "Start the daemons, as systemd's ncd-backend/ncd-frontend units would")
        self.start_daemon(0, "backend")
        self.start_daemon(GUEST, "frontend")

        _step(3, f"Attach a network interface to guest {GUEST} (xenstore entries, like libxl)")
        self.run(0, [sys.executable, "-m", "ncd.ncctl", "attach", str(GUEST), "--mac", MAC],
                 show=True)
        self.wait_connected()
        _say(
            f"    handshake done: dom0 has TAP ncvif{GUEST}.0, the guest has nc0 "
            "(frames cross in shared-memory rings)"
        )

        _step(4, "Give both ends an address and ping across")
        self.run(0, ["ip", "addr", "add", f"{DOM0_IP}/{PREFIX}", "dev", f"ncvif{GUEST}.0"],
                 show=True)
        self.run(GUEST, ["ip", "addr", "add", f"{GUEST_IP}/{PREFIX}", "dev", "nc0"], show=True)
        out = self.run(GUEST, ["ping", "-c", "3", "-i", "0.2", "-W", "2", DOM0_IP])
        _say(f"    guest -> dom0: {_ping_summary(out)}")
        out = self.run(0, ["ping", "-c", "3", "-i", "0.2", "-W", "2", GUEST_IP])
        _say(f"    dom0 -> guest: {_ping_summary(out)}")

        _step(5, f"Move {XFER_BYTES >> 20} MB over TCP from the guest to dom0, check sha256")
        self.transfer()

        _step(6, "What the operator sees")
        self.run(0, [sys.executable, "-m", "ncd.ncctl", "list"], show=True)
        self.run(0, [sys.executable, "-m", "ncd.ncctl", "stats"], show=True)
        _say("    metrics (dom0, http://127.0.0.1:9477/metrics):")
        for line in self.metrics(0):
            _say(f"      {line}")

        _step(7, "Tear down: SIGTERM the daemons (vifs close, TAPs go), then the host")
        self.stop_daemons()
        self.world.down()
        _say(f"\nDemo finished in {time.monotonic() - t0:.1f}s: everything worked.")

    def transfer(self) -> None:
        recv = subprocess.Popen(
            self.argv(0, [sys.executable, "-m", "ncd.demo", "recv", DOM0_IP, str(PORT)]),
            env=self.env(0), stdout=subprocess.PIPE, text=True,
        )
        try:
            assert recv.stdout is not None
            if recv.stdout.readline().strip() != "ready":
                raise DemoError("TCP receiver did not start")
            sent = json.loads(
                self.run(GUEST, [sys.executable, "-m", "ncd.demo", "send", DOM0_IP,
                                 str(PORT), str(XFER_BYTES)])
            )
            got = json.loads(recv.stdout.readline())
        finally:
            if recv.poll() is None:
                recv.kill()
            recv.wait()
        ok = sent["sha256"] == got["sha256"] and got["bytes"] == XFER_BYTES
        _say(f"    sent     {sent['bytes']} bytes sha256 {sent['sha256'][:16]}...")
        _say(f"    received {got['bytes']} bytes sha256 {got['sha256'][:16]}... "
             f"({got['bytes'] * 8 / max(got['seconds'], 1e-6) / 1e9:.2f} Gbit/s)")
        if not ok:
            raise DemoError("checksum mismatch")
        _say("    checksums match")

    def metrics(self, domid: int) -> list[str]:
        code = (
            "import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:9477/metrics', timeout=5)"
            ".read().decode())"
        )
        text = self.run(domid, [sys.executable, "-c", code])
        return [ln for ln in text.splitlines() if ln.startswith(METRICS)]

    def stop_daemons(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                rc = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            _say(f"    daemon exited with status {rc}")
        self.procs.clear()

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs.clear()
        if self.world.state_file.exists():
            self.world.down(keep_logs=True)


def _ping_summary(out: str) -> str:
    lines = [ln for ln in out.splitlines() if "packet loss" in ln or ln.startswith("rtt")]
    return "; ".join(lines)


def run_demo(world_dir: Path) -> int:
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            print(f"ncd-sim demo: `{tool}` not found (run scripts/setup.sh)", file=sys.stderr)
            return 1
    demo = Demo(world_dir)
    try:
        demo.main()
        return 0
    except (DemoError, WorldError, OSError, TimeoutError) as exc:
        print(f"\nncd-sim demo: FAILED: {exc}", file=sys.stderr)
        for role, log in demo.logs.items():
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of the {role} log ({log}):", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)
        return 1
    finally:
        demo.cleanup()


# ---- the TCP helper run inside the domains -------------------------------------


def _recv(host: str, port: int) -> None:
    with socket.create_server((host, port), reuse_port=False) as srv:
        print("ready", flush=True)
        conn, _ = srv.accept()
        h, n, t0 = hashlib.sha256(), 0, time.monotonic()
        with conn:
            while chunk := conn.recv(1 << 20):
                h.update(chunk)
                n += len(chunk)
        print(json.dumps({"bytes": n, "sha256": h.hexdigest(),
                          "seconds": time.monotonic() - t0}), flush=True)


def _send(host: str, port: int, total: int) -> None:
    h, left = hashlib.sha256(), total
    with socket.create_connection((host, port), timeout=10) as conn:
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            conn.sendall(chunk)
            left -= len(chunk)
    print(json.dumps({"bytes": total, "sha256": h.hexdigest()}), flush=True)


def _helper(argv: list[str]) -> int:
    if argv[:1] == ["recv"] and len(argv) == 3:
        _recv(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["send"] and len(argv) == 4:
        _send(argv[1], int(argv[2]), int(argv[3]))
        return 0
    print("usage: python -m ncd.demo recv HOST PORT | send HOST PORT BYTES", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1:]))
