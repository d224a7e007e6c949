"""``ncd backend|frontend|driver``: the daemon's entry point.

``driver`` (a driver domain) runs both discoveries in one process: the vifs it backs
and the devices it fronts share one vif table, control socket and metrics endpoint;
with ``--uplink-switch NAME`` the fronted devices are ports of switch NAME.

Configuration from TOML (``--config``, default /etc/ncd/ncd.toml) with flags on
top; logs to stderr; SIGTERM/SIGINT close every vif (Closing -> Closed, TAP removed)
and exit 0. sd_notify READY once the control socket and the device watch are up,
STATUS with the vif counts, WATCHDOG when systemd asks (:mod:`.process` runs it all).

Event loop: uvloop, for every role (the design's contract). Its loop is off the data
path (the C pumps move the frames); what a guest's frontend does not need is not
imported (docs/performance.md, "Frontend memory"): this module imports nothing heavy
before it knows the role.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from ncd import __version__, logsink

log = logging.getLogger("ncd")

ROLES = (
    ("backend", "run in dom0 / a driver domain: back the vifs attached to this domain"),
    ("frontend", "run in a guest: a TAP for each device this domain fronts"),
    ("driver", "run in a driver domain: backend and frontend in one process"),
)


class _Formatter(argparse.HelpFormatter):
    """argparse's, with the terminal's width found without its ``import shutil`` (which
    imports zlib, bz2 and lzma: 0.7 MB of RSS in every daemon, for the help text)."""

    def __init__(self, prog: str, **kwargs: object) -> None:
        if kwargs.get("width") is None:
            try:
                columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    columns = 80
            kwargs["width"] = columns - 2  # as argparse does
        super().__init__(prog, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    from ncd.config import add_arguments

    p = argparse.ArgumentParser(
        prog="ncd", description="ncd: network channel daemon for Xen", formatter_class=_Formatter
    )
    p.add_argument("--version", action="version", version=f"ncd {__version__}")
    sub = p.add_subparsers(dest="role", required=True)
    for role, text in ROLES:
        add_arguments(sub.add_parser(role, help=text, formatter_class=_Formatter), role)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ncd.config import ConfigError, from_args

    args = build_parser().parse_args(argv)
    try:
        config = from_args(args)
    except ConfigError as exc:
        print(f"ncd: error: {exc}", file=sys.stderr)
        return 2
    logsink.install(
        config.daemon.log_level.upper(),
        f"%(asctime)s ncd-{args.role}[%(process)d] %(levelname)s %(message)s",
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    import asyncio

    import uvloop

    from ncd.control import ControlError

    from .process import Daemon

    try:
        # asyncio.Runner rather than uvloop.run: the latter is new in uvloop 0.18 and
        # Debian 12 has 0.17
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return int(runner.run(Daemon(args.role, config).run()))
    except (OSError, ControlError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # pragma: no cover
        return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
