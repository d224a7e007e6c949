"""Where the time goes, per direction and per test: per-frame wake-ups, notifications,
ring-full waits, CPU and (``--strace``) syscalls of both daemons' threads.

World: bench/bench_net.py's (xensim dom0 ``ncd backend`` + guest ``ncd frontend``, one
vif, default configuration). For each test -- iperf3 TCP guest -> dom0 and dom0 -> guest
(one stream), UDP 64-byte frames guest -> dom0, ping (``--pings`` at 5 ms) -- it reads,
before and after, every thread's ``voluntary_ctxt_switches`` / ``nonvoluntary_ctxt_switches``
and CPU time (/proc/PID/task/TID/{status,stat}) and the vif's counters (the control
socket's ``stats``: frames, event-channel notifications sent / received, ring-full
waits), and divides the deltas by the frames the vif moved (both directions: data and
ACKs). A voluntary context switch of a pump thread is one sleep -> wake-up. With
``--strace`` each test runs a second time under ``strace -c -f`` attached to the
``ncd-pump`` threads of both daemons (ptrace slows them: read the per-frame syscall
mix, not the rate); with ``--perf`` once more under ``perf record`` of the same threads
(the top kernel and user symbols).

Two floors beside them, measured in the same run:

* **cost**: each throughput test on ncd's path and on the veth pair, with the host's
  busy CPU time over the run (/proc/stat, every CPU): CPU per unit moved (ms per GB,
  us per UDP frame) and the ncd pumps' share of it. When both paths keep every CPU
  busy, ncd / veth throughput is at most veth's cost / ncd's cost;
* **wake**: bench/wake_bench.c, two threads handing a token back and forth through
  eventfds, sleeping in poll() as a pump does (200 us apart, so that the other one is
  asleep), pinned to two CPUs, to one CPU, and spinning instead of sleeping: what one
  wake-up costs on this machine, the unit of ncd's ping RTT.

    sudo .venv/bin/python bench/bench_wakeups.py [--seconds 4] [--pings 400] [--strace]
        [--perf] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import bench_net  # noqa: E402
from ncd.control import ControlClient  # noqa: E402
from xensim import paths  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
COUNTERS = (
    "frames_tx",
    "frames_rx",
    "notifications_sent",
    "notifications_received",
    "ring_full_waits",
)
ROLES = ("backend", "frontend")
PERF_TOP = 6
WAKE_SOURCE = ROOT / "bench" / "wake_bench.c"
WAKE_ROUNDS = 2000
WAKE_REPEAT = 5
# (label, CPU of thread A, CPU of thread B, mode): -1 = unpinned
WAKE_CASES = [
    ("two CPUs, sleeping in poll()", 0, 1, "sleep"),
    ("one CPU, sleeping in poll()", 0, 0, "sleep"),
    ("two CPUs, spinning (nobody asleep)", 0, 1, "spin"),
]


def threads(pid: int) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            status = Path(f"{base}/status").read_text()
            stat = Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        m = {k: int(v) for k, v in re.findall(r"^(\w+_ctxt_switches):\s+(\d+)$", status, re.M)}
        out[int(tid)] = {
            "comm": Path(f"{base}/comm").read_text().strip(),
            "vol": m["voluntary_ctxt_switches"],
            "invol": m["nonvoluntary_ctxt_switches"],
            "cpu": (int(stat[11]) + int(stat[12])) / TICK,
        }
    return out


def kind(pid: int, tid: int, comm: str) -> str:
    return "pump" if comm == "ncd-pump" else ("loop" if tid == pid else "other")


class Probe:
    def __init__(self, b: bench_net.Bench) -> None:
        self.b = b
        self.pids = {role: b.procs[i].pid for i, role in enumerate(ROLES)}

    def counters(self, role: str) -> dict[str, int]:
        domid = 0 if role == "backend" else bench_net.GUEST
        sock = paths.runtime_dir(self.b.world.dir, domid) / "ncd.sock"
        with ControlClient(sock, timeout=5) as c:
            vif = c.call("stats")["vifs"][0]
        return {k: int(vif[k]) for k in COUNTERS}

    def snap(self) -> dict[str, Any]:
        return {
            role: {"threads": threads(pid), "vif": self.counters(role)}
            for role, pid in self.pids.items()
        }

    def delta(self, a: dict[str, Any], z: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role, pid in self.pids.items():
            vif = {k: z[role]["vif"][k] - a[role]["vif"][k] for k in COUNTERS}
            th: dict[str, dict[str, float]] = {}
            for tid, t in z[role]["threads"].items():
                t0 = a[role]["threads"].get(tid, {"vol": 0, "invol": 0, "cpu": 0.0})
                k = th.setdefault(kind(pid, tid, t["comm"]), {"vol": 0, "invol": 0, "cpu": 0.0})
                for f in ("vol", "invol", "cpu"):
                    k[f] += t[f] - t0[f]
            out[role] = {"vif": vif, "threads": th}
        return out

    def pump_tids(self) -> dict[str, list[int]]:
        return {
            role: [tid for tid, t in threads(pid).items() if t["comm"] == "ncd-pump"]
            for role, pid in self.pids.items()
        }


def strace_run(probe: Probe, fn: Callable[[], Any], tmp: Path) -> dict[str, Any]:
    """Run ``fn`` with strace -c on both daemons' pump threads; calls per syscall."""
    procs = {}
    for role, tids in probe.pump_tids().items():
        out = tmp / f"strace-{role}.txt"
        argv = ["strace", "-c", "-q", "-o", str(out)] + [a for t in tids for a in ("-p", str(t))]
        procs[role] = (subprocess.Popen(argv, stderr=subprocess.DEVNULL), out)
    time.sleep(0.5)
    before = {r: probe.counters(r) for r in ROLES}
    fn()
    after = {r: probe.counters(r) for r in ROLES}
    res: dict[str, Any] = {}
    for role, (p, out) in procs.items():
        p.send_signal(signal.SIGINT)
        p.wait(20)
        calls: dict[str, int] = {}
        for line in out.read_text().splitlines():
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                calls[f[-1]] = int(f[3])
        frames = sum(after[role][k] - before[role][k] for k in ("frames_tx", "frames_rx"))
        res[role] = {"frames": frames, "calls": calls}
    return res


