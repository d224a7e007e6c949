"""The backend role (dom0 or a driver domain): one TAP ``ncvif<domid>.<devid>`` per device,
or, when the backend entry names a ``switch``, a port of that in-daemon switch (no TAP:
the guest's mapped vchan is the port, locked to its MAC and ``ip`` unless ``trunk``).
It offers ``multi-queue-max-queues`` (:mod:`ncd.queues`) and maps the vchan of every
queue the frontend asked for; a switch port offers one.

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

from ncd import features, layout, ovs, parse, queues
from ncd import tap as tapmod
from ncd.vchan.channel import VchanClient
from ncd.xenbus import Action, Role, XenbusState

from . import netlink
from .datapath import Datapath, SourceLock
from .discovery import DeviceKey, Devices, device_keys
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
        self.vifname: str | None = None  # the entry's vifname (libxl's), else ncvif<d>.<n>
        # The frontend (re)published its vchan since we last set up. Needed because a
        # frontend reconnecting to a restarted backend writes Initialising then Connected
        # at once: reading the level, we may only ever see the stale "Connected".
        self._published = False
        self._ring_ref_path = f"{layout.queue_dir(guest, devid, 0)}/ring-ref"
        self._frontend_gone = False  # logged once: the frontend's directory vanished
        self._ovs: ovs.PortSpec | None = None  # the TAP is a port of this OVS bridge
        # The `rate` key (libxl's BYTES,USEC): read at setup, re-read on every poke (our
        # directory is watched) and applied live to the channel, as netback's
        # xen_net_rate_changed does; a bad value is logged once and means unlimited.
        self.rate = parse.UNLIMITED
        self._rate_raw: bytes | None = None
        self._limited: Datapath | SwitchLink | None = None  # the channel self.rate is on
        self._offered = 1  # the multi-queue-max-queues we published

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
        if sw:
            return f"switch:{sw}"
        return self.vifname or layout.backend_ifname(self.guest, self.devid)

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
        self.vifname = layout.read_vifname(self.xs, self.ctx.domid, self.guest, self.devid)
        self.machine.online = self.view.online
        self._read_rate()

    def _queue_limit(self) -> int:
        """A vif rate-limited when it is set up offers one queue: the limit is then the
        vif's (a limit set later on a multi-queue vif is each queue's credit, as in
        netback)."""
        return 1 if not self.rate.unlimited else super()._queue_limit()

    def _queue_keys(self) -> dict[str, str]:
        self._offered = self._queue_limit()
        return queues.advertise(self._offered)

    def _tap_settings(self) -> TapSettings:
        assert self.view is not None
        return TapSettings(mtu=self.view.mtu, bridge=None if self._ovs else self.bridge)

    def _tap_offloads(self) -> bool:
        return self._ovs is None or not self._ovs.userspace  # see ncd.ovs

    async def _open_tap(self) -> None:
        """The TAP; when ``bridge`` names an Open vSwitch bridge, a port of it (removed
        before the TAP, by the same device teardown) instead of a Linux bridge's."""
        bridge, vsctl = self.bridge, ovs.Vsctl(self.ctx.config.backend.ovs_db)
        self._ovs = None
        if bridge is not None:
            self._ovs = await ovs.port_for(bridge, await netlink.link_kind(bridge), vsctl)
        await super()._open_tap()
        if self._ovs is None:
            return
        port = self.ifname
        self._device.push(f"Open vSwitch port {port}", lambda: vsctl.del_ports([port]))
        await vsctl.add_port(self._ovs, port, self._external_ids())
        log.info("%s: %s is a port of Open vSwitch bridge %s", self.name, port, bridge)

    def _external_ids(self) -> dict[str, str]:
        """vif-openvswitch's Interface external-ids (``attached-mac``, ``xen-vm-name``,
        ``xen-vm-uuid`` from the domain's ``vm`` node, falling back on its ``name``) and
        ``iface-id`` where the backend entry has one; those unknown are left out."""
        assert self.view is not None
        home = f"/local/domain/{self.guest}"
        vm = self._known(f"{home}/vm")
        vm = vm if vm and vm.startswith("/") else None
        ids = {
            "attached-mac": self.view.mac,
            "xen-vm-name": (vm and self._known(f"{vm}/name")) or self._known(f"{home}/name"),
            "xen-vm-uuid": vm and self._known(f"{vm}/uuid"),
            "iface-id": self._known(f"{self.own_dir}/iface-id"),
        }
        return {k: v for k, v in ids.items() if v}

    def _known(self, path: str) -> str | None:
        """A printable value at ``path`` (written by the toolstack, bounded), else None."""
        try:
            value = parse.text(path, layout.read_optional(self.xs, path), max_len=256)
        except (OSError, parse.BadEntry):
            return None
        return value if value.isprintable() else None

    def _on_watch(self, path: str) -> None:
        if path == self._ring_ref_path:
            self._published = True

    def _setup(self, tap: tapmod.Tap | None) -> Channel:
        self._published = False
        neg = features.negotiate_with(self.xs, self.peer_dir, self.features)
        n = queues.backend_count(queues.read_frontend_num(self.xs, self.peer_dir),
                                 self._offered, f"{self.peer_dir}/{queues.KEY_NUM_QUEUES}")
        path = layout.queue_dir(self.guest, self.devid, 0)
        view = self.view
        assert view is not None
        rate = self._read_rate()
        link: Datapath | SwitchLink
        if tap is not None:
            lock = SourceLock(view.mac, view.trunk, view.ips)
            paths = [layout.queue_dir(self.guest, self.devid, i) for i in range(n)]
            link = Datapath.connect(self.xs, self.guest, paths, tap, neg, lock, rate,
                                    spin_us=self.ctx.config.channel.spin_us)
        else:
            registry = self.ctx.switches
            assert view.switch is not None
            if registry is None:
                raise ValueError(f"switch {view.switch}: this daemon runs no switches")
            vchan = VchanClient.connect(self.xs, self.guest, path)
            link = SwitchLink.open(registry, view.switch, vchan, neg, label=self.name,
                                   domid=self.guest, mac=view.mac, trunk=view.trunk,
                                   ips=view.ips, rate=rate)
        self._limited = link
        self.queues = n
        if not rate.unlimited:
            log.info("%s: rate limit %s on what the guest sends", self.name, rate)
        return link

    def _read_rate(self) -> parse.Rate:
        """The ``rate`` key now (parsed again only when its value changed)."""
        raw = layout.read_optional(self.xs, f"{self.own_dir}/rate")
        if raw == self._rate_raw:
            return self.rate
        self._rate_raw = raw
        try:
            self.rate = parse.rate(f"{self.own_dir}/rate", raw)
        except parse.BadEntry as exc:
            log.warning("%s: %s: the vif is not rate limited", self.name, exc)
            self.rate = parse.UNLIMITED
        return self.rate

    def _rate_changed(self) -> None:
        """Apply a changed ``rate`` to the running channel (live, as netback does)."""
        new = self._read_rate()
        link = self._limited
        if link is None or link is not self.datapath or new == link.rate:
            return
        old = link.rate
        link.set_rate(new)
        log.info("%s: rate limit now %s (was %s)", self.name, new, old)

    def _read_peer_state(self) -> bytes | None:
        raw = super()._read_peer_state()
        if raw is None and not self._frontend_gone:  # the machine releases the device
            if layout.read_peer(self.xs, self.peer_dir) is None:
                self._frontend_gone = True
                log.warning("%s: the frontend's directory %s is gone: releasing the device",
                            self.name, self.peer_dir)
        return raw

    def _observe(self) -> list[Action]:
        base = self.own_dir
        own = layout.read_optional(self.xs, f"{base}/state")
        if own is None and layout.read_optional(self.xs, base) is None:
            return self.machine.device_removed()
        self._rate_changed()
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
            fe = self._read_peer_state()
            if layout.state_of(fe) is XenbusState.CONNECTED:  # with a fresh vchan: set up again
                self._published = False
                acts += self.machine.peer_changed(fe, self._now())
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
            "rate": None if self.rate.unlimited else {
                "bytes": self.rate.bytes, "usec": self.rate.usec,
                "bits_per_second": self.rate.bits_per_second()},
        }


