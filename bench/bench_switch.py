"""Forwarding benchmark (issue 10): the in-daemon switch beside dom0's Linux bridge, and
a chain of two driver domains beside one hop, on one xensim world, one run.

World (dom0 + 7 domains, every daemon as deployed: ``ncd backend`` / ``ncd driver`` /
``ncd frontend``)::

    guest A (dom1), guest B (dom2): three vifs each, all backed by dom0
      devid 0 -> dom0 switch "swm" ([switch.swm] forward_copy = "memcpy")
      devid 1 -> dom0 switch "swg" ([switch.swg] forward_copy = "grant")
      devid 2 -> dom0 TAP ncvifN.2 in Linux bridge "brb" (the TAP path)
    chain memcpy: dom0 br0m <- dom3 driver <- dom4 driver <- F (dom7, devid 0)
    chain grant:  dom0 br0g <- dom5 driver <- dom6 driver <- F (dom7, devid 1)
      (drivers: ``ncd driver --uplink-switch up``, [switch.up] forward_copy = mode;
       as tests/e2e/test_forwarding_chain.py)
    one hop:      dom0 br1 <- F (dom7, devid 2) over a TAP vif ncvif7.2 in br1

Per round, per test, the compared paths run one after the other in an order that rotates
from round to round (so the host's noise hits all of them): iperf3 TCP one stream each
direction (A -> B and B -> A; F -> dom0 and dom0 -> F) and ping RTT p50 / p99
(``--pings`` echo requests ``--ping-interval`` apart). Medians over ``--rounds``, ratios
switch / bridge, chain / one hop, grant / memcpy, and the issue's targets. Addresses
come from 198.18.0.0/15; everything created is removed at the end.

    sudo .venv/bin/python bench/bench_switch.py [--groups switch chain] [--rounds 3]
        [--seconds 4] [--pings 200] [--dir DIR] [--netns-prefix P] [--json OUT]
        [--append-results]

The switch counters at the end name, per switch, the sleeps a spin avoided and the
frames held for a full destination (docs/forwarding.md, "Full destinations").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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
A, B = 1, 2  # the two guests of the switch / bridge comparison
CHAIN = {"memcpy": (3, 4), "grant": (5, 6)}  # (driver next to dom0, driver next to F)
F = 7  # the chain's frontend (and the one-hop guest)
DOMAINS = 7
SW_DEV = {"switch memcpy": 0, "switch grant": 1, "bridge": 2}
CH_DEV = {"chain memcpy": 0, "chain grant": 1, "one hop": 2}
CH_BR = {"chain memcpy": "br0m", "chain grant": "br0g", "one hop": "br1"}

# (key, label, unit) of the measurements; the same for both groups, directions named per group
TESTS = ["tcp_fwd", "tcp_rev", "rtt"]


def mac(domid: int, devid: int) -> str:
    return f"00:16:3e:5b:{domid:02x}:{devid:02x}"


@dataclass(frozen=True)
class Path_:
    """One compared path: iperf3/ping client and server (domain, address)."""

    name: str
    client: int
    server: int
    server_ip: str


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    paths: tuple[Path_, ...]  # the first two are the ncd paths (memcpy, grant), last the base
    fwd: str  # label of tcp_fwd
    rev: str  # label of tcp_rev

    @property
    def base(self) -> Path_:
        return self.paths[-1]


GROUPS = (
    Group(
        "switch",
        "guest <-> guest: dom0's in-daemon switch vs dom0's Linux bridge (TAP vifs)",
        tuple(Path_(n, A, B, f"198.18.{50 + d}.{B}") for n, d in SW_DEV.items()),
        "TCP A -> B, 1 stream (Gbit/s)",
        "TCP B -> A, 1 stream (Gbit/s)",
    ),
    Group(
        "chain",
        "F <-> dom0: two driver domains (chain) vs one hop (TAP vif)",
        tuple(Path_(n, F, 0, f"198.18.{60 + d}.1") for n, d in CH_DEV.items()),
        "TCP F -> dom0, 1 stream (Gbit/s)",
        "TCP dom0 -> F, 1 stream (Gbit/s)",
    ),
)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ncd-bench-sw-"))
        self.world = World(Path(args.dir) if args.dir else self.tmp / "world")
        self.prefix = args.netns_prefix or f"ncbs{os.getpid()}-"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.retrans: dict[tuple[str, str], list[int]] = {}  # iperf3 retransmits per run
        self.groups = tuple(g for g in GROUPS if g.key in args.groups)
        self.chain = any(g.key == "chain" for g in self.groups)

    # ---- helpers ------------------------------------------------------------------------
    def argv(self, domid: int, cmd: list[str]) -> list[str]:
        return self.world.exec_argv(domid, cmd)

    def run(
        self, domid: int, cmd: list[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(domid, cmd),
            env=self.world.exec_env(domid),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def ip(self, domid: int, *args: str) -> None:
        self.run(domid, ["ip", *args])

    def control(self, domid: int) -> ControlClient:
        return ControlClient(paths.runtime_dir(self.world.dir, domid) / "ncd.sock", timeout=5)

    def call(self, domid: int, what: str) -> dict[str, Any]:
        with self.control(domid) as c:
            return dict(c.call(what))

    def wait(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; daemon logs in {self.tmp}")
            time.sleep(0.05)

    # ---- set-up -------------------------------------------------------------------------
    def start(self, domid: int, role: str, *extra: str) -> None:
        ring = ["--ring-bytes", str(self.args.ring_bytes)] if self.args.ring_bytes else []
        log = open(self.tmp / f"ncd-{role}-dom{domid}.log", "wb")  # noqa: SIM115 - child's
        self.procs[domid] = subprocess.Popen(
            self.argv(domid, [PY, "-m", "ncd.daemon.main", role, "--no-metrics", *ring, *extra]),
            env=self.world.exec_env(domid),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=str(ROOT),
        )
        log.close()

        def answering() -> bool:
            if self.procs[domid].poll() is not None:
                raise RuntimeError(f"{role} in dom{domid} exited; see {log.name} in {self.tmp}")
            try:
                self.call(domid, "ping")
                return True
            except (ControlError, OSError):
                return False

        self.wait(answering, 15, f"{role} in dom{domid}")

    def connected(self, be: int, fe: int, devid: int) -> bool:
        try:
            for d in (be, fe):
                if not any(
                    v["domid"] == fe and v["devid"] == devid and v["state"] == "Connected"
                    for v in self.call(d, "list")["vifs"]
                ):
                    return False
            return True
        except (ControlError, OSError, KeyError):
            return False

    def attach(self, fe: int, devid: int, *how: str) -> None:
        self.run(
            0,
            [
                PY,
                "-m",
                "ncd.ncctl",
                "attach",
                str(fe),
                "--devid",
                str(devid),
                "--mac",
                mac(fe, devid),
                *how,
            ],
        )

    def up(self) -> None:
        self.world.up(DOMAINS, netns_prefix=self.prefix)
        for d in range(DOMAINS + 1):
            self.run(
                d,
                [
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.default.disable_ipv6=1",
                    "net.ipv6.conf.all.disable_ipv6=1",
                ],
            )
        for br in ("brb", *CH_BR.values()):
            self.ip(0, "link", "add", br, "type", "bridge")
            self.ip(0, "link", "set", br, "up")
        for name, br in CH_BR.items():
            self.ip(0, "addr", "add", f"198.18.{60 + CH_DEV[name]}.1/24", "dev", br)
        cfg0 = self.tmp / "dom0.toml"
        cfg0.write_text(
            '[switch.swm]\nforward_copy = "memcpy"\n\n[switch.swg]\nforward_copy = "grant"\n'
        )
        self.start(0, "backend", "--config", str(cfg0))
        for g in (A, B, F) if self.chain else (A, B):
            self.start(g, "frontend")
        for mode, drivers in CHAIN.items() if self.chain else ():
            cfg = self.tmp / f"driver-{mode}.toml"
            cfg.write_text(f'[switch.up]\nforward_copy = "{mode}"\n')
            for d in drivers:
                self.start(d, "driver", "--uplink-switch", "up", "--config", str(cfg))
        links = []
        for g in (A, B):
            self.attach(g, 0, "--switch", "swm")
            self.attach(g, 1, "--switch", "swg")
            self.attach(g, 2, "--bridge", "brb")
            links += [(0, g, 0), (0, g, 1), (0, g, 2)]
        if self.chain:
            for (mode, (d1, d2)), devid in zip(CHAIN.items(), (0, 1), strict=True):
                self.attach(d1, 0, "--bridge", CH_BR[f"chain {mode}"], "--trunk")
                self.attach(d2, 0, "--backend", str(d1), "--switch", "up", "--trunk")
                self.attach(F, devid, "--backend", str(d2), "--switch", "up")
                links += [(0, d1, 0), (d1, d2, 0), (d2, F, devid)]
            self.attach(F, 2, "--bridge", "br1")
            links.append((0, F, 2))
        for be, fe, devid in links:
            self.wait(
                lambda be=be, fe=fe, devid=devid: self.connected(be, fe, devid),
                20,
                f"vif {fe}/{devid} (backend dom{be}) Connected",
            )
        for g in (A, B):
            for devid in SW_DEV.values():
                self.ip(g, "addr", "add", f"198.18.{50 + devid}.{g}/24", "dev", f"nc{devid}")
        for devid in CH_DEV.values() if self.chain else ():
            self.ip(F, "addr", "add", f"198.18.{60 + devid}.2/24", "dev", f"nc{devid}")
        for g in self.groups:  # warm ARP / the learning tables and check every path
            for p in g.paths:
                self.wait(
                    lambda p=p: (
                        self.run(
                            p.client, ["ping", "-c", "1", "-W", "1", p.server_ip], check=False
                        ).returncode
                        == 0
                    ),
                    15,
                    f"ping on {p.name}",
                )

    def down(self) -> None:
        procs.stop(self.procs.values(), 15)
        if self.world.state_file.exists():
            self.world.down()
        if not self.args.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- measurements -------------------------------------------------------------------
    def iperf(self, p: Path_, reverse: bool, attempts: int = 3) -> float:
        last = ""
        for _ in range(attempts):
            res = self._iperf_once(p, ["-R"] if reverse else [])
            if "error" not in res and "end" in res:
                end = res["end"]
                self.retrans.setdefault(("tcp_rev" if reverse else "tcp_fwd", p.name), []).append(
                    int(end.get("sum_sent", {}).get("retransmits", 0))
                )
                return float(end["sum_received"]["bits_per_second"]) / 1e9
            last = str(res.get("error", res))[:300]
            print(f"  (iperf3 on {p.name}: {last}; again)", flush=True)
            time.sleep(0.5)
        raise RuntimeError(f"iperf3 on {p.name} failed: {last}")

    def _iperf_once(self, p: Path_, extra: list[str]) -> dict[str, Any]:
        return iperf_once(
            self.argv(p.server, []),
            self.world.exec_env(p.server),
            lambda argv, tmo: self.run(p.client, argv, check=False, timeout=tmo),
            p.server_ip,
            self.args.seconds,
            extra,
        )

    def rtt(self, p: Path_) -> tuple[float, float]:
        n, i = self.args.pings, self.args.ping_interval
        r = self.run(
            p.client,
            ["ping", "-c", str(n), "-i", str(i), "-W", "1", p.server_ip],
            check=False,
            timeout=n * i + 30,
        )
        times = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout))
        if not times:
            raise RuntimeError(f"no ping replies on {p.name}: {r.stdout[-300:]}")
        return (
            statistics.median(times) * 1000,
            times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        )

    def measure(self, test: str, p: Path_) -> Any:
        if test == "rtt":
            return self.rtt(p)
        return self.iperf(p, reverse=test == "tcp_rev")

    # ---- counters -----------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Switch counters per switch (dom0's swm/swg, the drivers' up) and port drops."""
        out: dict[str, Any] = {}
        where = [(0, "swm", "switch memcpy"), (0, "swg", "switch grant")]
        for mode, (d1, d2) in CHAIN.items() if self.chain else ():
            where += [(d1, "up", f"chain {mode} dom{d1}"), (d2, "up", f"chain {mode} dom{d2}")]
        stats = {d: self.call(d, "stats") for d in {w[0] for w in where}}
        on = {
            d: {(v["domid"], v["devid"]): v.get("switch") for v in self.call(d, "list")["vifs"]}
            for d in stats
        }
        for d, name, label in where:
            sw = next((s for s in stats[d].get("switches", []) if s["name"] == name), None)
            if sw is None:
                continue
            frames = sum(f["frames"] for f in sw.get("forwarded", []))
            drops: dict[str, int] = {}
            held = spurious = 0
            for v in stats[d]["vifs"]:
                if on[d].get((v["domid"], v["devid"])) == name:
                    held += int(v.get("ring_full_waits") or 0)
                    spurious += int(v.get("notifications_spurious") or 0)
                    for k, n in (v.get("drops") or {}).items():
                        if n:
                            drops[k] = drops.get(k, 0) + int(n)
            out[label] = {
                "frames": frames,
                "rounds": sw.get("rounds"),
                "wakeups": sw.get("wakeups"),
                "spins_won": sw.get("spins_won"),
                "grant_copy_calls": sw.get("grant_copy_calls"),
                "grant_copy_segs": sw.get("grant_copy_segs"),
                "drops": drops,
                "held": held,
                "spurious": spurious,
            }
        return out