def perf_run(probe: Probe, fn: Callable[[], Any], tmp: Path) -> dict[str, list[list[Any]]]:
    """Run ``fn`` with ``perf record`` on each daemon's pump threads; the top symbols
    (share of the samples, symbol) per daemon."""
    procs = {}
    for role, tids in probe.pump_tids().items():
        data = tmp / f"perf-{role}.data"
        argv = ["perf", "record", "-q", "-o", str(data), "-t", ",".join(map(str, tids))]
        procs[role] = (
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            data,
        )
    time.sleep(0.5)
    fn()
    res: dict[str, list[list[Any]]] = {}
    for role, (p, data) in procs.items():
        p.send_signal(signal.SIGINT)
        p.wait(30)
        rep = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", "sym"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        top = re.findall(r"^\s+([\d.]+)%\s+\[[.k]\]\s+(\S+)", rep, re.M)[:PERF_TOP]
        res[role] = [[float(share), sym] for share, sym in top]
    return res


TESTS: list[tuple[str, str, list[str] | None]] = [
    ("tcp1", "TCP guest -> dom0, 1 stream", []),
    ("tcp1r", "TCP dom0 -> guest, 1 stream", ["-R"]),
    (
        "udp64",
        "UDP 64 B guest -> dom0, unlimited",
        ["-u", "-b", "0", "-l", str(bench_net.UDP_PAYLOAD)],
    ),
    ("rtt", "ping, 5 ms apart", None),
]


