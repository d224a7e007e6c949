"""Frames on xensim: ncd pump pair vs libxenvchan (vchan-socket-proxy) vs memcpy, one run.

One fresh xensim world (dom1 + dom2), frames of 64 B, 1500 B and 64 KiB sent dom1 -> dom2:

(a) ncd: a helper process in each domain holds one end of an ncd vchan (dom1 serves,
    dom2 connects) and a SOCK_SEQPACKET socketpair; a ``FramePump`` (C thread) moves
    frames between the socketpair and the vchan. dom1's helper (main thread) sends N
    frames into its end, dom2's helper receives and counts them (length checked, last
    frame compared byte for byte). Once with ncd's default ring (128 KiB each way) and
    once with 512 KiB rings.
(b) libxenvchan: Debian's vchan-socket-proxy, server in dom1 and client in dom2 in
    socket mode (in-page rings of 1 KiB / 2 KiB). The same helpers write the same bytes
    as records of the same size into a Unix stream socket in dom1 and read them back in
    dom2. The proxy has no framing: this is the byte stream's rate, counted in records.
(c) memcpy: a small C program copies the same number of bytes in blocks of the frame
    size into a 512 KiB ring-sized buffer, in one process.

Rates are wall clock from the sender's first send to the receiver's last byte (both
read CLOCK_MONOTONIC, shared by all processes). MB/s counts payload bytes (ncd frames
carry a 10-byte virtio-net header besides, not counted).

    .venv/bin/python bench/bench_frames.py [--frames 64:1000000,1500:300000,65536:30000]
                                           [--append-results]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.domproc import DomProc  # noqa: E402
from xensim.world import World  # noqa: E402

VSP = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
VNET = 10
BUF = 4 << 20
BIG_RING = 512 * 1024
REPLY_TIMEOUT = 60.0
DEFAULT_FRAMES = "64:1000000,1500:300000,65536:30000"

# ---- inside a domain ---------------------------------------------------------------------------


def _pump_cpu() -> float:
    """CPU seconds (user + system) of this process's ``ncd-pump`` threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            if stat[stat.index("(") + 1:stat.rindex(")")] == "ncd-pump":
                fields = stat[stat.rindex(")") + 2:].split()
                total += int(fields[11]) + int(fields[12])
    return total / tick


def _proc_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _send_frames(sock: socket.socket, size: int, n: int, header: bytes) -> dict[str, Any]:
    msg = header + _payload(size)
    send = sock.send if header else sock.sendall
    t0 = time.monotonic_ns()
    for _ in range(n):
        send(msg)
    return {"t0": t0, "t1": time.monotonic_ns()}


def _recv_frames(sock: socket.socket, size: int, n: int) -> dict[str, Any]:
    """Receive n seqpacket frames of VNET + size bytes; check lengths and the last one."""
    buf = bytearray(size + VNET + 4096)
    view = memoryview(buf)
    recv_into = sock.recv_into
    want = size + VNET
    bad = 0
    for _ in range(n):
        if recv_into(view) != want:
            bad += 1
    t1 = time.monotonic_ns()
    ok = bad == 0 and bytes(view[VNET:want]) == _payload(size)
    return {"t1": t1, "frames": n, "bytes": n * size, "bad_len": bad, "last_ok": ok}


def _recv_stream(sock: socket.socket, size: int, n: int) -> dict[str, Any]:
    """Read n * size bytes of the stream (1 MiB reads); check the records' content."""
    total = n * size
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    tail = b""
    while got < total:
        k = sock.recv_into(view[:min(len(buf), total - got)])
        if k == 0:
            break
        got += k
        tail = (tail + bytes(view[:k]))[-size:] if k < size else bytes(view[k - size:k])
    t1 = time.monotonic_ns()
    return {"t1": t1, "frames": got // size, "bytes": got, "bad_len": 0,
            "last_ok": got == total and tail == _payload(size)}


def _tune(s: socket.socket) -> socket.socket:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, BUF)
    return s