def devices(ctx: VifContext) -> Devices:
    """Discovery for the backend: devices under ``backend/ncvif``, dead domains swept."""
    xs, be = ctx.xs, ctx.domid

    def ready(key: DeviceKey) -> bool:
        fe, devid = key
        if layout.read_optional(xs, f"{layout.backend_dir(be, fe, devid)}/online") != b"1":
            return False
        return layout.read_peer(xs, layout.frontend_dir(fe, devid)) is not None

    return Devices(
        role="backend",
        watch=(layout.backend_root(be), "@releaseDomain"),
        tap_pattern=_TAP_RE,
        live_ifnames=lambda: live_ifnames(xs, be),
        listed=lambda: layout.list_backend_devices(xs, be),
        ready=ready,
        make_vif=lambda key: BackendVif(ctx, *key),
        sweep=lambda table: reap_dead_domains(ctx, table),
        forget_stale=lambda names: forget_ovs_ports(ctx, names),
        key_of=device_keys(layout.backend_root(be)),
    )


async def forget_ovs_ports(ctx: VifContext, taps: list[str]) -> None:
    """Remove the Open vSwitch ports of stale TAPs (a crashed daemon's), if any."""
    if not ovs.installed():
        return
    try:
        await ovs.Vsctl(ctx.config.backend.ovs_db).del_ports(taps, wait=False)
    except ovs.OvsError as exc:
        log.info("stale TAPs: Open vSwitch ports not removed: %s", exc)


