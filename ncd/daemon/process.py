"""One daemon process: its roles' device discoveries, the control socket, the metrics
endpoint, sd_notify, the xenstore probe and the shutdown (``ncd.daemon.main`` starts it).

A backend's modules (the backend half of a vif, switches, declared vifs, OVS) are
imported only by the roles that back vifs: a frontend does not carry them.

Losing xenstored (its connection fails; a watch alone would never say so) is fatal:
without it the daemon sees neither detaches nor handshakes, so it logs why, closes
every vif and exits 1, and systemd restarts it (``Restart=on-failure``) until xenstored
is back. The hypervisor's channels need no daemon: a vif keeps its traffic meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from ncd import __version__, parse
from ncd.config import Config
from ncd.control import ControlServer
from ncd.metrics import Metrics, serve_metrics
from ncd.sdnotify import SdNotifier
from ncd.xen._lib import lib as xenlib
from ncd.xen.errors import XenError
from ncd.xen.xenstore import XenStore

from . import netlink
from .discovery import Devices, Discovery
from .service import ControlHandler, VifTable
from .vif import VifContext

if TYPE_CHECKING:
    from .switches import SwitchRegistry

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


def release_free_heap() -> None:
    """glibc's ``malloc_trim(0)``: give the kernel back the free pages inside the heap,
    not only at its top. Start-up (imports, compiling) and a vif's set-up leave
    holes that free() keeps: ~1 MB of a frontend's RSS (docs/performance.md)."""
    xenlib.malloc_trim(0)


class Daemon:
    """One ``ncd`` process of role ``role`` (backend, frontend or driver)."""

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
        settled: tuple[int, int] | None = None
        while True:  # vif states change inside vifs: refresh STATUS now and then
            await asyncio.sleep(1.0)
            self._status()
            counts = self.table.counts()
            if counts != settled:  # started, or vifs came, went, connected: at most 1/s
                settled = counts
                release_free_heap()

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
            if backs:  # a backend's modules: imported by the roles that back vifs
                from . import backend
                from .declared import DeclaredVifs
                from .switches import SwitchRegistry

                await netlink.open_iproute()  # bridge ports, link kinds
                switches = SwitchRegistry(self.config, domid)
                await switches.start()
                metrics.add_switches(switches.snapshot)
            uplink = self.config.driver.uplink_switch or None
            ctx = VifContext(
                xs=xs,
                domid=domid,
                config=self.config,
                metrics=metrics,
                switches=switches,
                uplink_switch=uplink if self.role_name == "driver" else None,
            )
            roles: list[Devices] = []
            if backs:
                roles.append(backend.devices(ctx))
            if self.role_name in ("frontend", "driver"):
                from . import frontend

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
                self.role_name,
                domid,
                self.config.daemon.control_socket,
                where,
                up,
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
