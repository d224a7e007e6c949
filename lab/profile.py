"""Where the time goes inside a lab domain: CPU, threads, interrupts, frames.

What the lab can see without perf (the images have none and TCG has no PMU): a
snapshot is one shell command run in a domain (dom0 or a guest) that prints
``/proc/uptime``, the ``cpu`` lines of ``/proc/stat``, every thread's ``stat`` and
context-switch counts, ``/proc/interrupts`` and ``/proc/net/dev``; two snapshots a few
seconds apart, taken while iperf3 runs, give per-domain CPU shares (user, system,
softirq, steal: time Xen did not run the domain's vCPUs), the busiest threads (the
``ncd-pump`` threads, iperf3, ksoftirqd), event-channel interrupts per second (user
event channels are ``evtchn:<comm>``, netfront's ``eth0-q0-*``) and packets per
interface. Parsing runs on the host, so the domain pays for six ``cat``/``grep``
processes per snapshot and no Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

USER_HZ = 100  # /proc/stat and /proc/PID/stat ticks (CONFIG_HZ is not USER_HZ)
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
MARK = "@@prof"

SNAPSHOT = (
    f"echo {MARK} uptime; cat /proc/uptime; "
    f"echo {MARK} stat; grep '^cpu' /proc/stat; "
    # per thread "PID TID UTIME STIME COMM" and "TID v|nonv COUNT": small lines (a guest's
    # answer travels through xenstore and is capped, lab/agent.py)
    f"echo {MARK} tasks; grep -H '' /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null | sed -E "
    r"'s@^/proc/([0-9]+)/task/[0-9]+/stat:([0-9]+) \((.*)\) . ([^ ]+ ){10}([0-9]+) ([0-9]+) .*"
    r"@\1 \2 \5 \6 \3@'; "
    f"echo {MARK} ctxt; grep -H ctxt_switches /proc/[0-9]*/task/[0-9]*/status 2>/dev/null | "
    r"sed -E 's@^/proc/[0-9]+/task/([0-9]+)/status:(non)?voluntary_ctxt_switches:[[:space:]]*"
    r"@\1 \2v @'; "
    f"echo {MARK} irq; cat /proc/interrupts; "
    f"echo {MARK} netdev; cat /proc/net/dev; "
    f"echo {MARK} end"
)


def window_cmd(delay: float, secs: float, out: str) -> str:
    """A shell command that returns at once and leaves two snapshots, ``delay`` and
    ``delay + secs`` seconds from now, in file ``out`` (read it with ``cat`` later:
    nothing polls the domain while the window is open)."""
    return f"(sleep {delay:g}; {{ {SNAPSHOT}; }}; sleep {secs:g}; {{ {SNAPSHOT}; }}) > {out} 2>&1 &"


def window_read_cmds(out: str, wait_secs: int = 60) -> tuple[str, str]:
    """Two commands printing window file ``out``'s first and second snapshot (each part
    stays under the guest agent's output cap), the first once both are in (a loaded
    domain may be late) or after ``wait_secs`` with what is there."""
    first = (
        f"i=0; while [ \"$(grep -c '^{MARK} end' {out} 2>/dev/null)\" != 2 ] && "
        f"[ $i -lt {wait_secs * 2} ]; do sleep 0.5; i=$((i+1)); done; "
        f"sed -n '1,/^{MARK} end/p' {out}"
    )
    return first, f"sed '1,/^{MARK} end/d' {out}"


@dataclass
class Thread:
    pid: int
    tid: int
    comm: str
    ticks: int  # utime + stime
    voluntary: int = 0
    involuntary: int = 0


@dataclass
class Snapshot:
    uptime: float = 0.0
    cpus: int = 0
    cpu: dict[str, int] = field(default_factory=dict)  # the "cpu" line: all CPUs summed
    threads: dict[int, Thread] = field(default_factory=dict)  # by tid
    irqs: dict[str, int] = field(default_factory=dict)  # "NUM name" -> count (all CPUs)
    netdev: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # interface -> (rx bytes, rx packets, tx bytes, tx packets)


_TASK = re.compile(r"^(\d+) (\d+) (\d+) (\d+) (.*)$")  # PID TID UTIME STIME COMM
_CTXT = re.compile(r"^(\d+) (non)?v (\d+)$")  # TID v|nonv COUNT


def parse_snapshots(text: str) -> list[Snapshot]:
    """Every complete snapshot in ``text`` (a window's file holds two)."""
    snaps: list[Snapshot] = []
    cur: Snapshot | None = None
    section = ""
    for line in text.splitlines():
        if line.startswith(MARK + " "):
            section = line.split()[1]
            if section == "uptime":
                cur = Snapshot()
            elif section == "end" and cur is not None:
                snaps.append(cur)
                cur = None
            continue
        if cur is not None:
            _parse_line(cur, section, line)
    return snaps


def _parse_line(s: Snapshot, section: str, line: str) -> None:
    if section == "uptime" and line.strip():
        s.uptime = float(line.split()[0])
    elif section == "stat":
        name, *vals = line.split()
        if name == "cpu":
            s.cpu = {k: int(v) for k, v in zip(CPU_FIELDS, vals, strict=False)}
        elif name.startswith("cpu"):
            s.cpus += 1
    elif section == "tasks":
        m = _TASK.match(line)
        if m:
            pid, tid, ut, st = (int(m.group(i)) for i in range(1, 5))
            s.threads[tid] = Thread(pid, tid, m.group(5), ut + st)
    elif section == "ctxt":
        m = _CTXT.match(line)
        if m and int(m.group(1)) in s.threads:
            t = s.threads[int(m.group(1))]
            if m.group(2):
                t.involuntary = int(m.group(3))
            else:
                t.voluntary = int(m.group(3))
    elif section == "irq":
        head, _, rest = line.partition(":")
        cols = rest.split()
        counts = [int(c) for c in cols if c.isdigit()]
        if head.strip() and counts:
            name = " ".join(c for c in cols[len(counts) :] if not c.isdigit())
            s.irqs[f"{head.strip()} {name}".strip()] = sum(counts)
    elif section == "netdev" and ":" in line:
        ifname, _, rest = line.partition(":")
        v = rest.split()
        if len(v) >= 10:
            s.netdev[ifname.strip()] = (int(v[0]), int(v[1]), int(v[8]), int(v[9]))


def summarize(a: Snapshot, b: Snapshot, top: int = 8) -> dict[str, Any]:
    """What happened between two snapshots of one domain, as rates and shares."""
    secs = max(b.uptime - a.uptime, 1e-3)
    capacity = max(b.cpus, 1) * secs * USER_HZ  # ticks available to the domain's vCPUs
    cpu = {k: round(100 * (b.cpu.get(k, 0) - a.cpu.get(k, 0)) / capacity, 1) for k in CPU_FIELDS}
    cpu["busy"] = round(100 - cpu["idle"] - cpu["iowait"] - cpu["steal"], 1)
    procs = {t.tid: t.comm for t in b.threads.values() if t.tid == t.pid}
    threads = []
    for tid, t in b.threads.items():
        old = a.threads.get(tid)
        if old is None:
            continue
        threads.append(
            {
                "proc": procs.get(t.pid, "?"),
                "thread": t.comm,
                "tid": tid,
                "cpu_pct": round(100 * (t.ticks - old.ticks) / (secs * USER_HZ), 1),
                "sleeps_per_s": round((t.voluntary - old.voluntary) / secs),
                "preempted_per_s": round((t.involuntary - old.involuntary) / secs),
            }
        )
    threads.sort(key=lambda r: (-r["cpu_pct"], -r["sleeps_per_s"]))
    irqs = {k: round((v - a.irqs.get(k, 0)) / secs) for k, v in b.irqs.items()}
    irqs = dict(sorted(((k, v) for k, v in irqs.items() if v > 0), key=lambda kv: -kv[1])[:top])
    net = {}
    for ifname, (rb, rp, tb, tp) in b.netdev.items():
        o = a.netdev.get(ifname, (0, 0, 0, 0))
        drp, dtp = rp - o[1], tp - o[3]
        if ifname != "lo" and (drp or dtp):
            net[ifname] = {
                "rx_pps": round(drp / secs),
                "tx_pps": round(dtp / secs),
                "rx_bytes_per_pkt": round((rb - o[0]) / drp) if drp else 0,
                "tx_bytes_per_pkt": round((tb - o[2]) / dtp) if dtp else 0,
            }
    return {
        "secs": round(secs, 2),
        "cpus": b.cpus,
        "cpu_pct": cpu,
        "threads": [t for t in threads[:top] if t["cpu_pct"] or t["sleeps_per_s"]],
        "irqs_per_s": irqs,
        "net": net,
    }


def window_summary(text: str) -> dict[str, Any]:
    """The summary of a window's file, or ``{"error": ...}`` when it is incomplete."""
    snaps = parse_snapshots(text)
    if len(snaps) < 2:
        return {"error": f"{len(snaps)} complete snapshot(s) in the window", "raw": text[-800:]}
    return summarize(snaps[0], snaps[-1])


def xentop_cpu(text: str) -> dict[str, float]:
    """Per-domain CPU(%) from the last iteration of ``xentop -b -i N`` (the first one
    counts since boot). Includes the time Xen spent on the domain's behalf."""
    blocks: list[dict[str, float]] = []
    for line in text.splitlines():
        cols = line.split()
        if cols[:1] == ["NAME"]:
            blocks.append({})
        elif blocks and len(cols) >= 4:
            try:
                blocks[-1][cols[0]] = float(cols[3])
            except ValueError:
                continue
    return blocks[-1] if blocks else {}


def counter_deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-frame figures from two ``ncctl stats --json`` vif entries of one vif."""
    keys = (
        "frames_tx",
        "frames_rx",
        "bytes_tx",
        "bytes_rx",
        "ring_full_waits",
        "notifications_sent",
        "notifications_received",
        "notifications_spurious",
    )
    d = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in keys}
    frames = d["frames_tx"] + d["frames_rx"]
    out: dict[str, Any] = dict(d)
    if frames:
        out["notify_sent_per_frame"] = round(d["notifications_sent"] / frames, 3)
        out["notify_recv_per_frame"] = round(d["notifications_received"] / frames, 3)
        out["ring_full_per_1000_frames"] = round(1000 * d["ring_full_waits"] / frames, 2)
    for way in ("tx", "rx"):
        if d[f"frames_{way}"]:
            out[f"bytes_per_frame_{way}"] = round(d[f"bytes_{way}"] / d[f"frames_{way}"])
    return out
