"""Frame pump throughput: frames/s (64 B, 1500 B) and MB/s (64 KiB) through a pump pair.

    source process -> seqpacket -> pump A (fd -> ring) -> vchan -> pump B (ring -> fd)
                                                                   -> seqpacket -> sink process

The vchan is ncd's in-memory pair (``ncd_vchan_local_server/client``: the same ring
code, notifications through an eventfd as with xensim's event channels). The source
and the sink are separate processes (no GIL shared with anything); the rates are read
from pump B's counters over a timed window after a warm-up. Beside it: a plain
``memcpy`` of the same frame size into a ring-sized buffer (cache-warm, like the ring).

    .venv/bin/python bench/bench_pump.py [--seconds 3] [--ring 524288] [--append-results]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import mmap
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ncd.vchan.channel import local_pair  # noqa: E402
from ncd.vchan.pump import FramePump  # noqa: E402

BUF = 4 << 20
VNET = 10


def seqpacket() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    return a, b


def _source(sock: socket.socket, size: int) -> None:  # child process
    msg = bytes(VNET) + bytes(range(256)) * (size // 256) + bytes(size % 256)
    send = sock.send
    while True:
        send(msg)


def _sink(sock: socket.socket, counter: mmap.mmap) -> None:  # child process
    """Receive forever; publish (frames, bytes) in the shared counter every 32 frames."""
    buf = bytearray(70000)
    recv_into = sock.recv_into
    frames = nbytes = 0
    while True:
        for _ in range(32):
            nbytes += recv_into(buf) - VNET
        frames += 32
        struct.pack_into("<QQ", counter, 0, frames, nbytes)


def _fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:  # child: run until killed
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            fn(*args)
        finally:
            os._exit(0)
    return pid


def _window(counter: mmap.mmap, seconds: float) -> tuple[float, float]:
    """(frames/s, MB/s) seen by the sink over `seconds`, after a warm-up."""
    time.sleep(0.5)
    f0, b0 = struct.unpack_from("<QQ", counter, 0)
    t0 = time.perf_counter()
    time.sleep(seconds)
    f1, b1 = struct.unpack_from("<QQ", counter, 0)
    dt = time.perf_counter() - t0
    return (f1 - f0) / dt, (b1 - b0) / dt / 1e6


def run_direct(size: int, seconds: float) -> dict[str, float]:
    """The same source and sink on one seqpacket pair, no pump: the endpoints' own cost."""
    a, b = seqpacket()
    counter = mmap.mmap(-1, 16)
    pids = [_fork(_sink, b, counter), _fork(_source, a, size)]
    try:
        fps, mbps = _window(counter, seconds)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        a.close()
        b.close()
        counter.close()
    return {"fps": fps, "mbps": mbps}