class FrameEnd:
    """Command set (tests/domproc.py) run in a domain: one end of an ncd vchan pumped
    into a SOCK_SEQPACKET socketpair (``serve PEER PATH RING`` or ``connect PEER PATH``,
    then ``pump``), or one end of a Unix stream socket (``listen SOCK`` then ``accept``,
    or ``dial SOCK``); then ``send SIZE N``, ``recv SIZE N``, ``stats``."""

    def __init__(self) -> None:
        self.xs: Any = None
        self.vchan: Any = None
        self.pump: Any = None
        self.sock: socket.socket | None = None
        self.end: socket.socket | None = None
        self.lsock: socket.socket | None = None

    def _xs(self) -> Any:
        from ncd.xen.xenstore import XenStore

        if self.xs is None:
            self.xs = XenStore()
        return self.xs

    def _rings(self) -> dict[str, Any]:
        return {"rd": self.vchan.read_size, "wr": self.vchan.write_size}

    def cmd_serve(self, peer: str, path: str, ring: str) -> dict[str, Any]:
        from ncd.vchan.channel import VchanServer

        self.vchan = VchanServer.create(self._xs(), int(peer), path, int(ring), int(ring))
        return self._rings()

    def cmd_connect(self, peer: str, path: str) -> dict[str, Any]:
        from ncd.vchan.channel import VchanClient

        self.vchan = VchanClient.connect(self._xs(), int(peer), path)
        return self._rings()

    def cmd_pump(self) -> dict[str, Any]:
        """Wait for the peer (a server), then pump between the vchan and a socketpair."""
        from ncd.vchan.pump import FramePump

        deadline = time.monotonic() + REPLY_TIMEOUT
        while self.vchan.is_open() == 2 and time.monotonic() < deadline:
            if select.select([self.vchan.fileno()], [], [], 0.1)[0]:
                self.vchan.wait()
        app, self.end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = _tune(app)
        _tune(self.end)
        self.pump = FramePump.start(self.vchan, self.end.fileno())
        return {**self._rings(), "open": self.vchan.is_open()}

    def cmd_listen(self, path: str) -> dict[str, Any]:
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(path)
        self.lsock.listen(1)
        return {}

    def cmd_accept(self) -> dict[str, Any]:
        assert self.lsock is not None
        self.lsock.settimeout(REPLY_TIMEOUT)
        self.sock = _tune(self.lsock.accept()[0])
        self.lsock.close()
        return {"connected": True}

    def cmd_dial(self, path: str) -> dict[str, Any]:
        self.sock = _tune(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        self.sock.connect(path)
        return {}

    def cmd_send(self, size: str, n: str) -> dict[str, Any]:
        assert self.sock is not None
        header = bytes(VNET) if self.pump is not None else b""
        return _send_frames(self.sock, int(size), int(n), header)

    def cmd_recv(self, size: str, n: str) -> dict[str, Any]:
        assert self.sock is not None
        fn = _recv_frames if self.pump is not None else _recv_stream
        return fn(self.sock, int(size), int(n))

    def cmd_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"cpu": _proc_cpu()}
        if self.pump is not None:
            from dataclasses import asdict

            stats.update(asdict(self.pump.stats()), pump_cpu=_pump_cpu(),
                         state=self.pump.state.name)
        return stats

    def close(self) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump.close()
        if self.vchan is not None:
            self.vchan.close()
        for s in (self.sock, self.end):
            if s is not None:
                s.close()


# ---- the orchestrator ----------------------------------------------------------------------------

END = "bench.bench_frames:FrameEnd"


def frame_end(world: World, domid: int) -> DomProc:
    return DomProc.python(world, domid, END, timeout=REPLY_TIMEOUT)


