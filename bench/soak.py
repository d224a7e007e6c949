"""Soak (issue 12): hours of mixed traffic, attach/detach churn and daemon restarts on one
xensim world, checked end to end, with the daemons' and the hypervisor's resources
sampled and required to stay bounded.

World: dom0 runs ``ncd backend`` (for the whole soak: its growth is what is measured);
three guests run ``ncd frontend``, one vif each, every vif its own /24 in 198.18.0.0/15:

* guest 1, steady: every round a TCP transfer guest -> dom0, a UDP burst guest -> dom0,
  pings; its frontend too lives the whole soak (measured);
* guest 2, restarted: every round a TCP transfer dom0 -> guest and pings; every
  ``--restart-every`` seconds its frontend is restarted (SIGTERM and kill -9 in turn),
  between rounds, and must reconnect;
* guest 3, churned: attached and detached in turn every ``--churn-every`` seconds; pinged
  whenever attached.

Checked end to end: every TCP transfer's byte count and sha256 equal the sender's (zero
corrupted, lost or duplicated bytes); UDP datagrams carry their sequence number and a
digest: zero corrupted or duplicated (loss is UDP's right, counted); the steady guest's
pings answer every round.

Sampled every round (``--sample-seconds``, default 10): RSS, fds and threads of the
backend and of guest 1's frontend; the hypervisor's grants, mappings and event channel
ports over all domains. "Grows without bound" is decided on the samples: the maximum over
the last third of the run may not exceed the maximum over the first third by more than a
margin (RSS: 8 MiB + 10 %; fds: 4; threads: 2; grants, mappings, ports: 0: the first
third has seen every churn and restart state already). The least-squares slope over the
second half is reported beside it. Exit 1 on any failure.

    sudo .venv/bin/python bench/soak.py --minutes 30 [--churn-every 60] [--restart-every 180]
        [--png bench/soak.png] [--append-results] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.domproc import DomProc  # noqa: E402
from tests.e2e.harness import Daemon, Net, proc_usage  # noqa: E402
from tests.simworld import SimWorld  # noqa: E402

STEADY, RESTARTED, CHURNED = 1, 2, 3
TCP_PORT, UDP_PORT = 5301, 5401
UDP_SIZE = 1000
MARGINS = {
    "rss_kb": (8192, 0.10),
    "fds": (4, 0),
    "threads": (2, 0),
    "grants": (0, 0),
    "mappings": (0, 0),
    "ports": (0, 0),
}


def be_ip(g: int) -> str:
    return f"198.18.{g}.1"


def fe_ip(g: int) -> str:
    return f"198.18.{g}.2"


def mac(g: int) -> str:
    return f"00:16:3e:00:{g:02x}:00"


# ---- UDP, checked: a command set (tests/domproc.py) run in a domain ------------------------
def _datagram(seq: int) -> bytes:
    head = struct.pack("<Q", seq)
    body = hashlib.shake_128(head).digest(UDP_SIZE - 8 - 16)
    return head + hashlib.blake2b(head + body, digest_size=16).digest() + body


class Udp:
    """``listen HOST PORT``; ``collect SECONDS`` (reads until quiet for 1 s or SECONDS):
    {received, corrupt, duplicate}; ``send HOST PORT FIRST COUNT``: datagrams FIRST..."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.seen: set[int] = set()

    def cmd_listen(self, host: str, port: str) -> dict[str, Any]:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, int(port)))
        return {}

    def cmd_collect(self, seconds: str) -> dict[str, Any]:
        assert self.sock is not None, "listen first"
        got = corrupt = dup = 0
        end = time.monotonic() + float(seconds)
        self.sock.settimeout(1.0)
        while time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            got += 1
            seq = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else -1
            if seq < 0 or data != _datagram(seq):
                corrupt += 1
            elif seq in self.seen:
                dup += 1
            else:
                self.seen.add(seq)
        return {"received": got, "corrupt": corrupt, "duplicate": dup}

    def cmd_send(self, host: str, port: str, first: str, count: str) -> dict[str, Any]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for seq in range(int(first), int(first) + int(count)):
                s.sendto(_datagram(seq), (host, int(port)))
                if seq % 64 == 0:
                    time.sleep(0.002)  # paced: loss from the sender's own queue is no signal
        return {"sent": int(count)}

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