# ---- report ---------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count()}


def fmt(v: float) -> str:
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def med(results: dict[str, dict[str, list[Any]]], test: str, path: str, idx: int = 0) -> float:
    vals = results[test][path]
    if test == "rtt":
        return float(statistics.median(v[idx] for v in vals))
    return float(statistics.median(vals))


def summarise(
    results: dict[str, dict[str, list[Any]]], groups: tuple[Group, ...] = GROUPS
) -> dict[str, Any]:
    """Medians, ratios and the issue's targets."""
    s: dict[str, Any] = {"medians": {}, "ratios": {}, "targets": []}
    for g in groups:
        for p in g.paths:
            s["medians"][p.name] = {
                "tcp_fwd": med(results, "tcp_fwd", p.name),
                "tcp_rev": med(results, "tcp_rev", p.name),
                "rtt_p50": med(results, "rtt", p.name, 0),
                "rtt_p99": med(results, "rtt", p.name, 1),
            }
    m = s["medians"]
    for g in groups:
        base = g.base.name
        for p in g.paths[:-1]:
            for k in ("tcp_fwd", "tcp_rev", "rtt_p50", "rtt_p99"):
                s["ratios"][f"{p.name} / {base} {k}"] = m[p.name][k] / m[base][k]
        mm, gg = g.paths[0].name, g.paths[1].name
        for k in ("tcp_fwd", "tcp_rev", "rtt_p50", "rtt_p99"):
            s["ratios"][f"{g.key} grant / memcpy {k}"] = m[gg][k] / m[mm][k]
    r = s["ratios"]
    keys = {g.key for g in groups}
    for mode in ("memcpy", "grant") if "switch" in keys else ():
        sw = f"switch {mode}"
        for k, d in (("tcp_fwd", "A -> B"), ("tcp_rev", "B -> A")):
            v = r[f"{sw} / bridge {k}"]
            s["targets"].append((f"{sw} TCP {d} >= 1.5x bridge", v, v >= 1.5))
        v = r[f"{sw} / bridge rtt_p50"]
        s["targets"].append((f"{sw} ping RTT p50 <= 0.5x bridge", v, v <= 0.5))
    for mode in ("memcpy", "grant") if "chain" in keys else ():
        ch = f"chain {mode}"
        for k, d in (("tcp_fwd", "F -> dom0"), ("tcp_rev", "dom0 -> F")):
            v = r[f"{ch} / one hop {k}"]
            s["targets"].append((f"{ch} TCP {d} >= 0.5x one hop", v, v >= 0.5))
    return s


