"""vchan throughput on xensim: ncd <-> ncd beside libxenvchan <-> libxenvchan, and memcpy.

Each vchan case is the same relay shape: a server in dom1 reads /dev/zero on stdin and
writes it into the vchan; a client in dom2 writes the vchan to stdout, which this
script reads and counts. libxenvchan's side is Debian's vchan-socket-proxy (stdin
mode; it uses in-page rings of 1 KiB / 2 KiB); ncd's side is ``ncd-vchan`` with the
same ring sizes and with its defaults (128 KiB each way). memcpy copies the same
number of bytes in 256 KiB blocks inside one process.

    .venv/bin/python bench/bench_vchan.py [--mb 256] [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xensim.world import World  # noqa: E402

VSP = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
MiB = 1 << 20


def run_case(world: World, server: list[str], client: list[str], nbytes: int,
             client_env: dict[str, str] | None = None) -> float:
    """MB/s of `nbytes` through server(dom1, stdin=/dev/zero) -> client(dom2, stdout)."""

    def popen(domid: int, argv: list[str], extra: dict[str, str] | None = None,
              **kw: object) -> subprocess.Popen[bytes]:
        env = {**world.exec_env(domid), **(extra or {})}
        return subprocess.Popen(world.exec_argv(domid, argv), env=env,
                                **kw)  # type: ignore[call-overload]

    with open("/dev/zero", "rb") as zero:
        srv = popen(1, server, stdin=zero, stdout=subprocess.DEVNULL)
    cli = popen(2, client, client_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert cli.stdout is not None
        fd = cli.stdout.fileno()
        got = 0
        first = os.read(fd, MiB)  # the clock starts with the first byte (setup excluded)
        t0 = time.perf_counter()
        got = len(first)
        while got < nbytes:
            b = os.read(fd, MiB)
            if not b:
                raise RuntimeError(f"client ended after {got} bytes")
            got += len(b)
        dt = time.perf_counter() - t0
        return (got - len(first)) / dt / 1e6
    finally:
        for p in (cli, srv):
            p.kill()
            p.wait(timeout=10)
        if cli.stdin:
            cli.stdin.close()
        if cli.stdout:
            cli.stdout.close()


def memcpy_rate(nbytes: int) -> float:
    block = 256 * 1024
    src = ctypes.create_string_buffer(block)
    dst = ctypes.create_string_buffer(block)
    t0 = time.perf_counter()
    for _ in range(nbytes // block):
        ctypes.memmove(dst, src, block)
    return nbytes / (time.perf_counter() - t0) / 1e6


def machine() -> str:
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cpus, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--results", type=Path, default=None,
                    help="append a section to this markdown file")
    args = ap.parse_args()
    nbytes = args.mb * MiB
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="ncd-bench-") as tmpdir:
        tmp = Path(tmpdir)
        world = World(tmp / "world")
        world.up(2, netns_prefix=f"ncdb{os.getpid()}-d")
        try:
            results: dict[str, float] = {}
            cases = [
                ("libxenvchan <-> libxenvchan (vchan-socket-proxy, 1K/2K rings)",
                 [VSP, "-m", "server", "2", "/local/domain/1/data/bv", "-"],
                 [VSP, "-m", "client", "1", "/local/domain/1/data/bv", "-"],
                 None),
                ("ncd <-> ncd (ncd-vchan, 1K/2K rings)",
                 [py, "-m", "ncd.tools.ncd_vchan", "server", "2", "/local/domain/1/data/bn",
                  "--read-size", "1024", "--write-size", "2048"],
                 [py, "-m", "ncd.tools.ncd_vchan", "client", "1", "/local/domain/1/data/bn"],
                 None),
                ("ncd <-> ncd (ncd-vchan, default 128K/128K rings)",
                 [py, "-m", "ncd.tools.ncd_vchan", "server", "2", "/local/domain/1/data/bd"],
                 [py, "-m", "ncd.tools.ncd_vchan", "client", "1", "/local/domain/1/data/bd"],
                 None),
            ]
            for name, server, client, env in cases:
                results[name] = run_case(world, server, client, nbytes, env)
                print(f"{name}: {results[name]:.0f} MB/s", flush=True)
            results["memcpy (same bytes, 256 KiB blocks)"] = memcpy_rate(nbytes)
        finally:
            world.down()
    base = results["libxenvchan <-> libxenvchan (vchan-socket-proxy, 1K/2K rings)"]
    mem = results["memcpy (same bytes, 256 KiB blocks)"]
    lines = [
        "## vchan throughput (bench/bench_vchan.py)",
        "",
        f"Machine: {machine()}; xensim (no hypervisor).",
        f"Command: `.venv/bin/python bench/bench_vchan.py --mb {args.mb}`; "
        f"{args.mb} MiB one way, one run.",
        "",
        "| case | MB/s | vs libxenvchan | vs memcpy |",
        "|---|---:|---:|---:|",
    ]
    for name, rate in results.items():
        lines.append(f"| {name} | {rate:.0f} | {rate / base:.2f}x | {rate / mem:.3f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
