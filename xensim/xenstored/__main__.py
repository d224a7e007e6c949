"""``python -m xensim.xenstored --dir WORLD``: run xenstored in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ..paths import world_dir
from .server import XenstoreServer


async def _run(world: str | None) -> None:
    server = XenstoreServer(world_dir(world))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
        logging.getLogger("xensim.xenstored").info("xenstored stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xensim.xenstored", description=__doc__)
    parser.add_argument("--dir", help="world directory (default $XENSIM_DIR or /run/ncd-sim)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s xenstored %(levelname)s %(message)s",
    )
    try:  # a faster loop when the venv has it (ncd's dependency); xensim needs none
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_run(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
