"""The backend role (dom0 or a driver domain): one TAP ``ncvif<domid>.<devid>`` per device,
or, when the backend entry names a ``switch``, a port of that in-daemon switch (no TAP:
the guest's mapped vchan is the port, locked to its MAC and ``ip`` unless ``trunk``).

Discovery (:func:`devices`) watches ``backend/ncvif`` under its home and
``@releaseDomain``. A device is picked up when its backend entries say ``online``
1 and the frontend's directory exists (so a device the toolstack is removing is
not re-created). For a frontend domain that is gone, the backend entries are
removed (libxl's job on a real host), which releases its vifs.
"""

from __future__ import annotations

import errno
import logging
import re
from typing import Any

from ncd import features, layout, parse
from ncd import tap as tapmod
from ncd.vchan.channel import VchanClient
from ncd.xenbus import Action, Role, XenbusState

from .datapath import Datapath, SourceLock
from .discovery import DeviceKey, Devices
from .service import VifTable
from .switchport import SwitchLink
from .vif import Channel, TapSettings, Vif, VifContext

log = logging.getLogger("ncd.backend")

_TAP_RE = re.compile(r"ncvif(\d+)\.(\d+)")


class BackendVif(Vif):
    role = Role.BACKEND

    def __init__(self, ctx: VifContext, guest: int, devid: int) -> None:
        super().__init__(ctx, guest, devid)
        self.view: layout.BackendView | None = None
        # The frontend (re)published its vchan since we last set up. Needed because a
        # frontend reconnecting to a restarted backend writes Initialising then Connected
        # at once: reading the level, we may only ever see the stale "Connected".
        self._published = False
        self._ring_ref_path = f"{layout.queue_dir(guest, devid, 0)}/ring-ref"
        self._frontend_gone = False  # logged once: the frontend's directory vanished

    @property
    def peer(self) -> int:
        return self.guest

    @property
    def own_dir(self) -> str:
        return layout.backend_dir(self.ctx.domid, self.guest, self.devid)

    @property
    def peer_dir(self) -> str:
        return layout.frontend_dir(self.guest, self.devid)

    @property
    def ifname(self) -> str:
        sw = self.switch
        return f"switch:{sw}" if sw else layout.backend_ifname(self.guest, self.devid)

    @property
    def switch(self) -> str | None:
        return self.view.switch if self.view is not None else None

    @property
    def bridge(self) -> str | None:
        if self.view is not None and self.view.bridge:
            return self.view.bridge
        return self.ctx.config.backend.bridge or None

    def _load(self) -> None:
        self.view = layout.read_backend(self.xs, self.ctx.domid, self.guest, self.devid)
        self.machine.online = self.view.online

    def _tap_settings(self) -> TapSettings:
        assert self.view is not None
        return TapSettings(mtu=self.view.mtu, bridge=self.bridge)

    def _on_watch(self, path: str) -> None:
        if path == self._ring_ref_path:
            self._published = True

    def _setup(self, tap: tapmod.Tap | None) -> Channel:
        self._published = False
        neg = features.negotiate_with(self.xs, self.peer_dir, self.features)
        path = layout.queue_dir(self.guest, self.devid, 0)
        view = self.view
        assert view is not None
        if tap is not None:
            lock = SourceLock(view.mac, view.trunk, view.ips)
            return Datapath.connect(self.xs, self.guest, path, tap, neg, lock)
        registry = self.ctx.switches
        assert view.switch is not None
        if registry is None:
            raise ValueError(f"switch {view.switch}: this daemon runs no switches")
        vchan = VchanClient.connect(self.xs, self.guest, path)
        return SwitchLink.open(registry, view.switch, vchan, neg, label=self.name,
                               domid=self.guest, mac=view.mac, trunk=view.trunk, ips=view.ips)

    def _read_peer_state(self) -> bytes | None:
        raw = super()._read_peer_state()
        if raw is None and not self._frontend_gone:  # the machine releases the device
            if layout.read_optional(self.xs, self.peer_dir) is None:
                self._frontend_gone = True
                log.warning("%s: the frontend's directory %s is gone: releasing the device",
                            self.name, self.peer_dir)
        return raw

    def _observe(self) -> list[Action]:
        base = self.own_dir
        own = layout.read_optional(self.xs, f"{base}/state")
        if own is None and layout.read_optional(self.xs, base) is None:
            return self.machine.device_removed()
        online = layout.read_online(self.xs, base)
        acts: list[Action] = []
        if online != self.machine.online:
            acts += self.machine.set_online(online)
        st = self.machine.state
        if layout.state_of(own) is XenbusState.CLOSING and not self.machine.released and (
            st not in (XenbusState.CLOSING, XenbusState.CLOSED)
            or (st == XenbusState.CLOSED and not online)
        ):
            log.info("%s: the toolstack closes the device", self.name)
            acts += self.machine.toolstack_close()
        elif st == XenbusState.INIT_WAIT and self._published:
            fe = layout.read_optional(self.xs, f"{self.peer_dir}/state")
            if layout.state_of(fe) is XenbusState.CONNECTED:  # with a fresh vchan: set up again
                self._published = False
                acts += self.machine.peer_changed(fe)
        return acts

    def describe(self) -> dict[str, Any]:
        v = self.view
        return {
            "mac": v.mac if v else None,
            "mtu": v.mtu if v else None,
            "bridge": None if self.switch else self.bridge,
            "switch": self.switch,
            "trunk": v.trunk if v else None,
            "ip": list(v.ips) if v else [],
        }