def pump_cpu_seconds() -> float:
    """CPU time (user + system) of this process's ``ncd-pump`` threads so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name == "ncd-pump":
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def run_pump(size: int, seconds: float, ring: int) -> dict[str, float]:
    srv, cli = local_pair(ring, ring)
    src_app, src_pump = seqpacket()
    dst_app, dst_pump = seqpacket()
    counter = mmap.mmap(-1, 16)
    pa = FramePump.start(srv, src_pump.fileno())
    pb = FramePump.start(cli, dst_pump.fileno())
    pids = [_fork(_sink, dst_app, counter), _fork(_source, src_app, size)]
    try:
        time.sleep(0.5)
        a0, b0, c0 = pa.stats(), pb.stats(), pump_cpu_seconds()
        fps, mbps = _window(counter, seconds)
        a1, b1, c1 = pa.stats(), pb.stats(), pump_cpu_seconds()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        pa.close()
        pb.close()
        srv.close()
        cli.close()
        for s in (src_app, src_pump, dst_app, dst_pump):
            s.close()
        counter.close()
    frames = max(b1.rx_frames - b0.rx_frames, 1)
    cpu = max(c1 - c0, 1e-9) / 2  # per pump (A reads the fd, B writes it)
    notifies = (a1.notify_sent - a0.notify_sent) + (b1.notify_sent - b0.notify_sent)
    return {
        "fps": fps,
        "mbps": mbps,
        "notify_per_frame": notifies / frames,
        "frames_per_batch": frames / max(b1.rx_batches - b0.rx_batches, 1),
        "wakeups_per_frame": ((a1.wakeups - a0.wakeups) + (b1.wakeups - b0.wakeups)) / frames,
        "drops": sum(b1.drops().values()) + sum(a1.drops().values()),
        "cpu_us_per_frame": cpu / frames * 1e6,
        "mb_per_cpu_s": (b1.rx_bytes - b0.rx_bytes) / cpu / 1e6,
    }


# ---- TCP through TAP + pump pair, beside a veth pair (--tap) ----------------------------------

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_OFFLOADS = 0x01 | 0x02 | 0x04 | 0x08  # csum, TSO4, TSO6, TSO_ECN


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


def _iperf(ns_client: str, ns_server: str, addr: str, seconds: float) -> float:
    """Gbit/s of one iperf3 TCP stream from ns_client to addr (served in ns_server)."""
    srv = subprocess.Popen(["ip", "netns", "exec", ns_server, "iperf3", "-s", "-1", "-B", addr],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = _sh("ip", "netns", "exec", ns_client, "iperf3", "-J", "-c", addr, "-t",
                  f"{seconds:g}", "-O", "1")
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait()


def run_tcp(seconds: float, ring: int) -> dict[str, float]:
    tag = str(os.getpid())
    ns = [f"ncdbp{tag}a", f"ncdbp{tag}b"]
    fds: list[int] = []
    objs: list = []
    try:
        for n in ns:
            _sh("ip", "netns", "add", n)
            _sh("ip", "-n", n, "link", "set", "lo", "up")
        # veth: the kernel's own path between two namespaces
        _sh("ip", "link", "add", f"vb{tag}a", "netns", ns[0], "type", "veth", "peer", "name",
            f"vb{tag}b", "netns", ns[1])
        for i, n in enumerate(ns):
            _sh("ip", "-n", n, "addr", "add", f"198.18.1.{i + 1}/24", "dev", f"vb{tag}{'ab'[i]}")
            _sh("ip", "-n", n, "link", "set", f"vb{tag}{'ab'[i]}", "up")
        veth = _iperf(ns[0], ns[1], "198.18.1.2", seconds)
        # TAP + pump + vchan + pump + TAP
        for i, n in enumerate(ns):
            dev = f"tb{tag}{'ab'[i]}"
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", dev.encode(),
                                                   IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_OFFLOADS)
            _sh("ip", "link", "set", dev, "netns", n)
            _sh("ip", "-n", n, "addr", "add", f"198.18.2.{i + 1}/24", "dev", dev)
            _sh("ip", "-n", n, "link", "set", dev, "up")
        srv, cli = local_pair(ring, ring)
        objs += [srv, cli]
        pa, pb = FramePump.start(srv, fds[0]), FramePump.start(cli, fds[1])
        objs += [pa, pb]
        _sh("ip", "netns", "exec", ns[0], "ping", "-c", "1", "-W", "2", "198.18.2.2")
        a0 = pa.stats()
        ncd = _iperf(ns[0], ns[1], "198.18.2.2", seconds)
        a1 = pa.stats()
        frames = max(a1.tx_frames - a0.tx_frames, 1)
        return {"veth": veth, "ncd": ncd, "avg_frame": (a1.tx_bytes - a0.tx_bytes) / frames,
                "notify_per_frame": (a1.notify_sent - a0.notify_sent) / frames}
    finally:
        for o in reversed(objs):
            o.close()
        for fd in fds:
            os.close(fd)
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def run_memcpy(size: int, seconds: float, ring: int) -> dict[str, float]:
    """memcpy of `size` blocks into a ring-sized buffer, per second of this thread's CPU
    time (immune to other load on the machine, like the pumps' CPU figures)."""
    src = ctypes.create_string_buffer(size)
    dst = ctypes.create_string_buffer(ring)
    slots = max(ring // size, 1)
    base = ctypes.addressof(dst)
    memmove = ctypes.memmove
    n, c0 = 0, time.thread_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for i in range(1000):
            memmove(base + (i % slots) * size, src, size)
        n += 1000
    cpu = time.thread_time() - c0
    return {"fps": n / cpu, "mbps": n * size / cpu / 1e6}


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} vCPU, {cpu}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--ring", type=int, default=512 * 1024, help="ring size each way")
    ap.add_argument("--repeat", type=int, default=3, help="runs per point (median)")
    ap.add_argument("--tap", action="store_true",
                    help="also: iperf3 TCP through TAP + pump pair, beside a veth pair")
    ap.add_argument("--append-results", action="store_true",
                    help="append the table to bench/RESULTS.md")
    args = ap.parse_args()

    def median(runs: list[dict[str, float]]) -> dict[str, float]:
        runs = sorted(runs, key=lambda r: r["fps"])
        return runs[len(runs) // 2]

    rows = []
    for size in (64, 1500, 65536):
        p = median([run_pump(size, args.seconds, args.ring) for _ in range(args.repeat)])
        d = median([run_direct(size, args.seconds) for _ in range(args.repeat)])
        rows.append((size, p, d))
    # memcpy is only meaningful in bulk (a ctypes call per 64-byte copy measures Python)
    mc = max(run_memcpy(65536, 1.0, args.ring)["mbps"] for _ in range(3))

    lines = [
        f"Machine: {machine()}",
        f"Command: `.venv/bin/python bench/bench_pump.py --seconds {args.seconds:g} "
        f"--ring {args.ring} --repeat {args.repeat}{' --tap' if args.tap else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, git {_git_rev()}); "
        f"median of {args.repeat} runs",
        "",
        "| frame | pump pair frames/s | pump pair MB/s | direct socket frames/s (no pump) "
        "| pump CPU us/frame (each pump) | MB per pump-CPU-second | notifies/frame "
        "| frames/rx batch | drops |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, p, d in rows:
        lines.append(
            f"| {size} B | {p['fps']:,.0f} | {p['mbps']:,.0f} | {d['fps']:,.0f} | "
            f"{p['cpu_us_per_frame']:.2f} | {p['mb_per_cpu_s']:,.0f} | "
            f"{p['notify_per_frame']:.3f} | {p['frames_per_batch']:.1f} | {p['drops']:.0f} |")
    big = rows[-1][1]
    lines += [
        "",
        f"memcpy of 64 KiB blocks into a {args.ring // 1024} KiB buffer: {mc:,.0f} MB per "
        f"CPU-second (best of 3). 64 KiB frames: each pump moves {big['mb_per_cpu_s']:,.0f} MB "
        f"per CPU-second = {big['mb_per_cpu_s'] / mc:.0%} of memcpy; the pump pair end to end "
        f"(wall clock, endpoints included) {big['mbps']:,.0f} MB/s = {big['mbps'] / mc:.0%}.",
    ]
    if args.tap:
        t = run_tcp(max(args.seconds, 3.0), args.ring)
        lines += [
            "",
            "| TCP, one iperf3 stream, netns to netns | Gbit/s |",
            "|---|---|",
            f"| veth pair (kernel) | {t['veth']:.2f} |",
            f"| TAP (csum+TSO) -> pump -> vchan -> pump -> TAP | {t['ncd']:.2f} "
            f"({t['ncd'] / t['veth']:.0%} of veth; avg frame {t['avg_frame']:,.0f} B, "
            f"{t['notify_per_frame']:.3f} notifies/frame) |",
        ]
    text = "\n".join(lines)
    print(text)
    if args.append_results:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n## Frame pump (bench/bench_pump.py)\n\n" + text + "\n")
    return 0


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
