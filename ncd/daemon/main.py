"""``ncd backend|frontend|driver``: the daemon's entry point.

``driver`` (a driver domain) runs both discoveries in one process: the vifs it backs
and the devices it fronts share one vif table, control socket and metrics endpoint;
with ``--uplink-switch NAME`` the fronted devices are ports of switch NAME.

Configuration from TOML (``--config``, default /etc/ncd/ncd.toml) with flags on
top; logs to stderr; uvloop; SIGTERM/SIGINT close every vif (Closing -> Closed,
TAP removed) and exit 0. sd_notify READY once the control socket and the
device watch are up, STATUS with the vif counts, WATCHDOG when systemd asks.

Losing xenstored (its connection fails; a watch alone would never say so) is fatal:
without it the daemon sees neither detaches nor handshakes, so it logs why, closes
every vif and exits 1, and systemd restarts it (``Restart=on-failure``) until xenstored
is back. The hypervisor's channels need no daemon: a vif keeps its traffic meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from ncd import __version__, logsink, parse
from ncd.config import Config, ConfigError, add_arguments, from_args
from ncd.control import ControlError, ControlServer
from ncd.metrics import Metrics, serve_metrics
from ncd.sdnotify import SdNotifier
from ncd.xen.errors import XenError
from ncd.xen.xenstore import XenStore

from . import backend, frontend
from .declared import DeclaredVifs
from .discovery import Devices, Discovery
from .service import ControlHandler, VifTable
from .switches import SwitchRegistry
from .vif import VifContext

log = logging.getLogger("ncd")

XENSTORE_PROBE_INTERVAL = 2.0  # seconds between reads of our own ``domid``


class XenStoreLost(RuntimeError):
    """Our xenstore connection failed: the daemon cannot go on without it."""


async def probe_xenstore(xs: XenStore, interval: float = XENSTORE_PROBE_INTERVAL) -> None:
    """Read our ``domid`` every ``interval`` seconds; raise :class:`XenStoreLost` once
    that fails (xenstored died or closed our connection)."""
    while True:
        await asyncio.sleep(interval)
        try:
            xs.read("domid")
        except XenError as exc:
            raise XenStoreLost(
                f"xenstore connection lost ({exc}): exiting so that the service manager "
                "restarts ncd once xenstored is back"
            ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncd", description="ncd: network channel daemon for Xen")
    p.add_argument("--version", action="version", version=f"ncd {__version__}")
    sub = p.add_subparsers(dest="role", required=True)
    roles = (
        ("backend", "run in dom0 / a driver domain: back the vifs attached to this domain"),
        ("frontend", "run in a guest: a TAP for each device this domain fronts"),
        ("driver", "run in a driver domain: backend and frontend in one process"),
    )
    for role, text in roles:
        add_arguments(sub.add_parser(role, help=text), role)
    return p


class Daemon:
    def __init__(self, role: str, config: Config) -> None:
        self.role_name = role
        self.config = config
        self.notifier = SdNotifier()
        self.table = VifTable(on_change=self._status)
        self._last_status = ""

    def _status(self) -> None:
        n, up = self.table.counts()
        text = f"{up} of {n} vifs connected"
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            self._status()
            await asyncio.sleep(interval)

    async def _status_loop(self) -> None:
        while True:  # vif states change inside vifs: refresh STATUS now and then
            await asyncio.sleep(1.0)
            self._status()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        xs = XenStore()
        metrics = Metrics(self.role_name, __version__)
        server = None
        control = None
        switches: SwitchRegistry | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            domid = parse.domid("domid", xs.read("domid"))
            backs = self.role_name in ("backend", "driver")
            if backs:
                switches = SwitchRegistry(self.config, domid)
                await switches.start()
                metrics.add_switches(switches.snapshot)
            uplink = self.config.driver.uplink_switch or None
            ctx = VifContext(xs=xs, domid=domid, config=self.config, metrics=metrics,
                             switches=switches,
                             uplink_switch=uplink if self.role_name == "driver" else None)
            roles: list[Devices] = []
            if backs:
                roles.append(backend.devices(ctx))
            if self.role_name in ("frontend", "driver"):
                roles.append(frontend.devices(ctx))
            m = self.config.metrics
            server = serve_metrics(metrics, m.enabled, m.address, m.port)
            handler = ControlHandler(self.role_name, self.table, metrics.snapshot)
            control = await ControlServer(self.config.daemon.control_socket, handler).start()
            role_tasks = [
                loop.create_task(Discovery(ctx, self.table, d).run(), name=f"{d.role} discovery")
                for d in roles
            ]
            role_tasks.append(loop.create_task(probe_xenstore(xs), name="xenstore probe"))
            if backs and self.config.vifs:  # [[vif]]: attached by domain name
                vifs = DeclaredVifs(xs, domid, self.config.vifs)
                role_tasks.append(loop.create_task(vifs.run(), name="declared vifs"))
            elif self.config.vifs:
                log.warning("[[vif]] tables ignored: only a backend attaches declared vifs")
            tasks.extend(role_tasks)
            tasks.append(loop.create_task(self._status_loop()))
            interval = self.notifier.watchdog_interval
            if interval:
                tasks.append(loop.create_task(self._watchdog(interval)))
            where = f"metrics {m.address}:{server.port}" if server else "metrics off"
            up = f", fronted devices join switch {ctx.uplink_switch}" if ctx.uplink_switch else ""
            log.info(
                "%s running as domain %d (control %s, %s%s)",
                self.role_name, domid, self.config.daemon.control_socket, where, up,
            )
            self.notifier.ready(status="started")
            stopper = loop.create_task(stop.wait())
            await asyncio.wait([stopper, *role_tasks], return_when=asyncio.FIRST_COMPLETED)

            def failed(t: asyncio.Task[None]) -> bool:
                return t.done() and not t.cancelled() and t.exception() is not None

            for t in role_tasks:
                if failed(t):
                    log.error("%s failed: %s", t.get_name(), t.exception())
            stopper.cancel()
            log.info("stopping: closing %d vifs", len(self.table.vifs()))
            self.notifier.stopping(status="closing vifs")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.table.stop_all()
            return 1 if any(failed(t) for t in role_tasks) else 0
        finally:
            for t in tasks:
                t.cancel()
            if switches is not None:
                await switches.close()
            if control is not None:
                await control.close()
            if server is not None:
                server.close()
            xs.close()
            self.notifier.close()


def main(argv: Sequence[str] | None = None) -> int:
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
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop_factory = None
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
