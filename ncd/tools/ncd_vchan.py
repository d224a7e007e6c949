"""``ncd-vchan server|client DOMID XS_PATH``: relay stdin/stdout over a vchan.

Interoperates with libxenvchan peers (``vchan-socket-proxy``, ``vchan-node``).
stdin goes to the vchan and the vchan to stdout. When stdin ends, ncd-vchan waits
until the peer has consumed everything, then closes and exits 0; when the peer
closes, it first copies what is left in the ring to stdout, then exits 0.
"""

from __future__ import annotations

import argparse
import errno
import select
import signal
import sys
import time
from types import FrameType

from ncd.vchan.channel import DEFAULT_RING, MAX_RING, Vchan, VchanClient, VchanServer
from ncd.vchan.relay import relay, wait_connected
from ncd.xen.errors import XenError
from ncd.xen.xenstore import XenStore


def _size(text: str) -> int:
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1:].lower(), 1)
    value = int(text[:-1] if mult > 1 else text) * mult
    if not 0 <= value <= MAX_RING:
        raise argparse.ArgumentTypeError(f"ring size must be 0..{MAX_RING}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ncd-vchan", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("domid", type=int, help="the peer domain")
    p.add_argument("xs_path", help="xenstore directory of ring-ref / event-channel")
    p.add_argument("--read-size", type=_size, default=DEFAULT_RING,
                   help="server: minimum size of the ring it reads (bytes, k/m suffix)")
    p.add_argument("--write-size", type=_size, default=DEFAULT_RING,
                   help="server: minimum size of the ring it writes")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="client: seconds to wait for the server's xenstore entry")
    return p.parse_args(argv)


def connect_client(xs: XenStore, domid: int, path: str, timeout: float) -> VchanClient:
    """Connect, waiting (with a xenstore watch) until the server has published."""
    token = xs.new_token("ncd-vchan")
    xs.watch(path, token)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return VchanClient.connect(xs, domid, path)
            except (XenError, ValueError) as exc:
                if isinstance(exc, XenError) and exc.errno not in (errno.ENOENT, errno.EACCES):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                select.select([xs.fileno()], [], [], min(left, 1.0))
                while xs.check_watch() is not None:
                    pass
    finally:
        xs.unwatch(path, token)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    v: Vchan | None = None
    try:
        with XenStore() as xs:
            if args.mode == "server":
                v = VchanServer.create(xs, args.domid, args.xs_path, args.read_size,
                                       args.write_size)
            else:
                v = connect_client(xs, args.domid, args.xs_path, args.timeout)
            try:
                if isinstance(v, VchanServer):
                    wait_connected(v)
                relay(v)
            finally:
                v.close()  # before the store closes: a server removes its entry
    except (OSError, ValueError) as exc:
        print(f"ncd-vchan: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