def host_busy() -> float:
    """Busy CPU-seconds of every CPU since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def cost_run(
    b: bench_net.Bench, p: bench_net.Path_, extra: list[str], probe: Probe | None
) -> dict[str, float]:
    """One iperf3 run on path ``p`` with the host's busy CPU time over it; with a probe
    (the ncd path) also the pumps' CPU time."""
    pumps = probe.snap() if probe else None
    t0 = host_busy()
    end = b.iperf(p, extra)["end"]
    busy = host_busy() - t0
    out = {"busy": busy}
    if "-u" in extra:
        s = end.get("sum_received") or end["sum"]
        out["units"] = float(int(s["packets"]) - int(s["lost_packets"]))
        out["seconds"] = float(s["seconds"])
    else:
        out["units"] = float(end["sum_received"]["bytes"]) / 1e9
        out["seconds"] = float(end["sum_received"]["seconds"])
    if probe and pumps:
        d = probe.delta(pumps, probe.snap())
        out["pumps"] = sum(d[r]["threads"].get("pump", {"cpu": 0.0})["cpu"] for r in ROLES)
    return out


def wake_run(tmp: Path) -> dict[str, list[float]]:
    """bench/wake_bench.c's cases, WAKE_REPEAT times each: p50 round trips in us."""
    exe = tmp / "wake_bench"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", str(WAKE_SOURCE), "-o", str(exe)],
        check=True,
    )
    ncpu = os.cpu_count() or 1
    out: dict[str, list[float]] = {}
    for label, a, bcpu, mode in WAKE_CASES:
        if max(a, bcpu) >= ncpu:
            continue
        rounds = WAKE_ROUNDS * (100 if mode == "spin" else 1)
        argv = [str(exe), str(rounds), str(a), str(bcpu), *(["spin"] if mode == "spin" else [])]
        out[label] = [
            int(
                subprocess.run(
                    argv, capture_output=True, text=True, check=True, timeout=120
                ).stdout.split()[0]
            )
            / 1000
            for _ in range(WAKE_REPEAT)
        ]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every test once on a fresh world (``args``: seconds, pings, strace, perf)."""
    b = bench_net.Bench(
        argparse.Namespace(seconds=args.seconds, rounds=1, pings=args.pings, ring_bytes=0)
    )
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ncd-wakeups-"))
    try:
        ncd, veth = b.up()
        probe = Probe(b)
        for key, _, extra in TESTS:

            def fn(extra: list[str] | None = extra) -> Any:
                return b.rtt(ncd) if extra is None else b.iperf(ncd, extra)

            a = probe.snap()
            t0 = time.monotonic()
            fn()
            results[key] = {"delta": probe.delta(a, probe.snap()), "wall": time.monotonic() - t0}
            if args.strace and extra is not None:
                results[key]["strace"] = strace_run(probe, fn, tmp)
            if args.perf and extra is not None:
                results[key]["perf"] = perf_run(probe, fn, tmp)
            print(f"{key}: done", file=sys.stderr, flush=True)
        cost: dict[str, Any] = {}
        for key, _, extra in TESTS:
            if extra is not None:
                cost[key] = {
                    "ncd": cost_run(b, ncd, extra, probe),
                    "veth": cost_run(b, veth, extra, None),
                }
        results["cost"] = cost
        print("cost: done", file=sys.stderr, flush=True)
        results["wake"] = wake_run(tmp)
        print("wake: done", file=sys.stderr, flush=True)
    finally:
        b.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per test")
    ap.add_argument("--pings", type=int, default=400, help="echo requests of the ping test")
    ap.add_argument(
        "--strace",
        action="store_true",
        help="also run each test under strace -c on the pump threads",
    )
    ap.add_argument(
        "--perf",
        action="store_true",
        help="also run each iperf3 test under perf record on the pump threads",
    )
    ap.add_argument("--json", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_wakeups: needs root", file=sys.stderr)
        return 1
    results = run(args)
    print("\n".join(table(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| test | daemon | frames (tx + rx) | pump sleeps / frame | event-loop wake-ups / "
        "frame | pump preemptions / frame | notifications sent / received per "
        "frame | ring-full waits | pump CPU us / frame | syscalls / frame (pump, strace): "
        "the top four |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, label, _ in TESTS:
        r = results.get(key)
        if r is None:
            continue
        for role in ROLES:
            d = r["delta"][role]
            v, th = d["vif"], d["threads"]
            n = max(1, v["frames_tx"] + v["frames_rx"])
            pump = th.get("pump", {"vol": 0, "invol": 0, "cpu": 0.0})
            loop = th.get("loop", {"vol": 0})
            sc = ""
            if "strace" in r:
                s = r["strace"][role]
                nf = max(1, s["frames"])
                top = sorted(s["calls"].items(), key=lambda kv: -kv[1])[:4]
                sc = f"{sum(s['calls'].values()) / nf:.2f}: " + ", ".join(
                    f"{c} {k / nf:.2f}" for c, k in top
                )
            lines.append(
                f"| {label} | {role} | {n:,} | {pump['vol'] / n:.3f} | {loop['vol'] / n:.3f} | "
                f"{pump['invol'] / n:.3f} | {v['notifications_sent'] / n:.3f} / "
                f"{v['notifications_received'] / n:.3f} | {v['ring_full_waits']:,} | "
                f"{pump['cpu'] * 1e6 / n:.2f} | {sc} |"
            )
    if any("perf" in r for r in results.values()):
        lines += [
            "",
            "| test | daemon | perf: top symbols of the pump threads (share of samples) |",
            "|---|---|---|",
        ]
        for key, label, _ in TESTS:
            for role in ROLES:
                top = results.get(key, {}).get("perf", {}).get(role)
                if top:
                    syms = ", ".join(f"{sym} {share:.1f}%" for share, sym in top)
                    lines.append(f"| {label} | {role} | {syms} |")
    return lines + cost_table(results.get("cost", {})) + wake_table(results.get("wake", {}))


def cost_table(cost: dict[str, Any]) -> list[str]:
    """What each path spends per unit moved; the ratio bounds ncd / veth throughput
    when both keep every CPU busy."""
    if not cost:
        return []
    lines = [
        "",
        "| test | path | rate | host CPUs busy | CPU per unit moved | ncd pumps' share "
        "| veth's cost / ncd's (the bound on ncd / veth) | measured ncd / veth |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label, _ in TESTS:
        c = cost.get(key)
        if not c:
            continue
        udp = key == "udp64"
        per = {k: c[k]["busy"] / max(c[k]["units"], 1e-9) for k in ("ncd", "veth")}
        rate = {k: c[k]["units"] / c[k]["seconds"] for k in ("ncd", "veth")}
        for path in ("ncd", "veth"):
            r = c[path]
            shown = f"{rate[path]:,.0f} frames/s" if udp else f"{rate[path] * 8:.2f} Gbit/s"
            unit = f"{per[path] * 1e6:.2f} us / frame" if udp else f"{per[path] * 1e3:.0f} ms / GB"
            share = f"{r['pumps'] / r['busy']:.0%}" if "pumps" in r and r["busy"] else ""
            tail = (
                f"{per['veth'] / per['ncd']:.2f}x | {rate['ncd'] / rate['veth']:.2f}x"
                if path == "ncd"
                else " | "
            )
            lines.append(
                f"| {label} | {path} | {shown} | {r['busy'] / r['seconds']:.2f} | "
                f"{unit} | {share} | {tail} |"
            )
    return lines


def wake_table(wake: dict[str, list[float]]) -> list[str]:
    if not wake:
        return []
    lines = [
        "",
        f"| bench/wake_bench.c: two threads, token through eventfds | round trip p50 (us), "
        f"median of {WAKE_REPEAT} | one hand-over (us) | every run's p50 |",
        "|---|---:|---:|---|",
    ]
    for label, runs in wake.items():
        med = statistics.median(runs)
        lines.append(
            f"| {label} | {med:.1f} | {med / 2:.1f} | {', '.join(f'{x:.1f}' for x in runs)} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