# ---- the soak ------------------------------------------------------------------------------
@dataclass
class Totals:
    rounds: int = 0
    tcp_transfers: int = 0
    tcp_bytes: int = 0
    tcp_bad: int = 0
    udp_sent: int = 0
    udp_received: int = 0
    udp_corrupt: int = 0
    udp_duplicate: int = 0
    pings_failed: int = 0
    churns: int = 0
    restarts: int = 0
    failures: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.sim = SimWorld(workdir / "world", domains=3)
        (workdir / "logs").mkdir()
        self.net = Net(self.sim, workdir / "logs")
        self.totals = Totals()
        self.samples: list[dict[str, float]] = []
        self.t0 = time.monotonic()
        self.fe: dict[int, Daemon] = {}
        self.udp_seq = 0
        self.kill9 = False

    # -- world
    def up(self) -> None:
        net = self.net
        self.backend = net.start(0, "backend")
        for g in (STEADY, RESTARTED, CHURNED):
            self.fe[g] = net.start(g, "frontend")
        for g in (STEADY, RESTARTED):
            self._attach(g)
        self.churned_up = False
        self.tcp_rx = self._helper(0, "tests.e2e.xfer:Xfer")
        self.tcp_rx.call(f"listen {be_ip(STEADY)} {TCP_PORT}")
        self.tcp_tx = self._helper(STEADY, "tests.e2e.xfer:Xfer")
        self.udp_rx = self._helper(0, "bench.soak:Udp")
        self.udp_rx.call(f"listen {be_ip(STEADY)} {UDP_PORT}")
        self.udp_tx = self._helper(STEADY, "bench.soak:Udp")
        self.down_tx = self._helper(0, "tests.e2e.xfer:Xfer")

    def _helper(self, domid: int, spec: str) -> DomProc:
        p = DomProc.python(self.sim, domid, spec, timeout=120)
        self.net._helpers.append(p)
        return p

    def _attach(self, g: int) -> None:
        self.net.attach(g, 0, mac(g))
        self.net.wait_connected(g, 0, timeout=30)
        self._addresses(g)

    def _addresses(self, g: int) -> None:
        self.net.addr(0, f"ncvif{g}.0", f"{be_ip(g)}/24")
        self.net.addr(g, "nc0", f"{fe_ip(g)}/24")

    def close(self) -> None:
        self.net.close()
        self.sim.down()

    def fail(self, what: str) -> None:
        print(f"soak: FAILED: {what}", flush=True)
        self.totals.failures.append(what)

    # -- one round of checked traffic
    def round(self) -> None:
        a, t = self.args, self.totals
        nbytes = int(a.tcp_mbps * 1e6 * a.sample_seconds * 0.6)
        # receivers first, then senders; every helper runs in its own domain concurrently
        self.tcp_rx.send("recv")
        self.tcp_tx.send(f"send {be_ip(STEADY)} {TCP_PORT} {nbytes} {a.tcp_mbps}")
        port = TCP_PORT + 1 + t.rounds % 1000
        down_rx = self._helper(RESTARTED, "tests.e2e.xfer:Xfer")
        down_rx.call(f"listen {fe_ip(RESTARTED)} {port}")
        down_rx.send("recv")
        self.down_tx.send(f"send {fe_ip(RESTARTED)} {port} {nbytes} {a.tcp_mbps}")
        self.udp_rx.send(f"collect {a.sample_seconds}")
        count = a.udp_per_round
        self.udp_tx.call(f"send {be_ip(STEADY)} {UDP_PORT} {self.udp_seq} {count}")
        self.udp_seq += count
        t.udp_sent += count
        for g in (STEADY, RESTARTED) + ((CHURNED,) if self.churned_up else ()):
            if not self.net.ping_ok(g, be_ip(g), count=3):
                t.pings_failed += 1
                if g == STEADY:
                    self.fail(f"round {t.rounds}: the steady guest's pings went unanswered")
        for rx, tx, what in (
            (self.tcp_rx, self.tcp_tx, "guest 1 -> dom0"),
            (down_rx, self.down_tx, "dom0 -> guest 2"),
        ):
            sent, got = Net.result(tx), Net.result(rx)
            t.tcp_transfers += 1
            t.tcp_bytes += got["bytes"]
            if (got["bytes"], got["sha256"]) != (sent["bytes"], sent["sha256"]):
                t.tcp_bad += 1
                self.fail(f"round {t.rounds}: TCP {what}: sent {sent}, received {got}")
        down_rx.close()
        self.net._helpers.remove(down_rx)
        u = self.udp_rx.reply(a.sample_seconds + 30, "the UDP collection")
        t.udp_received += u["received"]
        t.udp_corrupt += u["corrupt"]
        t.udp_duplicate += u["duplicate"]
        if u["corrupt"] or u["duplicate"]:
            self.fail(f"round {t.rounds}: UDP {u}")
        t.rounds += 1

    # -- churn and restarts, between rounds
    def churn(self) -> None:
        if self.churned_up:
            self.net.ncctl("detach", str(CHURNED), "0")
            self.net.wait(
                lambda: (
                    self.net.vif(0, CHURNED, 0) is None
                    and self.net.vif(CHURNED, CHURNED, 0) is None
                ),
                30,
                "detach",
            )
        else:
            self._attach(CHURNED)
        self.churned_up = not self.churned_up
        self.totals.churns += 1

    def restart(self) -> None:
        d = self.fe[RESTARTED]
        if self.kill9:
            self.net.kill9(d)
        else:
            self.net.stop(d)
        self.kill9 = not self.kill9
        self.fe[RESTARTED] = self.net.restart(d)
        self.net.wait_connected(RESTARTED, 0, timeout=30)
        self._addresses(RESTARTED)
        self.totals.restarts += 1

    # -- samples
    def sample(self) -> None:
        s: dict[str, float] = {"t": time.monotonic() - self.t0}
        for who, d in (("backend", self.backend), ("frontend", self.fe[STEADY])):
            for k, v in proc_usage(d.pid).items():
                s[f"{who}_{k}"] = v
        hv = self.net.broker_stats()
        for k in ("grants", "mappings", "ports"):
            s[k] = sum(dom[k] for dom in hv.values())
        self.samples.append(s)

    def run(self) -> None:
        a = self.args
        end = self.t0 + a.minutes * 60
        next_churn = self.t0 + a.churn_every
        next_restart = self.t0 + a.restart_every
        self.sample()
        while time.monotonic() < end and not self.totals.failures:
            self.round()
            now = time.monotonic()
            if now >= next_churn:
                self.churn()
                next_churn = now + a.churn_every
            if now >= next_restart:
                self.restart()
                next_restart = now + a.restart_every
            self.sample()
            print(
                f"soak: {self.samples[-1]['t']:.0f}s round {self.totals.rounds} "
                f"{self.totals.tcp_bytes / 1e6:.0f} MB TCP checked, churns "
                f"{self.totals.churns}, restarts {self.totals.restarts}",
                flush=True,
            )
        if not self.backend.alive():
            self.fail("the backend died")


