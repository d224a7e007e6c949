"""The frontend role (a guest): one TAP (``nc<devid>`` by default) per device.

Discovery (:func:`devices`) watches ``device/ncvif`` under its home; each device
gets a :class:`FrontendVif` that serves the vchans (grants, publishes ``queue-0`` ..
``queue-<N-1>``, N chosen from the backend's ``multi-queue-max-queues``:
:mod:`ncd.queues`) once the backend is in InitWait, as netfront does. In ``ncd driver
--uplink-switch NAME`` a fronted device is no TAP but a trunk port of switch NAME (one
queue): its granted vchan carries every domain's frames to and from the backend
(accounted to the backend).
"""

from __future__ import annotations

import re
from typing import Any

from ncd import features, layout, parse, queues
from ncd import tap as tapmod
from ncd.vchan.channel import VchanServer
from ncd.xenbus import Action, Fail, FailKind, Role

from .datapath import Datapath
from .discovery import DeviceKey, Devices, device_keys
from .switchport import SwitchLink
from .vif import Channel, TapSettings, Vif, VifContext

_LIVE_STATES = (b"1", b"2", b"3", b"4")  # Initialising .. Connected


class FrontendVif(Vif):
    role = Role.FRONTEND

    def __init__(self, ctx: VifContext, devid: int) -> None:
        super().__init__(ctx, ctx.domid, devid)
        self.view: layout.FrontendView | None = None
        self._backend = -1
        self._backend_dir = ""
        self._read_backend_ref()

    def _read_backend_ref(self) -> None:
        """Where the backend is, as early as possible (the peer watch needs it)."""
        base = self.own_dir
        try:
            raw = layout.read_optional(self.xs, f"{base}/backend-id")
            be = parse.domid("backend-id", raw)
            self._backend_dir = parse.exact(
                "backend",
                layout.read_optional(self.xs, f"{base}/backend"),
                layout.backend_dir(be, self.guest, self.devid),
            )
            self._backend = be
        except (parse.BadEntry, OSError):
            self._backend_dir = f"{base}/backend-unknown"

    @property
    def peer(self) -> int:
        return self._backend

    @property
    def own_dir(self) -> str:
        return layout.frontend_dir(self.guest, self.devid)

    @property
    def peer_dir(self) -> str:
        return self._backend_dir

    @property
    def ifname(self) -> str:
        sw = self.switch
        return f"switch:{sw}" if sw else self.ctx.config.frontend_ifname(self.devid)

    @property
    def switch(self) -> str | None:
        return self.ctx.uplink_switch

    def _load(self) -> None:
        self.view = layout.read_frontend(self.xs, self.guest, self.devid)
        if self.view.backend_path != self._backend_dir:
            raise parse.BadEntry(f"{self.own_dir}/backend changed under us")

    def _tap_settings(self) -> TapSettings:
        assert self.view is not None
        return TapSettings(mac=self.view.mac, mtu=self.view.mtu)

    def _setup(self, tap: tapmod.Tap | None) -> Channel:
        neg = features.negotiate_with(self.xs, self.peer_dir, self.features)
        ring = self.ctx.config.channel.ring_bytes
        if tap is None:  # a switch port: one queue
            queues.publish_num(self.xs, self.own_dir, 1)
            path = layout.queue_dir(self.guest, self.devid, 0)
            registry, name, view = self.ctx.switches, self.switch, self.view
            assert registry is not None and name is not None and view is not None
            vchan = VchanServer.create(self.xs, self._backend, path, ring, ring)
            link = SwitchLink.open(registry, name, vchan, neg, label=self.name,
                                   domid=self._backend, mac=view.mac, trunk=True)
            self.queues = 1
            return link
        n = self._choose_queues()
        paths = [layout.queue_dir(self.guest, self.devid, i) for i in range(n)]
        dp = Datapath.serve(self.xs, self._backend, paths, ring, tap, neg,
                            spin_us=self.ctx.config.channel.spin_us)
        if dp.short_of is not None:
            self._plog.warning("%s: %d of %d queues: %s", self.name, len(dp.queues), n,
                               dp.short_of)
        try:  # the count of the vchans now published, before we say Connected
            queues.publish_num(self.xs, self.own_dir, len(dp.queues))
        except BaseException:
            dp.close()
            raise
        self.queues = len(dp.queues)
        return dp

    def _choose_queues(self) -> int:
        """min(our limit, the backend's ``multi-queue-max-queues``, our CPUs); a bad value
        from the backend means one queue, said once per setup."""
        raw = queues.read_backend_max(self.xs, self.peer_dir)
        n, bad = queues.frontend_count(raw, self._queue_limit(), queues.cpus(),
                                       f"{self.peer_dir}/{queues.KEY_MAX_QUEUES}")
        if bad:
            self._plog.warning("%s: %s", self.name, bad)
        return n

    def _read_peer_state(self) -> bytes | None:
        """The backend's state; its directory vanishing while the backend was neither
        Closing nor Closed (a toolstack's detach closes first) is the backend's doing:
        logged and counted as a bad state, and the machine closes the device."""
        raw = super()._read_peer_state()
        if raw is None and self._peer_raw in _LIVE_STATES:
            why = (
                f"the backend's directory {self.peer_dir} is gone (its state was "
                f"{self._peer_raw.decode()}): closed until the toolstack re-attaches the device"
            )
            self._failed(Fail(why, FailKind.BAD_STATE))
        return raw

    def _observe(self) -> list[Action]:
        if layout.read_optional(self.xs, self.own_dir) is None:
            return self.machine.device_removed()
        return []

    def describe(self) -> dict[str, Any]:
        v = self.view
        return {"mac": v.mac if v else None, "mtu": v.mtu if v else None, "bridge": None,
                "switch": self.switch}


def devices(ctx: VifContext) -> Devices:
    """Discovery for the frontend: devices under ``device/ncvif`` that name their backend."""
    xs, me = ctx.xs, ctx.domid

    def ready(key: DeviceKey) -> bool:  # not (yet) a complete device without backend-id
        return layout.read_optional(xs, f"{layout.frontend_dir(*key)}/backend-id") is not None

    return Devices(
        role="frontend",
        watch=(layout.frontend_root(me),),
        tap_pattern=template_regex(ctx.config.frontend.ifname),
        live_ifnames=lambda: {
            ctx.config.frontend_ifname(d) for d in layout.list_frontend_devices(xs, me)
        },
        listed=lambda: ((me, d) for d in layout.list_frontend_devices(xs, me)),
        ready=ready,
        make_vif=lambda key: FrontendVif(ctx, key[1]),
        key_of=device_keys(layout.frontend_root(me), me),
    )


def template_regex(template: str) -> re.Pattern[str]:
    """The TAP names a template such as ``nc{devid}`` produces."""
    head, _, tail = template.partition("{devid}")
    return re.compile(re.escape(head) + r"\d+" + re.escape(tail))
