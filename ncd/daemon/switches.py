"""The daemon's in-daemon switches by name (design notes, "Forwarding").

A switch ``[switch.NAME]`` declares is created at start (with its TAP, in its bridge if
it names one) and lives as long as the daemon; a switch that only an attach (or
``--uplink-switch``) names is created with the defaults on its first port and destroyed
with its last. The C switch runs its own thread; here we add and remove ports, watch
each switch's ``events_fd()`` on the loop (a port that stopped on its own: one log line,
a counter, and the owner's ``on_stop`` closes that vif's channel), and hand the
metrics thread snapshots under a lock (so a switch is never freed mid-read).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ncd import tap as tapmod
from ncd.config import Config, SwitchSection
from ncd.features import ETH_MAX, Features, Negotiated, tun_offload_flags, usable
from ncd.switch import DOMID_SELF, PortState, PortStats, Switch

from . import netlink

log = logging.getLogger("ncd.switch")

OnStop = Callable[[PortState, str], None]


@dataclass
class _Entry:
    name: str
    settings: SwitchSection
    declared: bool
    switch: Switch
    lock: threading.Lock = field(default_factory=threading.Lock)  # close vs readers
    owners: dict[int, OnStop] = field(default_factory=dict)  # port -> its owner's on_stop
    labels: dict[int, str] = field(default_factory=dict)  # port -> "vif 1/0" (logs)
    tap: tapmod.Tap | None = None
    tap_port: int | None = None
    stops: dict[str, int] = field(default_factory=dict)  # state label -> ports stopped


class SwitchRegistry:
    """Switches of one daemon; ``self_domid`` is this domain (the TAP ports' origin)."""

    def __init__(self, config: Config, self_domid: int) -> None:
        self.config = config
        self.self_domid = self_domid
        self._switches: dict[str, _Entry] = {}
        self._gone_stops: dict[tuple[str, str], int] = {}  # counts of removed switches
        self._lock = threading.Lock()  # the dict, against the metrics thread
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def _tap_domid(self) -> int:
        """The domid the C switch accounts TAP traffic to: ``self_domid``, except that it
        reads 0 as "default" (DOMID_SELF); :meth:`snapshot` maps it back to ours."""
        return self.self_domid or DOMID_SELF

    # ---- life --------------------------------------------------------------------
    async def start(self) -> None:
        """Create the declared switches (and their TAPs)."""
        self._loop = asyncio.get_running_loop()
        for name in sorted(self.config.switches):
            entry = self._create(name, declared=True)
            if entry.settings.tap:
                await self._add_tap(entry)

    async def close(self) -> None:
        """Destroy every switch (after the vifs removed their ports)."""
        for name in list(self._switches):
            await self._destroy(name)

    def _create(self, name: str, *, declared: bool) -> _Entry:
        s = self.config.switch(name)
        sw = Switch(copy=s.forward_copy, ageing=s.ageing, self_domid=self.self_domid)
        entry = _Entry(name, s, declared, sw)
        with self._lock:
            self._switches[name] = entry
        assert self._loop is not None
        self._loop.add_reader(sw.events_fd(), self._on_events, entry)
        why = "declared" if declared else "first port, defaults"
        log.info("switch %s created (%s; forward_copy %s, ageing %gs)",
                 name, why, s.forward_copy, s.ageing)
        return entry

    async def _destroy(self, name: str) -> None:
        tap = self._destroy_now(name)
        if tap is not None:
            try:
                await netlink.delete(tap.name)
            except OSError as exc:
                log.warning("switch %s: removing TAP %s: %s", name, tap.name, exc)

    def _destroy_now(self, name: str) -> tapmod.Tap | None:
        """Stop and free switch ``name``; returns its TAP (closed, still to delete)."""
        with self._lock:
            entry = self._switches.pop(name, None)
            if entry is not None:
                for reason, n in entry.stops.items():
                    key = (name, reason)
                    self._gone_stops[key] = self._gone_stops.get(key, 0) + n
        if entry is None:
            return None
        assert self._loop is not None
        self._loop.remove_reader(entry.switch.events_fd())
        tap = entry.tap
        with entry.lock:
            if entry.tap_port is not None:
                entry.switch.remove_port(entry.tap_port)
                entry.tap_port = None
            left = entry.switch.ports()
            entry.switch.close()  # joins its thread: no port's rings are touched after
        extra = f" ({len(left)} ports still attached)" if left else ""
        log.info("switch %s destroyed%s", name, extra)
        if tap is not None:
            tap.close()
        return tap

    async def _add_tap(self, entry: _Entry) -> None:
        """The switch's TAP port (trunk: the local kernel sends with any address)."""
        s = entry.settings
        tap = tapmod.open_tap(s.tap)
        try:
            feats = usable(Features.ALL, tap.accepts_offloads)
            tap.set_offloads(tun_offload_flags(feats))
            await netlink.configure(tap.name, bridge=s.bridge or None)
            neg = Negotiated(rx_features=feats, tx_features=feats, max_frame=ETH_MAX)
            port = entry.switch.add_tap(tap.fileno(), domid=self._tap_domid, trunk=True,
                                        negotiated=neg)
        except BaseException:
            tap.close()
            raise
        entry.tap, entry.tap_port = tap, port
        entry.labels[port] = f"TAP {tap.name}"
        where = f" in bridge {s.bridge}" if s.bridge else ""
        log.info("switch %s: TAP %s joined as port %d%s", entry.name, tap.name, port, where)

    # ---- ports -------------------------------------------------------------------
    def add_vchan(self, name: str, vchan: Any, *, label: str, domid: int, mac: str,
                  trunk: bool, negotiated: Negotiated, ips: Iterable[str],
                  on_stop: OnStop, rate: tuple[int, int] = (0, 0)) -> int:
        """A vchan port of switch ``name`` (created on first use); returns the port id."""
        entry = self._switches.get(name)
        created = entry is None
        if entry is None:
            entry = self._create(name, declared=False)
        try:
            port = entry.switch.add_vchan(vchan, domid=domid, mac=mac, trunk=trunk,
                                          negotiated=negotiated, ips=ips, rate=rate)
        except BaseException:
            if created:
                self._destroy_now(name)  # undeclared: no TAP
            raise
        entry.owners[port] = on_stop
        entry.labels[port] = label
        kind = entry.switch.port_kind(port).name.lower()
        lock = "trunk" if trunk else f"locked to {mac}" + (f" {','.join(ips)}" if ips else "")
        log.info("switch %s: %s joined as port %d (%s vchan, dom%d, %s)",
                 name, label, port, kind, domid, lock)
        return port

    def set_port_rate(self, name: str, port: int, rate: tuple[int, int]) -> None:
        entry = self._switches.get(name)
        if entry is not None:
            with entry.lock:
                entry.switch.set_port_rate(port, *rate)

    def port_stats(self, name: str, port: int) -> PortStats | None:
        entry = self._switches.get(name)
        if entry is None:
            return None
        with entry.lock:
            return entry.switch.port_stats(port)

    def remove_port(self, name: str, port: int) -> PortStats:
        """Remove a vchan port: on return the switch no longer touches its rings (close
        the vchan now). The last port of an undeclared switch destroys it."""
        entry = self._switches.get(name)
        if entry is None:  # destroyed already (its thread is joined): nothing to wait for
            return PortStats()
        with entry.lock:
            stats = entry.switch.remove_port(port)
        entry.owners.pop(port, None)
        label = entry.labels.pop(port, f"port {port}")
        log.info("switch %s: %s left (port %d)", name, label, port)
        if not entry.declared and not entry.switch.ports():
            self._destroy_now(name)  # undeclared: no TAP
        return stats

    # ---- events ------------------------------------------------------------------
    def _on_events(self, entry: _Entry) -> None:
        """Ports that stopped on their own: log the recorded reason, count, tell the owner."""
        try:
            stopped = entry.switch.stopped_ports()
        except ValueError:  # closed meanwhile
            return
        for port, state, reason in stopped:
            label = entry.labels.get(port, f"port {port}")
            what = state.name.lower()
            with self._lock:
                entry.stops[what] = entry.stops.get(what, 0) + 1
            log.warning("switch %s: %s (port %d) stopped: %s: %s",
                        entry.name, label, port, what, reason or "no reason recorded")
            owner = entry.owners.get(port)
            if owner is not None:
                owner(state, reason)

    # ---- metrics (any thread) -------------------------------------------------------
    def _domid(self, domid: int) -> int:
        return self.self_domid if domid == DOMID_SELF else domid

    def snapshot(self) -> list[dict[str, Any]]:
        """Per switch: name, copy mode, ports, forwarded {(origin, dest): (frames, bytes)},
        port stops by state."""
        with self._lock:
            entries = sorted(self._switches.values(), key=lambda e: e.name)
            gone = dict(self._gone_stops)
        out = []
        for e in entries:
            with e.lock:
                if e.switch._sw is None:
                    continue
                acct = {(self._domid(o), self._domid(d)): v
                        for (o, d), v in e.switch.accounting().items()}
                info = e.switch.info()
            stops = dict(e.stops)
            out.append({
                "name": e.name,
                "forward_copy": e.settings.forward_copy,
                "declared": e.declared,
                "tap": e.tap.name if e.tap else None,
                "ports": info.ports,
                "fdb_entries": info.fdb_entries,
                "grant_copy_calls": info.grant_copy_calls,
                "grant_copy_segs": info.grant_copy_segs,
                "rounds": info.rounds,
                "wakeups": info.wakeups,
                "spins_won": info.spins_won,
                "forwarded": acct,
                "port_stops": stops,
            })
        for (name, reason), n in gone.items():
            for d in out:
                if d["name"] == name:
                    d["port_stops"][reason] = d["port_stops"].get(reason, 0) + n
        return out