def reap_dead_domains(ctx: VifContext, table: VifTable) -> None:
    """Remove the backend entries of frontend domains that are gone; poke their vifs.

    Each device's directory is ours (``n<be>``, as libxl makes it) and goes. The
    per-domain directory above them was made by the toolstack's write: dom0 removes
    it; a driver domain may not (``EACCES``) and leaves it to the toolstack."""
    xs = ctx.xs
    root = layout.backend_root(ctx.domid)
    devices: dict[int, list[int]] = {}
    for fe, devid in layout.list_backend_devices(xs, ctx.domid):
        devices.setdefault(fe, []).append(devid)
    for fe, devids in devices.items():
        if frontend_alive(xs, ctx.domid, fe):
            continue
        log.info("domain %d is gone: removing its ncvif backend entries", fe)
        for path in [*(f"{root}/{fe}/{devid}" for devid in devids), f"{root}/{fe}"]:
            try:
                xs.rm(path, missing_ok=True)
            except OSError as exc:
                if not (exc.errno == errno.EACCES and path == f"{root}/{fe}"):
                    log.warning("removing %s: %s", path, exc)
        for vif in table.vifs():
            if vif.guest == fe:
                vif.poke("domain gone")


def frontend_alive(xs: Any, be: int, fe: int) -> bool:
    """Whether domain ``fe`` still exists. dom0 reads ``/local/domain/<fe>`` and asks
    xenstored whether the domain is introduced: a dead domain is released
    (``@releaseDomain``, the nodes it owns removed) before the toolstack removes its
    home, and a sweep in between must not take it for alive (nothing would sweep
    again). A driver domain may ask neither (EACCES, as on Xen). Where the home is
    there but the answer is no, or unknown, the domain is alive while one of its device
    directories for us (readable by their backend) can still be read: release and the
    toolstack remove them with the domain (a domain still being built, not introduced
    yet, has them), and once the domain is gone reading there is EACCES too
    (:func:`ncd.layout.read_peer`)."""
    try:
        if not layout.domain_exists(xs, fe):
            return False
        if xs.is_domain_introduced(fe):
            return True
    except OSError as exc:
        if exc.errno != errno.EACCES:
            raise
    return any(
        layout.read_peer(xs, layout.frontend_dir(f, devid)) is not None
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
