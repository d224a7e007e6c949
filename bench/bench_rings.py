"""Ring-size sweep: ncd dom0 <-> guest with each `channel.ring_bytes`, beside veth, one run.

One xensim world per ring size (bench/bench_net.py's world: dom0 `ncd backend`, a
guest `ncd frontend`, one vif), all up at once, plus bench_net's veth pair; then, for
``--rounds`` rounds, each test on every path back to back in an order rotating between
rounds (so the host's load falls on every size alike):

* iperf3 TCP guest -> dom0 and dom0 -> guest, 1 stream;
* ping RTT p50 / p99 (``--pings`` echo requests, 5 ms apart).

Medians per size, ratios to veth from the same rounds, the vif's ring-full waits
(both daemons) per data frame, and the grants a vif costs the guest at that size
(docs/performance.md, "Ring size"). ``--append-results`` appends the table to
bench/RESULTS.md.

    sudo .venv/bin/python bench/bench_rings.py [--sizes 131072 262144 524288 1048576]
        [--seconds 4] [--rounds 3] [--append-results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_net import GUEST, Bench, Path_, machine  # noqa: E402
from ncd.control import ControlClient  # noqa: E402
from xensim import paths  # noqa: E402

PAGE = 4096
GNTALLOC_LIMIT = 1024  # Linux gntalloc's default `limit` (grants per guest)

TESTS: list[tuple[str, str, Callable[[Bench, Path_], float | tuple[float, float]]]] = [
    ("tcp1", "TCP guest -> dom0, 1 stream (Gbit/s)", lambda b, p: b.tcp(p, 1)),
    ("tcp1r", "TCP dom0 -> guest, 1 stream (Gbit/s)", lambda b, p: b.tcp(p, 1, reverse=True)),
    ("rtt", "ping RTT p50 / p99 (us)", lambda b, p: b.rtt(p)),
]


def grants_per_vif(ring: int) -> int:
    """libxenvchan's layout: the shared control page plus each ring's pages."""
    return 1 + 2 * (ring // PAGE)


def vif_counters(b: Bench) -> dict[str, int]:
    """Frames and ring-full waits of the world's one vif, both daemons summed."""
    out = {"frames": 0, "ring_full_waits": 0}
    for d in (0, GUEST):
        sock = paths.runtime_dir(b.world.dir, d) / "ncd.sock"
        with ControlClient(sock, timeout=5) as c:
            for v in c.call("stats")["vifs"]:
                out["ring_full_waits"] += int(v.get("ring_full_waits", 0))
                if d == 0:
                    out["frames"] += int(v.get("frames_tx", 0)) + int(v.get("frames_rx", 0))
    return out


def report(
    sizes: list[int],
    res: dict[str, dict[str, list]],
    counters: dict[int, dict],
    args: argparse.Namespace,
    took: float,
    load0: tuple[float, ...],
) -> str:
    load = os.getloadavg()
    git = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    cmd = (
        f"sudo .venv/bin/python bench/bench_rings.py --sizes {' '.join(map(str, sizes))} "
        f"--seconds {args.seconds} --rounds {args.rounds}"
    )
    lines = [
        "",
        f"### Ring-size sweep ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Machine: {machine()}; load average {load0[0]:.1f} {load0[1]:.1f} before, "
        f"{load[0]:.1f} {load[1]:.1f} after",
        f"Command: `{cmd}` (git {git}, {took:.0f} s); medians of {args.rounds} rounds, "
        "every size and veth back to back in each round",
        "",
        "| ring each way | grants per vif | vifs per guest (gntalloc 1024) | TCP guest -> dom0 "
        "(Gbit/s) | / veth | TCP dom0 -> guest | / veth | RTT p50 (us) | / veth | RTT p99 "
        "(us) | ring-full waits / frame |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    v1, v1r = statistics.median(res["tcp1"]["veth"]), statistics.median(res["tcp1r"]["veth"])
    v50 = statistics.median(x[0] for x in res["rtt"]["veth"])
    for s in sizes:
        k = str(s)
        t1, t1r = statistics.median(res["tcp1"][k]), statistics.median(res["tcp1r"][k])
        r50 = statistics.median(x[0] for x in res["rtt"][k])
        r99 = statistics.median(x[1] for x in res["rtt"][k])
        c = counters[s]
        g = grants_per_vif(s)
        lines.append(
            f"| {s // 1024} KiB | {g} | {GNTALLOC_LIMIT // g} | {t1:.2f} | {t1 / v1:.2f}x | "
            f"{t1r:.2f} | {t1r / v1r:.2f}x | {r50:.0f} | {r50 / v50:.2f}x | {r99:.0f} | "
            f"{c['ring_full_waits'] / max(1, c['frames']):.4f} |"
        )
    lines.append(
        f"| veth | | | {v1:.2f} | | {v1r:.2f} | | {v50:.0f} | | "
        f"{statistics.median(x[1] for x in res['rtt']['veth']):.0f} | |"
    )
    lines += [
        "",
        "Every round (sizes in KiB; TCP fwd / rev Gbit/s, RTT p50 us):",
        "",
        "| path | TCP guest -> dom0 | TCP dom0 -> guest | RTT p50 |",
        "|---|---|---|---|",
    ]
    for k in [*map(str, sizes), "veth"]:
        name = f"{int(k) // 1024} KiB" if k != "veth" else "veth"
        lines.append(
            f"| {name} | {', '.join(f'{x:.2f}' for x in res['tcp1'][k])} | "
            f"{', '.join(f'{x:.2f}' for x in res['tcp1r'][k])} | "
            f"{', '.join(f'{x[0]:.0f}' for x in res['rtt'][k])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[131072, 262144, 524288, 1048576],
        help="ring sizes each way to compare (bytes, powers of two)",
    )
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians over them")
    ap.add_argument("--pings", type=int, default=400, help="echo requests per RTT run")
    ap.add_argument("--append-results", action="store_true", help="append to bench/RESULTS.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_rings: needs root (network namespaces, TAPs)", file=sys.stderr)
        return 1
    load0 = os.getloadavg()
    t0 = time.monotonic()
    benches: dict[int, Bench] = {}
    paths_: dict[str, Path_] = {}
    res: dict[str, dict[str, list]] = {k: {} for k, _, _ in TESTS}
    counters: dict[int, dict] = {}
    try:
        for i, s in enumerate(args.sizes):
            b = Bench(argparse.Namespace(**{**vars(args), "ring_bytes": s}))
            b.prefix = f"ncdr{os.getpid()}-{i}-"
            b.veth = (f"{b.prefix}va", f"{b.prefix}vb")
            benches[s] = b
            ncd, veth = b.up()
            paths_[str(s)] = ncd
            paths_.setdefault("veth", veth)
            print(f"world with {s}-byte rings up", flush=True)
        names = list(paths_)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for key, label, fn in TESTS:
                for name in order:
                    b = benches[int(name)] if name != "veth" else benches[args.sizes[0]]
                    v = fn(b, paths_[name])
                    res[key].setdefault(name, []).append(v)
                    print(f"round {rnd + 1} {name:>8} {label}: {v}", flush=True)
        counters = {s: vif_counters(b) for s, b in benches.items()}
    finally:
        for b in benches.values():
            b.down()
    text = report(args.sizes, res, counters, args, time.monotonic() - t0, load0)
    print(text)
    if args.append_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
