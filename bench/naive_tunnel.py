"""The naive floor: a pure-Python asyncio TAP pump over a Unix socket (no ncd code).

One end runs in each network namespace (``ip netns exec NS python bench/naive_tunnel.py
...``): it creates a TAP (``IFF_TAP | IFF_NO_PI``, no offloads, MTU 1500), gives it an
address, and copies frames between the TAP and a Unix stream socket shared by both
ends (``--listen`` on one side, connect on the other), each frame prefixed by its
length (2 bytes, big-endian). It is what a first userspace channel would be: one
``read``/``write`` per frame, an asyncio event loop, Python bytes objects in between.
bench/run puts it beside ncd and veth; ncd must beat it by at least 10x on TCP.

    ip netns exec A python bench/naive_tunnel.py --ifname nt0 --addr 198.18.30.1/24 \\
        --socket /tmp/x.sock --listen
    ip netns exec B python bench/naive_tunnel.py --ifname nt0 --addr 198.18.30.2/24 \\
        --socket /tmp/x.sock

Runs until SIGTERM/SIGINT or the peer goes; the TAP goes with the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
FRAME_MAX = 65535
BATCH = 64  # frames read from the TAP per wake-up at most
HIGH_WATER = 1 << 20  # stop reading the TAP while this much waits for the socket


def open_tap(ifname: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


async def connect(
    path: str, listen: bool, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if listen:
        got: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )

        def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if not got.done():
                got.set_result((r, w))
            else:
                w.close()

        server = await asyncio.start_unix_server(accepted, path)
        try:
            return await asyncio.wait_for(got, timeout)
        finally:
            server.close()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def pump(tap: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    transport = writer.transport

    def tap_readable() -> None:  # TAP -> socket
        for _ in range(BATCH):
            try:
                frame = os.read(tap, FRAME_MAX)
            except BlockingIOError:
                return
            writer.write(struct.pack("!H", len(frame)) + frame)
        if transport.get_write_buffer_size() > HIGH_WATER:
            loop.remove_reader(tap)
            loop.create_task(resume())

    async def resume() -> None:
        await writer.drain()
        loop.add_reader(tap, tap_readable)

    loop.add_reader(tap, tap_readable)
    try:
        while True:  # socket -> TAP
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            frame = await reader.readexactly(n)
            with contextlib.suppress(BlockingIOError):  # TAP queue full: drop, as a NIC
                os.write(tap, frame)
    except asyncio.IncompleteReadError:
        return
    finally:
        loop.remove_reader(tap)


async def main_async(args: argparse.Namespace) -> int:
    tap = open_tap(args.ifname)
    try:
        for cmd in (
            ["ip", "addr", "add", args.addr, "dev", args.ifname],
            ["ip", "link", "set", args.ifname, "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        reader, writer = await connect(args.socket, args.listen, args.timeout)
        print("connected", flush=True)
        loop = asyncio.get_running_loop()
        task = loop.create_task(pump(tap, reader, writer))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()
        return 0
    finally:
        os.close(tap)
        if args.listen:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.socket)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ifname", required=True, help="the TAP to create in this namespace")
    ap.add_argument("--addr", required=True, help="its address, CIDR (e.g. 198.18.30.1/24)")
    ap.add_argument("--socket", required=True, help="the Unix socket both ends share")
    ap.add_argument(
        "--listen",
        action="store_true",
        help="this end listens on --socket (start it first); the other connects",
    )
    ap.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for the other end (default 15)"
    )
    return asyncio.run(main_async(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
