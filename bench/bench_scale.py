"""Scale on xensim: many guests on one backend (issue 11's "Scale" item), one run.

World: dom0 running ``ncd backend`` and ``--guests`` guests each running ``ncd
frontend`` (the daemons as deployed, default configuration, metrics on). Then:

* **attach -> Connected**: the toolstack attaches one vif to every guest in a burst
  (``ncctl attach`` for each, back to back, from one process in dom0). A xenstore watch
  (as dom0) on every device's directories timestamps, per vif, the toolstack's write
  (the first event on the frontend's ``state``, written in the attach transaction) and
  the first time both ``state`` nodes read 4 (Connected). Median, p99, max.
* **RSS**: the backend's (``/proc/PID/smaps_rollup``) before the attaches and with every
  vif Connected, per vif; every frontend's with its one vif Connected (a whole daemon
  in a guest): median and max, plus PSS (shared pages divided among the sharers); the
  busy frontends' again after their traffic, and one frontend's after a scrape of its
  metrics endpoint (prometheus_client is imported at the first scrape).
* **aggregate throughput**: iperf3 TCP guest -> dom0 on one vif alone, then on
  ``--busy`` vifs at once (one stream each, each to its own dom0 address), alternating
  for ``--rounds`` rounds; the sum of the busy vifs over the one vif's rate.

Targets: p99 < 1 s, aggregate >= 0.9x one vif, backend <= 0.5 MB/vif, frontend
<= 20 MB. Addresses from 198.18.0.0/15; everything it creates is removed at the end.

    sudo .venv/bin/python bench/bench_scale.py [--guests 64] [--busy 8] [--seconds 4]
        [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from bench.iperf import iperf_once  # noqa: E402
from ncd import layout  # noqa: E402
from ncd.control import ControlClient, ControlError  # noqa: E402
from xensim import paths  # noqa: E402
from xensim.world import World  # noqa: E402
from xensim.xenstored.wire import XsError  # noqa: E402

PY = sys.executable
SCRAPE = (
    "import urllib.request; "
    "assert b'ncd_vif_frames_total' in urllib.request.urlopen("
    "'http://127.0.0.1:9477/metrics', timeout=30).read()"
)
CONNECTED = "4"
TARGETS = {
    "attach_p99_s": 1.0,
    "aggregate_ratio": 0.9,
    "backend_mb_per_vif": 0.5,
    "frontend_rss_mb": 20.0,
}


def mac(domid: int) -> str:
    return f"00:16:3e:5c:{domid >> 8:02x}:{domid & 0xFF:02x}"


def ip(domid: int, host: int) -> str:
    """Guest ``domid``'s vif subnet: 198.18.128.0/17 split in /30s, one per guest."""
    n = domid * 4 + host
    return f"198.18.{128 + (n >> 8)}.{n & 0xFF}"


def smaps(pid: int) -> dict[str, float]:
    """MB of ``Rss``, ``Pss``, ``Pss_Anon``, ``Pss_Shmem`` (etc.) from smaps_rollup."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) / 1024
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(len(s) * q))]


class StateWatch:
    """Timestamps of each vif's frontend ``state`` creation and of both states reaching 4."""

    def __init__(self, world: World, guests: list[int]) -> None:
        self.xs = world.xs()
        self.xs.sock.settimeout(None)
        self.fe = {f"{layout.frontend_dir(g, 0)}/state": g for g in guests}
        self.be = {f"{layout.backend_dir(0, g, 0)}/state": g for g in guests}
        self.written: dict[int, float] = {}
        self.conn: dict[tuple[str, int], float] = {}
        for g in guests:
            self.xs.watch(layout.frontend_dir(g, 0), f"fe{g}")
            self.xs.watch(layout.backend_dir(0, g, 0), f"be{g}")
        self.xs.events.clear()
        while True:  # the watches' own first events
            try:
                self.xs.read_watch(timeout=0.2)
            except TimeoutError:
                break
        self.armed = threading.Event()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.xs.sock.settimeout(0.2)
        self.armed.set()
        while not self.stop:
            try:
                path, _ = self.xs.read_watch(timeout=0.2)
            except TimeoutError:
                continue
            now = time.monotonic()
            side, g = (
                ("fe", self.fe[path])
                if path in self.fe
                else (("be", self.be[path]) if path in self.be else ("", 0))
            )
            if not side:
                continue
            if side == "fe":
                self.written.setdefault(g, now)
            try:
                value = self.xs.read(path).decode()
            except XsError:
                continue
            if value == CONNECTED:
                self.conn.setdefault((side, g), now)

    def latencies(self) -> dict[int, float]:
        return {
            g: max(self.conn[("fe", g)], self.conn[("be", g)]) - t0
            for g, t0 in self.written.items()
            if ("fe", g) in self.conn and ("be", g) in self.conn
        }

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        self.xs.close()