def proc_cpu(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds of a process (``ip netns exec`` execs the command in place)."""
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def transfer(tx: DomProc, rx: DomProc, size: int, n: int) -> dict[str, Any]:
    """n records of `size` bytes tx -> rx; rates, plus the helpers' stats deltas."""
    s0, r0 = tx.call("stats"), rx.call("stats")
    rx.send(f"recv {size} {n}")
    sent = tx.call(f"send {size} {n}")
    got = rx.reply()
    s1, r1 = tx.call("stats"), rx.call("stats")
    # the receiving pump counts a frame just after handing it over: let it catch up
    deadline = time.monotonic() + 2
    while "rx_frames" in r1 and r1["rx_frames"] - r0["rx_frames"] < n \
            and time.monotonic() < deadline:
        time.sleep(0.01)
        r1 = rx.call("stats")
    if got["frames"] != n or got["bad_len"] or not got["last_ok"]:
        raise RuntimeError(f"{size} B x {n}: receiver got {got}")
    dt = (got["t1"] - sent["t0"]) / 1e9
    res: dict[str, Any] = {"fps": n / dt, "mbps": n * size / dt / 1e6, "seconds": dt,
                           "tx_cpu": s1["cpu"] - s0["cpu"], "rx_cpu": r1["cpu"] - r0["cpu"]}
    if "pump_cpu" in s1:
        d = {k: (s1[k] - s0[k], r1[k] - r0[k]) for k in s1 if isinstance(s1[k], (int, float))}
        res.update(
            pump_cpu=d["pump_cpu"],
            notifies=d["notify_sent"][0] + d["notify_sent"][1],
            ring_full_waits=d["ring_full_waits"][0],
            fd_full_waits=d["fd_full_waits"][1],
            rx_batches=d["rx_batches"][1],
            pump_frames=(d["tx_frames"][0], d["rx_frames"][1]),
            drops=sum(v for k, v in s1.items() if k.startswith("drop_")) - sum(
                v for k, v in s0.items() if k.startswith("drop_")) + sum(
                v for k, v in r1.items() if k.startswith("drop_")) - sum(
                v for k, v in r0.items() if k.startswith("drop_")))
        if res["pump_frames"] != (n, n):
            raise RuntimeError(f"pump counters {res['pump_frames']} != {n}")
    return res


def run_ncd(world: World, ring: int, counts: dict[int, int]) -> dict[int, dict[str, Any]]:
    path = f"/local/domain/1/data/bf{ring}"
    with contextlib.ExitStack() as procs:
        srv = frame_end(world, 1)
        procs.callback(srv.close)
        hello = srv.call(f"serve 2 {path} {ring}")
        if hello["rd"] < ring or hello["wr"] < ring:
            raise RuntimeError(f"server rings {hello}")
        cli = frame_end(world, 2)
        procs.callback(cli.close)
        cli.call(f"connect 1 {path}")
        cli.call("pump")
        srv.call("pump")
        return {size: transfer(srv, cli, size, n) for size, n in counts.items()}


def wait_xenstore(world: World, node: str) -> None:
    env = world.exec_env(0)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = subprocess.run(["xenstore-read", f"{node}/ring-ref"], env=env, capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"vchan-socket-proxy server never published {node}")


def wait_path(p: Path) -> None:
    deadline = time.monotonic() + 15
    while not p.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{p} never appeared")
        time.sleep(0.05)


def run_vsp(world: World, tmp: Path, counts: dict[int, int]) -> dict[int, dict[str, Any]]:
    node = "/local/domain/1/data/bfvsp"
    s1, s2 = tmp / "vsp-dom1.sock", tmp / "vsp-dom2.sock"
    with contextlib.ExitStack() as procs:
        sender = frame_end(world, 1)
        procs.callback(sender.close)
        sender.call(f"listen {s1}")
        with open(tmp / "vsp.log", "wb") as log:
            vsrv = subprocess.Popen(world.exec_argv(1, [VSP, "-m", "server", "2", node, str(s1)]),
                                    env=world.exec_env(1), stdout=log, stderr=log)
            procs.callback(stop, vsrv)
            wait_xenstore(world, node)
            vcli = subprocess.Popen(world.exec_argv(2, [VSP, "-m", "client", "1", node, str(s2)]),
                                    env=world.exec_env(2), stdout=log, stderr=log)
            procs.callback(stop, vcli)
        wait_path(s2)
        recv = frame_end(world, 2)
        procs.callback(recv.close)
        recv.call(f"dial {s2}")
        sender.call("accept")  # the proxy server connected to the sender: the vchan is up
        out = {}
        for size, n in counts.items():
            c0 = (proc_cpu(vsrv), proc_cpu(vcli))
            res = transfer(sender, recv, size, n)
            c1 = (proc_cpu(vsrv), proc_cpu(vcli))
            res["proxy_cpu"] = (c1[0] - c0[0], c1[1] - c0[1])
            out[size] = res
        return out


MEMCPY_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(clockid_t c) { struct timespec t; clock_gettime(c, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    size_t size = strtoull(argv[1], NULL, 0), n = strtoull(argv[2], NULL, 0);
    size_t ring = strtoull(argv[3], NULL, 0), slots = ring / size ? ring / size : 1;
    unsigned char *src = aligned_alloc(64, (size + 63) / 64 * 64);
    unsigned char *dst = aligned_alloc(64, (slots * size + 63) / 64 * 64);
    if (!src || !dst) return 1;
    for (size_t i = 0; i < size; i++) src[i] = (unsigned char)i;
    memset(dst, 0, slots * size);
    double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    for (size_t i = 0; i < n; i++) {
        memcpy(dst + (i % slots) * size, src, size);
        __asm__ volatile("" : : "r"(dst) : "memory");
    }
    double w1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_PROCESS_CPUTIME_ID);
    unsigned sum = 0;
    for (size_t i = 0; i < slots * size; i += 61) sum += dst[i];
    printf("%.9f %.9f %u\n", w1 - w0, c1 - c0, sum);
    free(src); free(dst);
    return 0;
}
"""


def run_memcpy(tmp: Path, counts: dict[int, int]) -> dict[int, dict[str, Any]]:
    src, exe = tmp / "memcpy.c", tmp / "memcpy"
    src.write_text(MEMCPY_C)
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-o", str(exe),
                    str(src)], check=True)
    out = {}
    for size, n in counts.items():
        wall, cpu, _ = subprocess.run([str(exe), str(size), str(n), str(BIG_RING)], check=True,
                                      capture_output=True, text=True).stdout.split()
        out[size] = {"fps": n / float(wall), "mbps": n * size / float(wall) / 1e6,
                     "cpu_mbps": n * size / max(float(cpu), 1e-9) / 1e6}
    return out


# ---- report ------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, nproc {os.cpu_count()}, Linux {platform.release()}"


def git_rev() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def cpu_rate(nbytes: int, cpu: float) -> str:
    """MB per CPU-second, or n/a when the CPU time is too short for /proc's ticks."""
    return f"{nbytes / cpu / 1e6:,.0f}" if cpu >= 0.05 else "n/a"


def met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def size_name(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def report(args: argparse.Namespace, counts: dict[int, int], res: dict[str, dict[int, Any]],
           wall: float) -> str:
    default_ring = res["ncd_default"]
    big = res["ncd_512k"]
    vsp, mem = res["vsp"], res["memcpy"]
    cmd = ".venv/bin/python bench/bench_frames.py " + " ".join(sys.argv[1:])
    lines = [
        "Paths, all dom1 -> dom2 on one fresh xensim world: **ncd** = sender (Python, one "
        "`send` per frame) -> SOCK_SEQPACKET socketpair -> FramePump (C thread, `recvmsg` "
        "into ring memory) -> ncd vchan -> FramePump (`sendmsg` from ring memory) -> "
        "socketpair -> receiver (Python, one `recv_into` per frame, lengths checked, last "
        "frame compared); each domain's helper process holds its pump and its socketpair. "
        "**libxenvchan** = the same sender writing the same bytes as records of the same "
        "size (one `sendall` each) into a Unix stream socket -> Debian's vchan-socket-proxy "
        "server (dom1, socket mode, 1 KiB / 2 KiB in-page rings) -> vchan -> proxy client "
        "(dom2) -> Unix stream socket -> receiver reading 1 MiB at a time: the proxy has no "
        "framing, so its figures are the byte stream's rate counted in record units (the "
        "receiver does no per-record work). **memcpy** = a C loop copying the same bytes in "
        "blocks of the frame size into a 512 KiB ring-sized buffer (one process, one "
        "thread). Rates are wall clock from the first send to the last byte received; MB/s "
        "counts payload bytes (ncd frames also carry a 10-byte virtio-net header).",
        "",
        f"Machine: {machine()}; load average before the run {args.load_before}.",
        f"Command: `{cmd.strip()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"git {git_rev()}, {wall:.0f} s in all); one run, frames dom1 -> dom2.",
        "",
        "| frame | N | ncd 128K ring frames/s | MB/s | ncd 512K ring frames/s | MB/s "
        "| libxenvchan records/s | MB/s | memcpy blocks/s | MB/s "
        "| ncd(512K) / libxenvchan | ncd(512K) / memcpy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, n in counts.items():
        a, b, v, m = default_ring[size], big[size], vsp[size], mem[size]
        lines.append(
            f"| {size_name(size)} | {n:,} | {a['fps']:,.0f} | {a['mbps']:,.0f} | "
            f"{b['fps']:,.0f} | {b['mbps']:,.0f} | {v['fps']:,.0f} | {v['mbps']:,.1f} | "
            f"{m['fps']:,.0f} | {m['mbps']:,.0f} | {b['mbps'] / v['mbps']:.1f}x | "
            f"{b['mbps'] / m['mbps']:.3f} |")
    lines += [
        "",
        "Where the time goes (512K ring run; CPU seconds from /proc, per frame):",
        "",
        "| frame | pump A (fd -> ring) us | pump B (ring -> fd) us | sender process us "
        "| receiver process us | MB per pump-CPU-s (busier pump) | notifies/frame "
        "| frames/rx batch | ring-full waits | fd-full waits | drops "
        "| libxenvchan: sender / proxy server / proxy client / receiver CPU us per record |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, n in counts.items():
        b, v = big[size], vsp[size]
        pa, pb = b["pump_cpu"]
        us = 1e6 / n
        lines.append(
            f"| {size_name(size)} | {pa * us:.2f} | {pb * us:.2f} | "
            f"{(b['tx_cpu'] - pa) * us:.2f} | {(b['rx_cpu'] - pb) * us:.2f} | "
            f"{cpu_rate(n * size, max(pa, pb))} | {b['notifies'] / n:.3f} | "
            f"{n / max(b['rx_batches'], 1):.1f} | {b['ring_full_waits']} | "
            f"{b['fd_full_waits']} | {b['drops']} | "
            f"{v['tx_cpu'] * us:.2f} / {v['proxy_cpu'][0] * us:.2f} / "
            f"{v['proxy_cpu'][1] * us:.2f} / {v['rx_cpu'] * us:.2f} |")
    k64 = 65536
    if k64 in counts:
        b, v, m = big[k64], vsp[k64], mem[k64]
        pa, pb = b["pump_cpu"]
        per_pump = k64 * counts[k64] / max(pa, pb, 1e-9) / 1e6 if max(pa, pb) >= 0.05 else 0.0
        lines += [
            "",
            f"64 KiB frames: ncd (512K ring) {b['mbps']:,.0f} MB/s = "
            f"{b['mbps'] / v['mbps']:.1f}x libxenvchan's {v['mbps']:,.1f} MB/s and "
            f"{b['mbps'] / m['mbps']:.1%} of memcpy's {m['mbps']:,.0f} MB/s (wall clock); "
            f"the busier pump moves {per_pump:,.0f} MB per CPU-second = "
            f"{per_pump / m['cpu_mbps']:.1%} of memcpy per CPU-second "
            f"({m['cpu_mbps']:,.0f}). Target 50% of memcpy: "
            f"{met(b['mbps'] >= 0.5 * m['mbps'])}.",
        ]
    for key, label in (("ncd_default", "default ring"), ("ncd_512k", "512K ring")):
        above = [size_name(s) for s in counts if res[key][s]["mbps"] >= vsp[s]["mbps"]]
        below = [size_name(s) for s in counts if res[key][s]["mbps"] < vsp[s]["mbps"]]
        lines += [
            "",
            f"Target ncd >= libxenvchan ({label}): "
            + (f"met for {', '.join(above) or 'no size'}; **NOT met** for {', '.join(below)}."
               if below else "met for all sizes."),
        ]
    return "\n".join(lines)


def parse_counts(spec: str) -> dict[int, int]:
    out = {}
    for item in spec.split(","):
        size, n = item.split(":")
        out[int(size)] = int(n)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--frames", default=DEFAULT_FRAMES,
                    help="SIZE:COUNT,... frames per size (default %(default)s)")
    ap.add_argument("--append-results", action="store_true",
                    help="append the tables to bench/RESULTS.md")
    args = ap.parse_args()
    counts = parse_counts(args.frames)
    args.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    t0 = time.monotonic()
    res: dict[str, dict[int, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ncd-bf-") as tmpdir:
        tmp = Path(tmpdir)
        world = World(tmp / "world")
        world.up(2, netns_prefix=f"ncdbf{os.getpid()}-d")
        try:
            from ncd.vchan.channel import DEFAULT_RING

            for key, ring in (("ncd_default", DEFAULT_RING), ("ncd_512k", BIG_RING)):
                res[key] = run_ncd(world, ring, counts)
                print(key, {s: f"{r['fps']:,.0f} f/s {r['mbps']:,.0f} MB/s"
                            for s, r in res[key].items()}, flush=True)
            res["vsp"] = run_vsp(world, tmp, counts)
            print("vsp", {s: f"{r['fps']:,.0f} r/s {r['mbps']:,.1f} MB/s"
                          for s, r in res["vsp"].items()}, flush=True)
        finally:
            world.down()
        res["memcpy"] = run_memcpy(tmp, counts)
    text = report(args, counts, res, time.monotonic() - t0)
    print(text)
    if args.append_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n## Frames on xensim (bench/bench_frames.py)\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