# ---- analysis and report --------------------------------------------------------------------
def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def growth(samples: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Per series: first-third max, last-third max, the allowed margin, the slope over the
    second half (per minute), and whether it is bounded."""
    n = len(samples)
    third = max(1, n // 3)
    out = []
    for key in samples[0]:
        if key == "t":
            continue
        base_key = key.split("_", 1)[1] if key.startswith(("backend_", "frontend_")) else key
        absolute, rel = MARGINS[base_key]
        ys = [s[key] for s in samples]
        first, last = max(ys[:third]), max(ys[-third:])
        margin = absolute + rel * first
        half = samples[n // 2 :]
        per_min = slope([s["t"] / 60 for s in half], [s[key] for s in half])
        out.append(
            {
                "series": key,
                "first_max": first,
                "last_max": last,
                "margin": margin,
                "slope_per_min": per_min,
                "bounded": n < 6 or last <= first + margin,
            }
        )
    return out


def plot(samples: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in samples[0] if k != "t"]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 1.6 * len(keys)), sharex=True)
    ts = [s["t"] / 60 for s in samples]
    for ax, k in zip(axes, keys, strict=True):
        ax.plot(ts, [s[k] for s in samples], marker=".", linewidth=1)
        ax.set_ylabel(k.replace("_", "\n", 1), fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("ncd soak: samples every round", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(t: Totals, g: list[dict[str, Any]], info: dict[str, Any], png: str | None) -> str:
    lines = [
        f"\n## Soak (bench/soak.py, {info['date']})\n",
        f"Command: `{info['command']}` (git {info['git']}); took {info['took'] / 60:.1f} min; "
        f"load average before / after: {info['load_before']} / {info['load_after']} "
        f"(2 shared CPUs, other work running).\n",
        f"Result: **{'PASS' if not t.failures else 'FAIL'}**. {t.rounds} rounds: "
        f"{t.tcp_transfers} TCP transfers, {t.tcp_bytes / 1e6:.0f} MB, {t.tcp_bad} corrupted "
        f"or short; UDP {t.udp_sent} sent, {t.udp_received} received, {t.udp_corrupt} "
        f"corrupted, {t.udp_duplicate} duplicated; {t.pings_failed} ping rounds unanswered; "
        f"{t.churns} attach/detach churns of guest 3, {t.restarts} restarts of guest 2's "
        "frontend (SIGTERM and kill -9 in turn).\n",
        "Bounded = last third's max <= first third's max + margin; the slope (least squares "
        "over the second half) is for reading only: churn makes grants, ports and fds "
        "oscillate.\n",
        "| series | first third max | last third max | allowed margin | slope, 2nd half (/min) "
        "| bounded |",
        "|---|---|---|---|---|---|",
    ]
    for r in g:
        lines.append(
            f"| {r['series']} | {r['first_max']:.0f} | {r['last_max']:.0f} | "
            f"{r['margin']:.0f} | {r['slope_per_min']:+.1f} | "
            f"{'yes' if r['bounded'] else '**no**'} |"
        )
    if t.failures:
        lines.append("\nFailures: " + "; ".join(t.failures[:10]))
    if png:
        lines.append(f"\n![soak samples]({png})")
    return "\n".join(lines) + "\n"


def git_rev() -> str:
    import subprocess

    r = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return r.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30, help="how long to soak")
    ap.add_argument(
        "--sample-seconds",
        type=float,
        default=10,
        help="length of a traffic round; one sample after each",
    )
    ap.add_argument(
        "--churn-every", type=float, default=60, help="seconds between attach/detach of guest 3"
    )
    ap.add_argument(
        "--restart-every",
        type=float,
        default=180,
        help="seconds between restarts of guest 2's frontend daemon",
    )
    ap.add_argument(
        "--tcp-mbps", type=float, default=4, help="pace of each TCP transfer, megabytes per second"
    )
    ap.add_argument("--udp-per-round", type=int, default=2000, help="UDP datagrams a round")
    ap.add_argument("--png", help="write a PNG of the samples here (matplotlib)")
    ap.add_argument("--json", help="write totals, growth and samples as JSON here")
    ap.add_argument(
        "--append-results", action="store_true", help="append the report to bench/RESULTS.md"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, TAPs)", file=sys.stderr)
        return 1
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ncd-soak-") as tmp:
        soak = Soak(args, Path(tmp))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the finally below cleans up
        try:
            soak.up()
            soak.run()
        except Exception as exc:  # noqa: BLE001 - reported as a soak failure, logs shown
            soak.fail(f"{type(exc).__name__}: {exc}"[:3000])
        finally:
            soak.close()
    g = growth(soak.samples)
    for r in g:
        if not r["bounded"]:
            soak.fail(
                f"{r['series']} grew: {r['first_max']:.0f} -> {r['last_max']:.0f} "
                f"(margin {r['margin']:.0f})"
            )
    cmd = " ".join(
        ["sudo", ".venv/bin/python", "bench/soak.py", *(argv if argv is not None else sys.argv[1:])]
    )
    info = {
        "command": cmd,
        "git": git_rev(),
        "took": time.monotonic() - t0,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    png = None
    if args.png:
        plot(soak.samples, Path(args.png))
        png = os.path.relpath(args.png, ROOT / "bench") if args.append_results else args.png
    text = report(soak.totals, g, info, png)
    print(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "info": info,
                    "totals": soak.totals.__dict__,
                    "growth": g,
                    "samples": soak.samples,
                },
                indent=1,
            )
        )
    if args.append_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(text)
    return 1 if soak.totals.failures else 0


if __name__ == "__main__":
    sys.exit(main())