class Scale:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ncd-bench-scale-"))
        self.world = World(self.tmp / "world")
        self.prefix = getattr(args, "netns_prefix", None) or f"ncsc{os.getpid()}-"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.guests = list(range(1, args.guests + 1))

    def run_in(
        self, domid: int, cmd: list[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.world.exec_argv(domid, cmd),
            env=self.world.exec_env(domid),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def ping(self, domid: int) -> int | None:
        sock = paths.runtime_dir(self.world.dir, domid) / "ncd.sock"
        try:
            with ControlClient(sock, timeout=2) as c:
                return int(c.call("ping")["pid"])
        except (ControlError, OSError, KeyError):
            return None

    def start(self, domid: int, role: str) -> None:
        log = open(self.tmp / f"ncd-{role}-dom{domid}.log", "wb")  # noqa: SIM115 - child's
        self.procs[domid] = subprocess.Popen(
            self.world.exec_argv(domid, [PY, "-m", "ncd.daemon.main", role]),
            env=self.world.exec_env(domid),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=str(ROOT),
        )
        log.close()

    def wait(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; daemon logs in {self.tmp}")
            time.sleep(0.1)

    def up(self) -> None:
        self.world.up(len(self.guests), netns_prefix=self.prefix)
        for d in (0, *self.guests):
            self.run_in(d, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
        self.start(0, "backend")
        for g in self.guests:
            self.start(g, "frontend")
        for d in (0, *self.guests):
            self.wait(
                lambda d=d: self.procs[d].poll() is not None or self.ping(d) is not None,
                120,
                f"the daemon in dom{d}",
            )
            if self.procs[d].poll() is not None:
                raise RuntimeError(f"the daemon in dom{d} exited; logs in {self.tmp}")

    def attach_all(self) -> None:
        """The toolstack: one ncctl attach per guest, back to back, from one process."""
        code = (
            "import sys\nfrom ncd import ncctl\n"
            "for d in sys.argv[1:]:\n"
            "    if ncctl.main(['attach', d, '--mac', '00:16:3e:5c:%02x:%02x' % "
            "(int(d) >> 8, int(d) & 255)], out=open('/dev/null', 'w')):\n"
            "        sys.exit(1)\n"
        )
        self.run_in(0, [PY, "-c", code, *map(str, self.guests)], timeout=120)

    def down(self) -> None:
        procs.stop(self.procs.values(), 20)
        if self.world.state_file.exists():
            self.world.down()
        if not getattr(self.args, "keep_logs", False):
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- throughput ---------------------------------------------------------------------
    def address(self, g: int) -> None:
        self.run_in(0, ["ip", "addr", "add", f"{ip(g, 1)}/30", "dev", f"ncvif{g}.0"])
        self.run_in(g, ["ip", "addr", "add", f"{ip(g, 2)}/30", "dev", "nc0"])
        self.wait(
            lambda: (
                self.run_in(g, ["ping", "-c", "1", "-W", "1", ip(g, 1)], check=False).returncode
                == 0
            ),
            15,
            f"ping from dom{g}",
        )

    def iperf(self, g: int) -> tuple[float, int]:
        """(Gbit/s, bytes received) of one TCP stream guest g -> dom0."""
        for _ in range(3):
            res = iperf_once(
                self.world.exec_argv(0, []),
                self.world.exec_env(0),
                lambda argv, tmo, g=g: self.run_in(g, argv, check=False, timeout=tmo),
                ip(g, 1),
                self.args.seconds,
                [],
            )
            if "end" in res and "error" not in res:
                s = res["end"]["sum_received"]
                return float(s["bits_per_second"]) / 1e9, int(s["bytes"])
            time.sleep(0.5)
        raise RuntimeError(f"iperf3 from dom{g} failed: {str(res)[:300]}")

    def busy(self, n: int) -> tuple[float, int, list[float]]:
        with ThreadPoolExecutor(n) as ex:
            got = list(ex.map(self.iperf, self.guests[:n]))
        return sum(x[0] for x in got), sum(x[1] for x in got), [x[0] for x in got]


def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """The whole scenario; returns the measurements (see the module docstring)."""
    if len(range(1, args.guests + 1)) < args.busy:
        raise ValueError(f"--busy {args.busy} needs at least as many --guests")
    s = Scale(args)
    t0 = time.monotonic()
    try:
        s.up()
        log(f"scale: {args.guests} guests up, daemons answering in {time.monotonic() - t0:.1f}s")
        be_pid = s.procs[0].pid
        be_before = smaps(be_pid)
        who = {
            "backend": [be_pid],
            "frontends": [s.procs[g].pid for g in s.guests],
            **{d: [s.world.state.pids[d]] for d in ("xenstored", "broker")},
        }
        cpu0 = {k: sum(cpu_s(p) for p in pids) for k, pids in who.items()}
        watch = StateWatch(s.world, s.guests)
        try:
            watch.armed.wait(5)
            t1 = time.monotonic()
            s.attach_all()
            try:
                s.wait(lambda: len(watch.latencies()) == len(s.guests), 60, "every vif")
            except RuntimeError as exc:
                late = sorted(set(s.guests) - set(watch.latencies()))
                raise RuntimeError(
                    f"{exc}: {len(late)} not Connected (domains {late[:10]})"
                ) from None
            attach_burst = time.monotonic() - t1
            attach_cpu = {k: sum(cpu_s(p) for p in pids) - cpu0[k] for k, pids in who.items()}
        finally:
            watch.close()
        lat = list(watch.latencies().values())
        log(f"scale: {len(lat)} vifs Connected, p99 {pct(lat, 0.99):.3f}s")
        time.sleep(1.0)  # let the last vif's set-up garbage settle
        be_after = smaps(be_pid)
        fe = [smaps(s.procs[g].pid) for g in s.guests]
        for g in s.guests[: args.busy]:
            s.address(g)
        one: list[float] = []
        agg: list[float] = []
        per_vif: list[list[float]] = []
        moved = 0
        for rnd in range(args.rounds):
            for n in (1, args.busy) if rnd % 2 == 0 else (args.busy, 1):
                gbit, nbytes, each = s.busy(n)
                moved += nbytes
                (one if n == 1 else agg).append(gbit)
                if n > 1:
                    per_vif.append(each)
                log(f"scale: round {rnd + 1}, {n} busy vif(s): {gbit:.2f} Gbit/s")
        be_busy = smaps(be_pid)
        fe_busy = [smaps(s.procs[g].pid) for g in s.guests[: args.busy]]
        scraped = s.guests[0]
        s.run_in(scraped, [PY, "-c", SCRAPE])
        time.sleep(1.0)
        fe_scraped = smaps(s.procs[scraped].pid)
    except BaseException:
        s.args.keep_logs = True  # the daemon logs say why
        log(f"bench_scale: failed; daemon logs kept in {s.tmp}")
        raise
    finally:
        s.down()
    n = len(s.guests)
    res: dict[str, Any] = {
        "guests": n,
        "busy": args.busy,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "attach": {
            "latencies_s": sorted(lat),
            "p50_s": statistics.median(lat),
            "p99_s": pct(lat, 0.99),
            "max_s": max(lat),
            "burst_s": attach_burst,
            "cpu_s": attach_cpu,
        },
        "backend": {
            "before_mb": be_before,
            "connected_mb": be_after,
            "after_busy_mb": be_busy,
            "rss_per_vif_mb": (be_after["Rss"] - be_before["Rss"]) / n,
            "pss_per_vif_mb": (be_after["Pss"] - be_before["Pss"]) / n,
        },
        "frontend": {
            "rss_mb": [f["Rss"] for f in fe],
            "pss_mb": [f["Pss"] for f in fe],
            "rss_median_mb": statistics.median(f["Rss"] for f in fe),
            "rss_max_mb": max(f["Rss"] for f in fe),
            "pss_median_mb": statistics.median(f["Pss"] for f in fe),
            "anon_median_mb": statistics.median(f.get("Pss_Anon", 0) for f in fe),
            "after_traffic_rss_median_mb": statistics.median(f["Rss"] for f in fe_busy),
            "scraped_rss_mb": fe_scraped["Rss"],
        },
        "throughput": {
            "one_gbit": one,
            "busy_gbit": agg,
            "busy_per_vif_gbit": per_vif,
            "one_median": statistics.median(one),
            "busy_median": statistics.median(agg),
            "bytes": moved,
        },
        "took_s": time.monotonic() - t0,
    }
    res["throughput"]["ratio"] = res["throughput"]["busy_median"] / res["throughput"]["one_median"]
    res["targets"] = [
        (
            "attach -> Connected p99 < 1 s",
            res["attach"]["p99_s"],
            res["attach"]["p99_s"] < TARGETS["attach_p99_s"],
        ),
        (
            f"{args.busy} busy vifs >= 0.9x one busy vif",
            res["throughput"]["ratio"],
            res["throughput"]["ratio"] >= TARGETS["aggregate_ratio"],
        ),
        (
            "backend RSS <= 0.5 MB per vif",
            res["backend"]["rss_per_vif_mb"],
            res["backend"]["rss_per_vif_mb"] <= TARGETS["backend_mb_per_vif"],
        ),
        (
            "frontend RSS <= 20 MB (median)",
            res["frontend"]["rss_median_mb"],
            res["frontend"]["rss_median_mb"] <= TARGETS["frontend_rss_mb"],
        ),
    ]
    return res


def table(r: dict[str, Any]) -> list[str]:
    a, b, f, t = r["attach"], r["backend"], r["frontend"], r["throughput"]
    lines = [
        f"{r['guests']} guests on one backend (dom0), one vif each, default configuration;"
        f" iperf3 TCP guest -> dom0, {r['seconds']} s per run, medians of {r['rounds']} rounds.",
        "",
        "| measurement | value | target |",
        "|---|---:|---|",
        f"| attach -> Connected p50 / p99 / max (s), {r['guests']} attached in a burst | "
        f"{a['p50_s']:.3f} / {a['p99_s']:.3f} / {a['max_s']:.3f} | p99 < 1 s |",
        f"| all {r['guests']} Connected, from the toolstack process's start (s) | "
        f"{a['burst_s']:.2f} | |",
        "| CPU used meanwhile (s): backend / xenstored / broker / all frontends | "
        f"{a['cpu_s']['backend']:.2f} / {a['cpu_s']['xenstored']:.2f} / "
        f"{a['cpu_s']['broker']:.2f} / {a['cpu_s']['frontends']:.2f} | |",
        f"| one busy vif (Gbit/s) | {t['one_median']:.2f} | |",
        f"| {r['busy']} busy vifs, aggregate (Gbit/s) | {t['busy_median']:.2f} "
        f"({t['ratio']:.2f}x one) | >= 0.9x |",
        f"| backend RSS: 0 vifs / {r['guests']} Connected (MB) | "
        f"{b['before_mb']['Rss']:.1f} / {b['connected_mb']['Rss']:.1f} | |",
        f"| backend RSS per vif (MB; PSS per vif) | {b['rss_per_vif_mb']:.3f} "
        f"({b['pss_per_vif_mb']:.3f}) | <= 0.5 |",
        f"| frontend RSS, median / max (MB; PSS median, anonymous PSS median) | "
        f"{f['rss_median_mb']:.1f} / {f['rss_max_mb']:.1f} ({f['pss_median_mb']:.1f}, "
        f"{f['anon_median_mb']:.1f}) | <= 20 |",
        f"| frontend RSS after its traffic, median of the {r['busy']} busy (MB) | "
        f"{f['after_traffic_rss_median_mb']:.1f} | |",
        f"| frontend RSS after a scrape of its metrics (MB; prometheus_client, ssl) | "
        f"{f['scraped_rss_mb']:.1f} | |",
        "",
        "Targets:",
        "",
    ]
    for what, v, ok in r["targets"]:
        lines.append(f"* {what}: {v:.3f} — {'met' if ok else '**not met**'}")
    return lines


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--guests", type=int, default=64, help="guests on the backend (default 64)")
    ap.add_argument(
        "--busy",
        type=int,
        default=8,
        help="vifs busy at once for the aggregate throughput (default 8)",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one vs busy vifs")
    ap.add_argument("--keep-logs", action="store_true", help="keep the daemon logs")
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_scale: needs root (network namespaces, TAPs)", file=sys.stderr)
        return 1
    res = run(args)
    print("\n".join(table(res)))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
