"""``ncd backend|frontend|driver``: the daemon's entry point.

``driver`` (a driver domain) runs both discoveries in one process: the vifs it backs
and the devices it fronts share one vif table, control socket and metrics endpoint;
with ``--uplink-switch NAME`` the fronted devices are ports of switch NAME.

Configuration from TOML (``--config``, default /etc/ncd/ncd.toml) with flags on
top; logs to stderr; SIGTERM/SIGINT close every vif (Closing -> Closed, TAP removed)
and exit 0. sd_notify READY once the control socket and the device watch are up,
STATUS with the vif counts, WATCHDOG when systemd asks (:mod:`.process` runs it all).

Event loop: uvloop for the roles that back vifs (a backend serves many vifs' watches
and handshakes). A frontend, one daemon in every guest, runs on asyncio's own loop and
without the ssl module: uvloop imports ssl, and asyncio imports it when it can, which
maps OpenSSL (libssl, libcrypto) for a daemon that speaks no TLS: ~5.5 MB of the 20 MB a
frontend may use (docs/performance.md). Its loop is off the data path (the C pumps move
the frames), so it loses nothing there. So this module imports nothing heavy before
it knows the role; ssl is put back for prometheus_client at the first scrape
(:mod:`ncd.metrics`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from ncd import __version__

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


def without_ssl() -> bool:
    """Make ``import ssl`` fail in this process, as on a Python built without it
    (asyncio copes), unless something imported ssl or asyncio already. Returns whether
    it did."""
    if "ssl" in sys.modules or "asyncio" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]
    return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the top-level parser takes no option values: its first word is the role
    if next((a for a in argv if not a.startswith("-")), None) == "frontend":
        without_ssl()
    from ncd.config import ConfigError, from_args

    args = build_parser().parse_args(argv)
    try:
        config = from_args(args)
    except ConfigError as exc:
        print(f"ncd: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.daemon.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s ncd-{args.role}[%(process)d] %(levelname)s %(message)s",
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    import asyncio

    from ncd.control import ControlError

    from .process import Daemon

    loop_factory = None
    if args.role != "frontend":
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        # asyncio.Runner rather than uvloop.run: the latter is new in uvloop 0.18 and
        # Debian 12 has 0.17
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return int(runner.run(Daemon(args.role, config).run()))
    except (OSError, ControlError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # pragma: no cover
        return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