def tables(
    results: dict[str, dict[str, list[Any]]], s: dict[str, Any], groups: tuple[Group, ...] = GROUPS
) -> list[str]:
    m, r = s["medians"], s["ratios"]
    lines: list[str] = []
    for g in groups:
        (pm, pg, pb) = (p.name for p in g.paths)
        lines += [
            "",
            f"{g.title}; medians:",
            "",
            f"| test | {pm} | {pg} | {pb} | {pm} / {pb} | {pg} / {pb} | grant / memcpy |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k, label in (
            ("tcp_fwd", g.fwd),
            ("tcp_rev", g.rev),
            ("rtt_p50", "ping RTT p50 (us)"),
            ("rtt_p99", "ping RTT p99 (us)"),
        ):
            lines.append(
                f"| {label} | {fmt(m[pm][k])} | {fmt(m[pg][k])} | {fmt(m[pb][k])} | "
                f"{r[f'{pm} / {pb} {k}']:.2f}x | {r[f'{pg} / {pb} {k}']:.2f}x | "
                f"{r[f'{g.key} grant / memcpy {k}']:.2f}x |"
            )
    lines += [
        "",
        "Every round (rounds in order; TCP fwd = A -> B / F -> dom0; retransmits = "
        "iperf3's TCP retransmissions per run, fwd / rev):",
        "",
        "| path | TCP fwd (Gbit/s) | TCP rev (Gbit/s) | RTT p50 (us) | RTT p99 (us) "
        "| retransmits |",
        "|---|---|---|---|---|---|",
    ]
    rx = s.get("retransmits", {})
    for g in groups:
        for p in g.paths:
            rt = results["rtt"][p.name]
            re_ = " / ".join(
                ", ".join(str(n) for n in rx.get(f"{t} {p.name}", []))
                for t in ("tcp_fwd", "tcp_rev")
            )
            lines.append(
                f"| {p.name} | {', '.join(fmt(x) for x in results['tcp_fwd'][p.name])} | "
                f"{', '.join(fmt(x) for x in results['tcp_rev'][p.name])} | "
                f"{', '.join(f'{x[0]:.0f}' for x in rt)} | "
                f"{', '.join(f'{x[1]:.0f}' for x in rt)} | {re_} |"
            )
    lines += ["", "Targets (issue 10):", ""]
    for what, v, ok in s["targets"]:
        lines.append(f"* {what}: {v:.2f}x — {'met' if ok else '**not met**'}")
    return lines


