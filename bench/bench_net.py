"""Network benchmark: ncd (dom0 <-> guest on xensim) beside a kernel veth pair, one run.

Builds a xensim host (dom0 + 1 guest) with ``ncd backend`` / ``ncd frontend``
running and a vif attached, plus two plain network namespaces joined by a veth
pair. Then, alternating between the two paths, for ``--rounds`` rounds:

* iperf3 TCP guest -> dom0, 1 stream and 2 streams (veth: ns B -> ns A);
* iperf3 TCP dom0 -> guest, 1 stream;
* iperf3 UDP with 64-byte frames (18-byte payload), unlimited rate: frames delivered/s;
* ping RTT p50 / p99 (``--pings`` echo requests, 5 ms apart).

Medians per path, and ratios ncd / veth, are printed and (``--append-results``)
appended to bench/RESULTS.md with the machine and the command. Addresses come from
198.18.0.0/15; everything it creates is removed at the end.

    .venv/bin/python bench/bench_net.py [--seconds 4] [--rounds 3] [--ring-bytes N]
                                        [--queues N] [--tests tcp1,tcp2] [--append-results]

``--queues N`` runs both daemons with ``--max-queues N`` (queues per vif; default: the
daemons' default); ``--queues 1,2`` runs one guest per value (guest g's frontend with
``--max-queues`` value g, the backend with the largest), each an ncd path of its own, so
1 and 2 queues are compared in the same rounds. ``--tests`` runs a subset of the tests
by key (tcp1, tcp2, tcp1r, udp64, rtt).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from bench.iperf import iperf_once  # noqa: E402
from ncd.control import ControlClient, ControlError  # noqa: E402
from xensim import paths  # noqa: E402
from xensim.world import World  # noqa: E402

PY = sys.executable
GUEST = 1
UDP_PAYLOAD = 18  # + 8 UDP + 20 IPv4 + 14 Ethernet = 60 bytes (64 on a wire, with FCS)


@dataclass
class Path_:
    """One side of the comparison: where the server and the client run."""

    name: str
    server_ns: str
    client_ns: str
    server_ip: str
    env_server: dict[str, str]
    env_client: dict[str, str]
    guest: int | None = None  # the ncd path's guest domain


def sh(cmd: list[str], ns: str | None = None, env: dict[str, str] | None = None,
       check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else cmd
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=check,
                          timeout=timeout)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ncd-bench-"))
        self.world = World(self.tmp / "world")
        self.prefix = f"ncdb{os.getpid()}-"
        self.veth = (f"{self.prefix}va", f"{self.prefix}vb")
        self.procs: list[subprocess.Popen[bytes]] = []

    # ---- set-up ----------------------------------------------------------------------
    def env(self, domid: int) -> dict[str, str]:
        return self.world.exec_env(domid)

    @property
    def queue_counts(self) -> list[int]:
        """``--queues``: one guest per value (``[]``: one guest, the daemons' default)."""
        raw = getattr(self.args, "queues", "")  # bench/run passes none
        return [int(x) for x in str(raw or "").split(",") if x]

    def guests(self) -> list[int]:
        return list(range(GUEST, GUEST + max(1, len(self.queue_counts))))

    def up(self) -> tuple[Path_, Path_]:
        """The world, the ncd path of the first guest and the veth path."""
        ps = self.up_paths()
        return ps[0], ps[-1]

    def up_paths(self) -> list[Path_]:
        """ncd paths (one per guest; guest g's vif at 198.18.<9+g>.0/24, ``--queues`` value
        g as its frontend's --max-queues), then the veth path."""
        counts, guests = self.queue_counts, self.guests()
        self.world.up(len(guests), netns_prefix=f"{self.prefix}d")
        ns0 = self.world.netns(0)
        for d in (0, *guests):
            sh(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"], self.world.netns(d))
        ring = ["--ring-bytes", str(self.args.ring_bytes)] if self.args.ring_bytes else []
        for domid in (0, *guests):
            role = "backend" if domid == 0 else "frontend"
            opts = list(ring)
            if counts:
                q = max(counts) if domid == 0 else counts[domid - GUEST]
                opts += ["--max-queues", str(q)]
            log = open(self.tmp / f"ncd-{role}-{domid}.log", "wb")  # noqa: SIM115 - child's
            self.procs.append(subprocess.Popen(
                self.world.exec_argv(domid, [PY, "-m", "ncd.daemon.main", role, "--no-metrics",
                                             *opts]),
                env=self.env(domid), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                cwd=str(ROOT)))
            log.close()
        time.sleep(0.5)
        for g in guests:
            sh([PY, "-m", "ncd.ncctl", "attach", str(g), "--mac", f"00:16:3e:be:00:{g:02x}"],
               ns0, self.env(0))
        self.wait_connected()
        out = []
        for g in guests:
            net = f"198.18.{9 + g}"
            sh(["ip", "addr", "add", f"{net}.1/24", "dev", f"ncvif{g}.0"], ns0)
            sh(["ip", "addr", "add", f"{net}.2/24", "dev", "nc0"], self.world.netns(g))
            name = f"ncd-{counts[g - GUEST]}q" if len(counts) > 1 else "ncd"
            out.append(Path_(name, ns0, self.world.netns(g), f"{net}.1", self.env(0),
                             self.env(g), g))
        va, vb = self.veth
        for ns in (va, vb):
            sh(["ip", "netns", "add", ns])
            sh(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"], ns)
            sh(["ip", "link", "set", "lo", "up"], ns)
        sh(["ip", "link", "add", "veth-a", "netns", va, "type", "veth", "peer", "name",
            "veth-b", "netns", vb])
        sh(["ip", "addr", "add", "198.18.20.1/24", "dev", "veth-a"], va)
        sh(["ip", "addr", "add", "198.18.20.2/24", "dev", "veth-b"], vb)
        sh(["ip", "link", "set", "veth-a", "up"], va)
        sh(["ip", "link", "set", "veth-b", "up"], vb)
        plain = dict(os.environ)
        out.append(Path_("veth", va, vb, "198.18.20.1", plain, plain))
        for p in out:  # warm ARP and check the path
            sh(["ping", "-c", "2", "-i", "0.2", p.server_ip], p.client_ns)
        return out

    def wait_connected(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        want = ["Connected"] * len(self.guests())
        while time.monotonic() < deadline:
            try:
                ok = True
                for d in (0, *self.guests()):
                    sock = paths.runtime_dir(self.world.dir, d) / "ncd.sock"
                    with ControlClient(sock, timeout=2) as c:
                        states = [v["state"] for v in c.call("list")["vifs"]]
                    ok = ok and states == (want if d == 0 else ["Connected"])
                if ok:
                    return
            except (ControlError, OSError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError("vif did not connect; see the daemon logs in " + str(self.tmp))

    def queue_frames(self, p: Path_) -> list[int]:
        """Frames per queue of ``p``'s vif so far (both directions, the frontend's count)."""
        if p.guest is None:
            return []
        sock = paths.runtime_dir(self.world.dir, p.guest) / "ncd.sock"
        with ControlClient(sock, timeout=5) as c:
            vif = c.call("stats")["vifs"][0]
        return [q["frames_tx"] + q["frames_rx"] for q in vif.get("queues", [])]

    def down(self) -> None:
        procs.stop(self.procs, 15)
        for ns in self.veth:
            sh(["ip", "netns", "del", ns], check=False)
        if self.world.state_file.exists():
            self.world.down()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- measurements ------------------------------------------------------------------
    def iperf(self, p: Path_, extra: list[str], attempts: int = 3) -> dict:
        """One iperf3 run (fresh one-off server); retried if iperf3 itself reports an error."""
        last = ""
        for _ in range(attempts):
            res = self._iperf_once(p, extra)
            if "error" not in res and "end" in res:
                return res
            last = str(res.get("error", res))[:300]
            print(f"  (iperf3 {' '.join(extra)} on {p.name}: {last}; again)", flush=True)
            time.sleep(0.5)
        raise RuntimeError(f"iperf3 {extra} on {p.name} failed: {last}")

    def _iperf_once(self, p: Path_, extra: list[str]) -> dict:
        return iperf_once(
            ["ip", "netns", "exec", p.server_ns], p.env_server,
            lambda argv, tmo: sh(argv, p.client_ns, p.env_client, check=False, timeout=tmo),
            p.server_ip, self.args.seconds, extra)

    def tcp(self, p: Path_, streams: int, reverse: bool = False) -> float:
        extra = ["-P", str(streams)] + (["-R"] if reverse else [])
        res = self.iperf(p, extra)
        return float(res["end"]["sum_received"]["bits_per_second"]) / 1e9

    def udp64(self, p: Path_) -> float:
        res = self.iperf(p, ["-u", "-b", "0", "-l", str(UDP_PAYLOAD)])
        end = res.get("end", {})
        s = end.get("sum_received") or end.get("sum")
        if not s:
            raise RuntimeError(f"iperf3 UDP on {p.name}: {res.get('error', res)!s:.400}")
        return (int(s["packets"]) - int(s["lost_packets"])) / float(s["seconds"])

    def rtt(self, p: Path_) -> tuple[float, float]:
        r = sh(["ping", "-c", str(self.args.pings), "-i", "0.005", p.server_ip], p.client_ns)
        times = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout))
        if not times:
            raise RuntimeError(f"no ping replies on {p.name}")
        return (statistics.median(times) * 1000,
                times[min(len(times) - 1, int(len(times) * 0.99))] * 1000)


TESTS: list[tuple[str, str, Callable[[Bench, Path_], float | tuple[float, float]]]] = [
    ("tcp1", "TCP guest -> dom0, 1 stream (Gbit/s)", lambda b, p: b.tcp(p, 1)),
    ("tcp2", "TCP guest -> dom0, 2 streams (Gbit/s)", lambda b, p: b.tcp(p, 2)),
    ("tcp1r", "TCP dom0 -> guest, 1 stream (Gbit/s)", lambda b, p: b.tcp(p, 1, reverse=True)),
    ("udp64", "UDP 64-byte frames delivered (frames/s)", lambda b, p: b.udp64(p)),
    ("rtt", "ping RTT p50 / p99 (us)", lambda b, p: b.rtt(p)),
]


ALL_TESTS = ",".join(k for k, _, _ in TESTS)


def selected(args: argparse.Namespace) -> list[tuple[str, str, Callable[..., Any]]]:
    keys = args.tests.split(",")
    return [t for t in TESTS if t[0] in keys]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"Linux {platform.release()}, {os.cpu_count()} CPUs, {cpu}"


def fmt(v: float) -> str:
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def options(args: argparse.Namespace) -> str:
    """The command line's options beyond --seconds / --rounds, as given."""
    out = f" --ring-bytes {args.ring_bytes}" if args.ring_bytes else ""
    out += f" --queues {args.queues}" if args.queues else ""
    return out + (f" --tests {args.tests}" if args.tests != ALL_TESTS else "")


def queue_split(before: list[int], after: list[int]) -> str:
    """How a test's frames fell on the queues, in percent (e.g. ``52/48``)."""
    d = [a - b for a, b in zip(after, before, strict=False)] or [0]
    total = sum(d) or 1
    return "/".join(f"{100 * x / total:.0f}" for x in d)


def report(results: dict[str, dict[str, list]], args: argparse.Namespace, took: float,
           spread: dict[str, dict[str, list[str]]] | None = None) -> str:
    """The Markdown section: a column per path (the ncd paths, then veth), each ncd
    path's ratio to veth, with two ncd paths (``--queues 1,2``) the second's ratio to the
    first, and how each ncd path's frames fell on its queues."""
    load = os.getloadavg()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    names = list(next(iter(results.values())))
    ncds = names[:-1]
    head = " | ".join(names)
    ratios = [f"{n} / veth" for n in ncds] + ([f"{ncds[-1]} / {ncds[0]}"] if len(ncds) > 1
                                              else [])
    lines = [
        "",
        "## Network (bench/bench_net.py)",
        "",
        "ncd path: guest TAP `nc0` -> frontend pump -> vchan (xensim: grants are shared",
        "memfd pages, event channels go through the broker) -> backend pump -> dom0 TAP",
        "`ncvif1.0`, the daemons as deployed (`ncd frontend` / `ncd backend`, negotiated",
        "csum + TSO). veth path: two network namespaces joined by a kernel veth pair.",
        "Alternating ncd / veth for each test, medians of the rounds.",
        "",
        f"Machine: {machine()} (load average at the end {load[0]:.1f})",
        f"Command: `.venv/bin/python bench/bench_net.py --seconds {args.seconds} --rounds "
        f"{args.rounds}{options(args)} --append-results` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, git "
        f"{git}, {took:.0f}s)",
        "",
        f"| test | {head} | {' | '.join(ratios)} | {ncds[0]} rounds |",
        "|---|" + "---|" * (len(names) + len(ratios) + 1),
    ]

    def row(label: str, med: dict[str, float], rounds: str, x: str = "") -> str:
        vals = [f"{med[n]:.0f}" if x else fmt(med[n]) for n in names]
        rs = [med[n] / med["veth"] for n in ncds]
        if len(ncds) > 1:
            rs.append(med[ncds[-1]] / med[ncds[0]])
        return f"| {label} | {' | '.join(vals)} | {' | '.join(f'{r:.2f}{x}' for r in rs)} | " \
            f"{rounds} |"

    for key, label, _ in selected(args):
        res = results[key]
        if key == "rtt":
            for i, pct in ((0, "p50"), (1, "p99")):
                med = {n: statistics.median(x[i] for x in res[n]) for n in names}
                lines.append(row(f"ping RTT {pct} (us)", med,
                                 ", ".join(f"{x[i]:.0f}" for x in res[ncds[0]]), "x"))
            continue
        med = {n: statistics.median(res[n]) for n in names}
        lines.append(row(label, med, ", ".join(fmt(x) for x in res[ncds[0]])))
    for n, per in (spread or {}).items():
        multi = {k: v for k, v in per.items() if any("/" in x for x in v)}
        if multi:
            lines.append("")
            lines.append(f"{n}: frames per queue, per round (percent, queue 0 / 1 / ...): "
                         + "; ".join(f"{k} {', '.join(v)}" for k, v in multi.items()))
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4, help="seconds per iperf3 run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (medians are taken)")
    ap.add_argument("--pings", type=int, default=400, help="echo requests per RTT round")
    ap.add_argument("--ring-bytes", type=int, default=0, help="daemon ring size each way")
    ap.add_argument("--queues", default="",
                    help="queues per vif (the daemons' --max-queues; default: theirs); "
                    "a list such as 1,2 runs one guest per value on one backend, each an ncd "
                    "path of its own, in the same rounds")
    ap.add_argument("--tests", default=ALL_TESTS,
                    help=f"comma-separated tests to run, of {ALL_TESTS} (default: all)")
    ap.add_argument("--append-results", action="store_true",
                    help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    unknown = set(args.tests.split(",")) - set(ALL_TESTS.split(","))
    if unknown:
        ap.error(f"--tests: unknown {', '.join(sorted(unknown))} (known: {ALL_TESTS})")
    for tool in ("iperf3", "ping", "ip"):
        if shutil.which(tool) is None:
            print(f"bench_net: {tool} not found", file=sys.stderr)
            return 1
    b = Bench(args)
    t0 = time.monotonic()
    results: dict[str, dict[str, list]] = {}
    spread: dict[str, dict[str, list[str]]] = {}  # ncd path -> test -> queue split per round
    try:
        ps = b.up_paths()
        results = {k: {p.name: [] for p in ps} for k, _, _ in TESTS}
        spread = {p.name: {k: [] for k, _, _ in TESTS} for p in ps if p.guest is not None}
        for rnd in range(args.rounds):
            for key, label, fn in selected(args):
                k = rnd % len(ps)
                for p in ps[k:] + ps[:k]:  # each path first in turn
                    before = b.queue_frames(p)
                    v = fn(b, p)
                    results[key][p.name].append(v)
                    used = ""
                    if p.guest is not None:
                        split = queue_split(before, b.queue_frames(p))
                        spread[p.name][key].append(split)
                        used = f" (frames per queue: {split})"
                    print(f"round {rnd + 1} {p.name:6} {label}: {v}{used}", flush=True)
    finally:
        b.down()
    text = report(results, args, time.monotonic() - t0, spread)
    print(text)
    if args.append_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
