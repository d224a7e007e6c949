"""Benchmark xensim's hypervisor: event-channel round trip, grant map+unmap cost.

    .venv/bin/python bench/bench_hypervisor.py [--rtt N] [--repeat 3] [--no-write]

Starts a broker on a temp world (dom0, dom1, dom2), compiles
cext/xensim/tests/bench_hv.c against Debian's Xen headers/libs and runs it on the
shims as dom1/dom2 processes:

* event channel ping-pong between a dom2 process and a dom1 process (us per
  round trip = two notifies + two deliveries), and, under ``strace -c -f``, the
  syscalls the pinging process makes per notify and per round trip, and its
  messages to the broker during the loop (0: notify never goes to the broker);
* grant map + unmap of 1 page and of a 256-page batch (us per op and per page).

Prints a table and (unless --no-write) replaces/appends its section in
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xensim import paths, shimlibs  # noqa: E402
from xensim.broker.control import BrokerControl, wait_for_broker  # noqa: E402

SECTION = "## Simulated hypervisor (bench/bench_hypervisor.py)"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def build(tmp: Path) -> Path:
    lib = paths.shim_lib_dir()
    if not all((lib / s).exists() for s in shimlibs.SHIMS):
        shimlibs.build(lib)
    out = tmp / "bench_hv"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-o", str(out),
         str(ROOT / "cext/xensim/tests/bench_hv.c"), "-lxengnttab", "-lxenevtchn"],
        check=True,
    )  # fmt: skip
    return out


def env(world: Path, domid: int, **extra: str) -> dict[str, str]:
    return {**os.environ, **paths.domain_env(world, domid), **extra}


def rtt(binary: Path, world: Path, n: int, strace: Path | None = None) -> float:
    pong = subprocess.Popen(
        [str(binary), "pong", str(n)],
        env=env(world, 1, BENCH_PEER="2"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pong.stdout is not None
        port = pong.stdout.readline().split()[1]
        cmd = [str(binary), "ping", str(n), "1", port]
        if strace:
            cmd = ["strace", "-f", "-c", "-o", str(strace), *cmd]
        out = subprocess.run(cmd, env=env(world, 2), capture_output=True, text=True, check=True)
        pong.wait(30)
        return float(out.stdout.split()[1])
    finally:
        if pong.poll() is None:
            pong.kill()
            pong.wait()
        if pong.stdout:
            pong.stdout.close()


def strace_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            counts[m.group(2)] = int(m.group(1))
    return counts


def map_cost(binary: Path, world: Path, count: int, iters: int, first: int) -> float:
    out = subprocess.run(
        [str(binary), "map", str(count), str(iters), "1", str(first)],
        env=env(world, 2),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[1])


def run(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], str]:
    with tempfile.TemporaryDirectory(prefix="bench-hv-") as t:
        tmp = Path(t)
        binary = build(tmp)
        world = tmp / "world"
        log = open(tmp / "broker.log", "wb")  # noqa: SIM115
        broker = subprocess.Popen(
            [sys.executable, "-m", "xensim.broker", "--dir", str(world), "--log-level", "WARNING"],
            stderr=log,
            cwd=ROOT,
        )
        share = None
        try:
            wait_for_broker(world)
            with BrokerControl(world) as ctl:
                ctl.create_domain(1)
                ctl.create_domain(2)
            rtts = [rtt(binary, world, args.rtt) for _ in range(args.repeat)]
            n_trace = 2000
            trace = tmp / "strace.txt"
            rtt(binary, world, n_trace, trace)
            sc = strace_counts(trace)
            # Sender side: notify = one write(2) on the peer's eventfd; the
            # other writes are unmask self-wakeups (none when not pending).
            writes = sc.get("write", 0)
            total = sum(sc.values())
            broker_msgs = sc.get("sendmsg", 0)  # setup: hello + bind
            share = subprocess.Popen(
                [str(binary), "share", "256", "2"],
                env=env(world, 1),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert share.stdout is not None
            first = int(share.stdout.readline().split()[1])
            one = [map_cost(binary, world, 1, args.map_iters, first) for _ in range(args.repeat)]
            batch = [
                map_cost(binary, world, 256, max(args.map_iters // 40, 10), first)
                for _ in range(args.repeat)
            ]
        finally:
            if share is not None:
                share.communicate("", timeout=10)
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)
            log.close()
    med_rtt = statistics.median(rtts)
    m1, m256 = statistics.median(one), statistics.median(batch)
    rows = [
        ("event channel round trip (dom2 -> dom1 -> dom2)", f"{med_rtt:.1f} us", ""),
        (
            "syscalls per notify (sender, strace -c -f)",
            f"{writes / n_trace:.2f} write",
            f"{n_trace} round trips: {writes} write, {total} syscalls in all "
            f"({total / n_trace:.1f}/round trip), {broker_msgs} sendmsg to the broker "
            "(hello + bind, none in the loop)",
        ),
        ("grant map + unmap, 1 page", f"{m1:.1f} us/op", f"{m1:.1f} us/page"),
        ("grant map + unmap, 256-page batch", f"{m256:.0f} us/op", f"{m256 / 256:.1f} us/page"),
    ]
    cmd = " ".join(["bench/bench_hypervisor.py", *sys.argv[1:]])
    return rows, cmd


def table(rows: list[tuple[str, str, str]]) -> str:
    out = ["| measure | result | detail |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


def write_results(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# ncd benchmark results\n"
    if SECTION in old:
        start = old.index(SECTION)
        nxt = old.find("\n## ", start + len(SECTION))
        old = old[:start].rstrip("\n") + ("\n\n" + old[nxt + 1 :] if nxt >= 0 else "\n")
    path.write_text(old.rstrip("\n") + "\n\n" + text + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rtt", type=int, default=20000, help="round trips per run")
    p.add_argument("--map-iters", type=int, default=2000, help="1-page map+unmap per run")
    p.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    p.add_argument("--no-write", action="store_true", help="don't touch bench/RESULTS.md")
    args = p.parse_args()
    start = time.time()
    rows, cmd = run(args)
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            SECTION,
            "",
            "Broker (Python) + shim libraries, processes as dom1/dom2 linked against Debian's",
            "libxengnttab/libxenevtchn and run on the shims (`cext/xensim/tests/bench_hv.c`).",
            "A notify is a compare-and-swap on the peer's state word plus one `write(2)` on",
            "its eventfd (none when the peer port is masked): the broker is never involved.",
            "Grant mapping is a broker round trip (SCM_RIGHTS, one memfd per page) plus one",
            "mmap per page; unmapping is munmap plus a broker round trip.",
            "",
            f"Machine: {platform.node()}: Linux {platform.release()}, {os.cpu_count()} CPU, "
            f"{cpu_model()}",
            f"Command: `.venv/bin/python {cmd}` ({when}, git {git}); median of "
            f"{args.repeat} runs, {time.time() - start:.0f} s in all",
            "",
            table(rows),
        ]
    )
    print(text)
    if not args.no_write:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