def report(
    results: dict[str, dict[str, list[Any]]],
    s: dict[str, Any],
    counters: dict[str, Any],
    info: dict[str, Any],
    groups: tuple[Group, ...] = GROUPS,
) -> str:
    mc = info["machine"]
    lines = [
        "",
        "## Forwarding: switch vs bridge, chain vs one hop (bench/bench_switch.py, "
        f"{info['date']})",
        "",
        "Paths, all on one xensim world with the daemons as deployed (default",
        "`channel.ring_bytes` unless the command says otherwise): **switch** = guest A's vif",
        "-> dom0 `ncd backend`'s in-daemon switch (`[switch.NAME] forward_copy` = memcpy or",
        "grant) -> guest B's vif (mapped ring to mapped ring, no TAP in dom0); **bridge** =",
        "the same two guests' vifs as dom0 TAPs (`ncvifN.2`) in a Linux bridge (pump -> TAP",
        "-> bridge -> TAP -> pump); **chain** = F -> `ncd driver --uplink-switch up` -> the",
        "same -> dom0 TAP in a bridge with dom0's address (tests/e2e/test_forwarding_chain.py;",
        "the drivers' switch in each copy mode); **one hop** = F's third vif straight to a",
        "dom0 TAP in a bridge with dom0's address. iperf3 one TCP stream per direction,",
        f"ping {info['pings']} x {info['ping_interval'] * 1000:.0f} ms; each round runs the "
        "compared paths of a test back to back,",
        "in an order rotating between rounds.",
        "",
        f"Machine: Linux {mc['kernel']}, {mc['cores']} cores, {mc['cpu']}; load average "
        f"{info['load_before']} before, {info['load_after']} after",
        f"Command: `{info['command']}` ({info['date']}, git {info['git']}, "
        f"{info['took']:.0f} s); medians of {info['rounds']} rounds",
    ]
    lines += tables(results, s, groups)
    lines += [
        "",
        "Switch counters at the end (all rounds):",
        "",
        "| switch | frames forwarded | wake-ups | wake-ups / frame | sleeps avoided by spinning "
        "| grant-copy calls "
        "| held for a full destination | spurious events (late EOI) | drops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, c in counters.items():
        wpf = (c["wakeups"] or 0) / c["frames"] if c["frames"] else 0.0
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(c["drops"].items())) or "0"
        lines.append(
            f"| {label} | {c['frames']:,} | {c['wakeups'] or 0:,} | {wpf:.3f} | "
            f"{c.get('spins_won') or 0:,} | "
            f"{c['grant_copy_calls'] or 0:,} | {c.get('held', 0):,} | "
            f"{c.get('spurious', 0):,} | {drops} |"
        )
    lines += [
        "",
        "Reading it:",
        "",
        "* The machine was shared and noisy while this ran (other engineers' test suites",
        f"  and a QEMU lab; load average {info['load_before']} before, "
        f"{info['load_after']} after, on {mc['cores']} cores): absolute figures move",
        "  between rounds (see the per-round table); compare within a round and the",
        "  medians, and re-run on an idle host before quoting absolute numbers.",
    ]
    return "\n".join(lines) + "\n"


