"""``python -m xensim.broker --dir WORLD``: run the hypervisor broker in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from xensim import paths
from xensim.broker.model import Limits
from xensim.broker.server import Broker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Limits()
    p = argparse.ArgumentParser(prog="python -m xensim.broker", description=__doc__)
    p.add_argument(
        "--dir", help=f"world directory (default ${paths.ENV_WORLD} or {paths.DEFAULT_WORLD})"
    )
    p.add_argument(
        "--gntalloc-limit",
        type=int,
        default=d.gntalloc_limit,
        help="shared pages per domain (Linux gntalloc `limit`), ENOSPC beyond",
    )
    p.add_argument(
        "--max-grant-frames",
        type=int,
        default=d.max_grant_frames,
        help="grant table frames per domain (512 entries each), ENOSPC beyond",
    )
    p.add_argument(
        "--max-evtchn-port",
        type=int,
        default=d.max_evtchn_port,
        help="highest event channel port per domain, ENOSPC beyond",
    )
    p.add_argument(
        "--gntdev-limit",
        type=int,
        default=d.gntdev_limit,
        help="pages per map request (Linux gntdev `limit`), EINVAL beyond",
    )
    p.add_argument(
        "--destroy-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for a destroyed domain's processes to die",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s xensim-broker %(levelname)s %(message)s",
    )
    limits = Limits(
        args.gntalloc_limit, args.max_grant_frames, args.max_evtchn_port, args.gntdev_limit
    )
    broker = Broker(paths.world_dir(args.dir), limits, args.destroy_timeout)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        broker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    broker.start()
    logging.getLogger("xensim.broker").info("broker ready in %s", broker.world)
    try:
        broker.serve_forever()
    finally:
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