def devices(ctx: VifContext) -> Devices:
    """Discovery for the backend: devices under ``backend/ncvif``, dead domains swept."""
    xs, be = ctx.xs, ctx.domid

    def ready(key: DeviceKey) -> bool:
        fe, devid = key
        if layout.read_optional(xs, f"{layout.backend_dir(be, fe, devid)}/online") != b"1":
            return False
        return layout.read_optional(xs, layout.frontend_dir(fe, devid)) is not None

    return Devices(
        role="backend",
        watch=(layout.backend_root(be), "@releaseDomain"),
        tap_pattern=_TAP_RE,
        live_ifnames=lambda: live_ifnames(xs, be),
        listed=lambda: layout.list_backend_devices(xs, be),
        ready=ready,
        make_vif=lambda key: BackendVif(ctx, *key),
        sweep=lambda table: reap_dead_domains(ctx, table),
    )


def reap_dead_domains(ctx: VifContext, table: VifTable) -> None:
    """Remove the backend entries of frontend domains that are gone; poke their vifs."""
    xs = ctx.xs
    root = layout.backend_root(ctx.domid)
    for name in layout.list_optional(xs, root):
        try:
            fe = parse.domid(root, name)
        except parse.BadEntry:
            continue
        if frontend_alive(xs, ctx.domid, fe):
            continue
        log.info("domain %d is gone: removing its ncvif backend entries", fe)
        try:
            xs.rm(f"{root}/{fe}", missing_ok=True)
        except OSError as exc:
            log.warning("removing %s/%d: %s", root, fe, exc)
        for vif in table.vifs():
            if vif.guest == fe:
                vif.poke("domain gone")


def frontend_alive(xs: Any, be: int, fe: int) -> bool:
    """Whether domain ``fe`` still exists. dom0 reads ``/local/domain/<fe>``; a driver
    domain may not (EACCES, as on Xen), so there it is alive while one of its device
    directories for us (readable by their backend) still exists: the toolstack
    removes them with the domain."""
    try:
        return layout.domain_exists(xs, fe)
    except OSError as exc:
        if exc.errno != errno.EACCES:
            raise
    return any(
        layout.read_optional(xs, layout.frontend_dir(f, devid)) is not None
        for f, devid in layout.list_backend_devices(xs, be)
        if f == fe
    )


def live_ifnames(xs: Any, be: int) -> set[str]:
    """TAP names of the devices that are online under ``be``'s backend directory."""
    return {
        layout.backend_ifname(fe, devid)
        for fe, devid in layout.list_backend_devices(xs, be)
        if layout.read_online(xs, layout.backend_dir(be, fe, devid))
        and layout.read_optional(xs, f"{layout.backend_dir(be, fe, devid)}/switch") in (None, b"")
    }
