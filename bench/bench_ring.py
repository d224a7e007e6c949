"""Frames through one vchan ring, memory to memory: ncd beside libxenvchan, a plain
two-thread ring and memcpy, in one run.

The data path has no file descriptor: bench/ring_bench.c copies each record
(le32 length | virtio_net_hdr | frame) from the producer's memory into the ring, and
the consumer validates it with the pump's checks and copies the frame out, checking
its sequence number (always) and content (every 1024th frame). Producer = vchan
server in dom1, consumer = client in dom2, two processes on one xensim world,
sharing the ring pages through grant mappings; pinned to CPU 0 and CPU 1 as two
single-vCPU domains would be.

* ncd: ncd's vchan (cext/vchan) with its blocking waits (``ncd_vchan_wait_data`` /
  ``_space``), spinning ``--spin-us`` before sleeping, and with no spin;
* libxenvchan: Debian's libxenvchan 4.17 in blocking mode (``libxenvchan_send`` of a
  record, ``libxenvchan_recv`` of the header then the frame);
* two-thread ring: the same producer/consumer loops over plain memory with atomic
  indices, pure spinning, no vchan: what the hardware allows for two copies across
  two CPUs;
* memcpy: one thread copying the same frames into a ring-sized buffer.

Every case runs ``--repeat`` times, interleaved; the tables give the median and the
range.

    .venv/bin/python bench/bench_ring.py [--repeat 5] [--append-results]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xensim.world import World  # noqa: E402

SOURCE = ROOT / "bench" / "ring_bench.c"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"]
KiB = 1024
# frame size -> frames per run (about 2 GB for 64 KiB frames)
COUNTS = {64: 2_000_000, 1500: 400_000, 65536: 30_000}
RINGS = (128 * KiB, 1024 * KiB)  # ncd's default, libxenvchan's maximum
TIMEOUT = 300.0


def build(outdir: Path) -> Path:
    """Compile ring_bench against the project's C sources and Debian's libxenvchan."""
    exe = outdir / "ring_bench"
    srcs = [SOURCE, *sorted((ROOT / "cext" / "vchan").glob("*.c")),
            *sorted((ROOT / "cext" / "tracker").glob("*.c"))]
    incs = [f"-I{ROOT / 'cext' / d}" for d in ("vchan", "pump", "tracker")]
    cmd = ["gcc", *CFLAGS, *incs, *map(str, srcs), "-o", str(exe),
           "-lxenvchan", "-lxengnttab", "-lxenevtchn", "-lpthread"]
    subprocess.run(cmd, check=True)
    return exe


@dataclass
class Run:
    frames: int
    seconds: float
    checked: int

    def rate(self, frame: int) -> tuple[float, float]:
        """(frames/s, MB/s of frame bytes)"""
        fps = self.frames / self.seconds
        return fps, fps * frame / 1e6


def parse_result(out: str) -> Run:
    for line in out.splitlines():
        if line.startswith("result "):
            _, frames, seconds, checked = line.split()
            return Run(int(frames), float(seconds), int(checked))
    raise RuntimeError(f"no result line in {out!r}")


class Domains:
    """Starts ring_bench in dom1 / dom2 of a xensim world."""

    def __init__(self, world: World, exe: Path) -> None:
        self.world, self.exe, self.seq = world, exe, 0

    def popen(self, domid: int, args: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(self.world.exec_argv(domid, [str(self.exe), *args]),
                                env=self.world.exec_env(domid), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def run_pair(self, server: list[str], client: list[str], ready_fields: int) -> Run:
        srv = self.popen(1, server)
        cli: subprocess.Popen[str] | None = None
        try:
            assert srv.stdout is not None
            line = srv.stdout.readline().split()
            if not line or line[0] != "ready" or len(line) != 1 + ready_fields:
                srv.kill()
                raise RuntimeError(f"server did not start: {line} {srv.communicate()[1]}")
            cli = self.popen(2, [a.format(*line[1:]) for a in client])
            out, err = cli.communicate(timeout=TIMEOUT)
            if cli.returncode != 0:
                raise RuntimeError(f"client failed ({cli.returncode}): {err.strip()}")
            srv_out, srv_err = srv.communicate(timeout=TIMEOUT)
            if srv.returncode != 0:
                raise RuntimeError(f"server failed ({srv.returncode}): {srv_err.strip()}")
            return parse_result(out)
        finally:
            for p in (cli, srv):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)

    def ncd(self, ring: int, n: int, frame: int, spin: int, pin: bool) -> Run:
        c0, c1 = ("0", "1") if pin else ("-1", "-1")
        return self.run_pair(
            ["ncd-server", "2", str(ring), str(n), str(frame), str(spin), c0],
            ["ncd-client", "1", "{0}", "{1}", str(n), str(frame), str(spin), c1], 2)

    def libxenvchan(self, ring: int, n: int, frame: int, pin: bool) -> Run:
        c0, c1 = ("0", "1") if pin else ("-1", "-1")
        self.seq += 1
        path = f"/local/domain/1/data/ringbench{self.seq}"
        return self.run_pair(["xv-server", "2", path, str(ring), str(n), str(frame), c0],
                             ["xv-client", "1", path, str(n), str(frame), c1], 0)


def local(exe: Path, mode: str, ring: int, n: int, frame: int) -> Run:
    out = subprocess.run([str(exe), mode, str(ring), str(n), str(frame)], check=True,
                         capture_output=True, text=True, timeout=TIMEOUT).stdout
    return parse_result(out)


@dataclass
class Case:
    name: str
    frame: int
    runs: list[Run] = field(default_factory=list)

    def mbs(self) -> list[float]:
        return [r.rate(self.frame)[1] for r in self.runs]

    def fps(self) -> list[float]:
        return [r.rate(self.frame)[0] for r in self.runs]


def machine() -> str:
    model = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"{model}, nproc {os.cpu_count()}, Linux {platform.release()}; "
            f"load average before the run {' '.join(load)}")


def run_all(exe: Path, frames: list[int], repeat: int, spin: int, pin: bool,
            scale: float) -> list[Case]:
    cases: dict[tuple[str, int], Case] = {}

    def add(name: str, frame: int, run: Run, n: int) -> None:
        if run.frames != n:
            raise RuntimeError(f"{name}: {run.frames} of {n} frames arrived")
        cases.setdefault((name, frame), Case(name, frame)).runs.append(run)

    with tempfile.TemporaryDirectory(prefix="ncd-ringbench-") as tmp:
        world = World(Path(tmp) / "world")
        world.up(2, netns_prefix=f"ncdr{os.getpid()}-d")
        try:
            doms = Domains(world, exe)
            for rep in range(repeat):
                for frame in frames:
                    n = max(100, int(COUNTS[frame] * scale))
                    for ring in RINGS:
                        k = ring // KiB
                        add(f"ncd, {k} KiB ring, spin {spin} us", frame,
                            doms.ncd(ring, n, frame, spin, pin), n)
                        add(f"ncd, {k} KiB ring, no spin", frame,
                            doms.ncd(ring, n, frame, 0, pin), n)
                        add(f"libxenvchan, {k} KiB ring", frame,
                            doms.libxenvchan(ring, n, frame, pin), n)
                    add("two-thread ring (no vchan), 1024 KiB", frame,
                        local(exe, "raw", RINGS[-1], n, frame), n)
                    add("memcpy into a 1024 KiB buffer", frame,
                        local(exe, "memcpy", RINGS[-1], n, frame), n)
                print(f"repeat {rep + 1}/{repeat} done", flush=True)
        finally:
            world.down()
    return list(cases.values())


def git_rev() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def fmt(v: float) -> str:
    return f"{v:,.0f}"


def report(cases: list[Case], frames: list[int], args: argparse.Namespace, cmd: str,
           took: float, before: str) -> str:
    lines = [
        "## Frames through one ring, memory to memory (bench/bench_ring.py)",
        "",
        "No file descriptor in the data path: producer (vchan server, dom1, CPU 0) copies "
        "each record from its memory into the ring; consumer (client, dom2, CPU 1) "
        "validates it with the pump's checks and copies the frame out, checking its "
        "sequence number always and its content every 1024th frame. Two processes on one "
        "xensim world (ring pages shared through grant mappings, events through the shim "
        "event channels). libxenvchan = Debian's 4.17 library in blocking mode; two-thread "
        "ring = the same loops over plain memory with pure spinning (no vchan); memcpy = "
        "one thread copying the same frames into a 1024 KiB buffer. MB/s counts frame "
        "bytes. Median of the repeats, range in brackets, best = the fastest repeat; "
        "'vs two-thread ring' = median over the repeats of ncd's (or libxenvchan's) rate "
        "over the two-thread ring's rate in the same repeat.",
        "",
        f"Machine: {before}.",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"git {git_rev()}, {took:.0f} s in all; {args.repeat} repeats, interleaved).",
        "",
    ]
    verdicts: list[str] = []
    for frame in frames:
        rows = [c for c in cases if c.frame == frame]
        memc = next(c for c in rows if c.name.startswith("memcpy"))
        raw = next(c for c in rows if c.name.startswith("two-thread"))
        mem, mem_best = statistics.median(memc.mbs()), max(memc.mbs())
        xv = {c.name.split(", ")[1]: statistics.median(c.fps()) for c in rows
              if c.name.startswith("libxenvchan")}
        lines += [f"### {frame} B frames ({rows[0].runs[0].frames:,} per run)", "",
                  "| case | frames/s | MB/s [range] | best MB/s | vs libxenvchan (same ring) "
                  "| vs two-thread ring | vs memcpy | best vs best memcpy |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in rows:
            fps, mbs, best = statistics.median(c.fps()), statistics.median(c.mbs()), max(c.mbs())
            ring = c.name.split(", ")[1] if ", " in c.name else ""
            vchan = c.name.startswith(("ncd", "libxenvchan"))
            vs_xv = f"{fps / xv[ring]:.2f}x" if ring in xv and c.name.startswith("ncd") else ""
            # the same repeat's two-thread ring ran seconds later: pair them
            pairs = zip(c.mbs(), raw.mbs(), strict=True)
            vs_raw = f"{statistics.median(a / b for a, b in pairs):.2f}" if vchan else ""
            lines.append(f"| {c.name} | {fmt(fps)} | {fmt(mbs)} [{fmt(min(c.mbs()))}-"
                         f"{fmt(max(c.mbs()))}] | {fmt(best)} | {vs_xv} | {vs_raw} | "
                         f"{mbs / mem:.2f} | {best / mem_best:.2f} |")
            if c.name.startswith("ncd") and "no spin" not in c.name:
                verdicts.append(
                    f"{frame} B, {ring}: ncd {fps / xv[ring]:.2f}x libxenvchan "
                    f"({'met' if fps >= xv[ring] else 'NOT met'})"
                    + (f"; memcpy: median {mbs / mem:.0%} "
                       f"({'met' if mbs / mem >= 0.5 else 'NOT met'}), best {best / mem_best:.0%}"
                       f" ({'met' if best / mem_best >= 0.5 else 'NOT met'})"
                       if frame == 65536 else ""))
        lines.append("")
    lines += ["Targets (ncd with spin, medians unless marked): " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--spin-us", type=int, default=50)
    ap.add_argument("--frames", type=int, nargs="*", default=sorted(COUNTS),
                    choices=sorted(COUNTS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the frame counts")
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place both sides")
    ap.add_argument("--append-results", action="store_true",
                    help="append the section to bench/RESULTS.md")
    args = ap.parse_args()
    if shutil.which("gcc") is None:
        print("bench_ring: gcc is needed", file=sys.stderr)
        return 2
    cmd = ".venv/bin/python bench/bench_ring.py " + " ".join(sys.argv[1:])
    before = machine()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ncd-ringbench-bin-") as bindir:
        exe = build(Path(bindir))
        cases = run_all(exe, args.frames, args.repeat, args.spin_us, not args.no_pin,
                        args.scale)
    text = report(cases, args.frames, args, cmd.strip(), time.monotonic() - t0, before)
    print(text)
    if args.append_results:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