def git_rev() -> str:
    rev = (
        subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per run")
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--ping-interval", type=float, default=0.01, help="seconds")
    ap.add_argument(
        "--groups",
        nargs="+",
        choices=[g.key for g in GROUPS],
        default=[g.key for g in GROUPS],
        help="which comparisons to run: switch (switch vs bridge), chain (two "
        "driver domains vs one hop); default both",
    )
    ap.add_argument(
        "--ring-bytes",
        type=int,
        default=0,
        help="every daemon's ring size each way (each guest fronts 3 vifs: "
        "1 MiB rings exceed gntalloc's default 1024 grants per guest)",
    )
    ap.add_argument("--dir", help="the xensim world's directory (default: a temporary one)")
    ap.add_argument("--netns-prefix", help="the world's netns prefix (default ncbs<pid>-)")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--keep-logs", action="store_true", help="keep the daemon logs")
    ap.add_argument("--append-results", action="store_true", help="append to bench/RESULTS.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_switch: needs root (network namespaces, TAPs)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "ping", "ip"):
        if shutil.which(tool) is None:
            print(f"bench_switch: {tool} not found", file=sys.stderr)
            return 1
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    b = Bench(args)
    t0 = time.monotonic()
    results: dict[str, dict[str, list[Any]]] = {
        t: {p.name: [] for g in b.groups for p in g.paths} for t in TESTS
    }
    try:
        b.up()
        print(f"world up in {time.monotonic() - t0:.1f}s", flush=True)
        for rnd in range(args.rounds):
            for test in TESTS:
                for g in b.groups:
                    k = rnd % len(g.paths)
                    for p in g.paths[k:] + g.paths[:k]:
                        v = b.measure(test, p)
                        results[test][p.name].append(v)
                        shown = (
                            f"{v[0]:.0f} / {v[1]:.0f} us" if test == "rtt" else f"{v:.2f} Gbit/s"
                        )
                        print(f"round {rnd + 1} {test:7} {p.name:13} {shown}", flush=True)
        counters = b.counters()
    except BaseException:
        b.args.keep_logs = True  # the daemon logs say why
        print(f"bench_switch: failed; daemon logs kept in {b.tmp}", file=sys.stderr)
        raise
    finally:
        b.down()
    s = summarise(results, b.groups)
    s["retransmits"] = {f"{t} {p}": v for (t, p), v in b.retrans.items()}
    cmd = " ".join(
        [
            "sudo",
            ".venv/bin/python",
            "bench/bench_switch.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    info = {
        "machine": machine(),
        "command": cmd,
        "git": git_rev(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "took": time.monotonic() - t0,
        "rounds": args.rounds,
        "pings": args.pings,
        "ping_interval": args.ping_interval,
        "load_before": load_before,
        "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    text = report(results, s, counters, info, b.groups)
    print(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"info": info, "results": results, "summary": s, "counters": counters}, indent=1
            )
        )
    if args.append_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
