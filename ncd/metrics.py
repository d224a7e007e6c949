"""Prometheus metrics of one daemon, and the HTTP endpoint that serves them.

The hot path counts in C; nothing here is incremented per frame. Each vif
registers a *source*: a callable returning a :class:`VifCounters` snapshot,
read at scrape time by a custom collector. Daemon-level events (handshake
failures) are counted here and exposed by a collector too.

prometheus_client renders every scrape, but it is imported at the first one, with
the HTTP server (wsgiref): with them come http.server, email, urllib and ssl, ~9 MB of
RSS that a daemon nobody scrapes (most guests' frontends) does not need to carry. The
endpoint's socket listens from the start.

Exposed (base units; ``direction`` is relative to this daemon's vchan:
``tx`` = sent to the peer domain, ``rx`` = received from it)::

    ncd_vif_frames_total{domid,devid,direction}            counter
    ncd_vif_bytes_total{domid,devid,direction}             counter
    ncd_vif_drops_total{domid,devid,reason}                counter
    ncd_vif_ring_full_waits_total{domid,devid}             counter
    ncd_vif_rate_limited_frames_total{domid,devid}         counter (frames from the guest
    ncd_vif_rate_delay_seconds_total{domid,devid}          counter  that waited for the
                                                           ``rate`` limit's refill, and
                                                           how long they waited)
    ncd_vif_rate_limit_bytes_per_second{domid,devid}       gauge (the ``rate`` in effect;
                                                           0 = unlimited)
    ncd_vif_notifications_total{domid,devid,direction}     counter (sent / received)
    ncd_vif_pump_spins_total{domid,devid,result}           counter (the pumps' spins before
                                                           sleeping: ``won``, work came
                                                           and a sleep was avoided, or
                                                           ``missed``, then slept)
    ncd_vif_queue_frames_total{domid,devid,queue,direction} counter (per channel of a
    ncd_vif_queue_bytes_total{domid,devid,queue,direction}  counter  multi-queue vif;
                                                           queue "0" alone otherwise)
    ncd_vif_tracked_foreign_pages{domid,devid}             gauge
    ncd_vif_state{domid,devid}                             gauge (XenbusState 1..6)
    ncd_vifs{state}                                        gauge (vifs per XenbusState)
    ncd_handshake_failures_total{kind}                     counter
    ncd_log_records_lost_total                             counter (log records the
                                                           daemon could not write,
                                                           ncd/logsink.py)
    ncd_build_info{version,role}                           gauge = 1

In-daemon switches (backend / driver; a vif that is a switch port reports its port's
counters as the vif metrics above, drops by reason included: ``spoofed_source``,
``ring_full``, ``bad_record_from_peer``, ``offload_not_negotiated``, ...)::

    ncd_forwarded_frames_total{switch,origin,destination}  counter (by domid: where the
    ncd_forwarded_bytes_total{switch,origin,destination}   counter  bytes came from, went to)
    ncd_switch_ports{switch}                               gauge
    ncd_switch_port_stops_total{switch,reason}             counter (ports the switch stopped)
    ncd_tracker_entries                                    gauge (pages in this process's
                                                           foreign-page tracker)
"""

from __future__ import annotations

import ipaddress
import logging
import re
import selectors
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from . import logsink
from .xenbus import FAIL_KINDS, XenbusState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger("ncd")

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9477
_LABEL_VALUE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_STATES = [s for s in XenbusState if XenbusState.INITIALISING <= s <= XenbusState.CLOSED]


@dataclass(frozen=True)
class QueueCounters:
    """One queue's (channel's) frames and bytes; ``tx`` / ``rx`` as in VifCounters."""

    frames_tx: int = 0
    frames_rx: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0

    def plus(self, other: QueueCounters) -> QueueCounters:
        return QueueCounters(self.frames_tx + other.frames_tx, self.frames_rx + other.frames_rx,
                             self.bytes_tx + other.bytes_tx, self.bytes_rx + other.bytes_rx)


def sum_queues(a: tuple[QueueCounters, ...],
               b: tuple[QueueCounters, ...]) -> tuple[QueueCounters, ...]:
    """Per-queue counters summed queue by queue (channels may differ in queue count)."""
    n = max(len(a), len(b))
    pad = QueueCounters()
    return tuple((a[i] if i < len(a) else pad).plus(b[i] if i < len(b) else pad)
                 for i in range(n))


@dataclass(frozen=True)
class VifCounters:
    """A point-in-time snapshot of one vif's counters (monotonic except the gauges)."""

    frames_tx: int = 0
    frames_rx: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0
    drops: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    ring_full_waits: int = 0
    notifications_sent: int = 0
    notifications_received: int = 0
    notifications_spurious: int = 0  # received events that carried no work (late EOI)
    watch_events_coalesced: int = 0  # xenstore watch events folded into a later look
    watch_backoffs: int = 0  # times the peer's watch was dropped a while (its events idle)
    channel_setups: int = 0  # channels brought up (a flapping peer shows here)
    tracked_foreign_pages: int = 0
    rate_limited_frames: int = 0  # frames from the guest that waited for the rate limit
    rate_delay_usec: int = 0  # how long they waited, microseconds
    rate_bytes: int = 0  # the rate in effect (gauge): bytes per interval, 0 = unlimited
    rate_usec: int = 0  # its interval, microseconds
    spins_won: int = 0  # the pumps' spins before sleeping that found work
    spins_missed: int = 0  # ... that found none (a sleep followed)
    queues: tuple[QueueCounters, ...] = ()  # per queue (channel), in queue order

    def plus(self, other: VifCounters) -> VifCounters:
        """Counters summed (drops by reason); the gauges are ``other``'s (the current one)."""
        drops = dict(self.drops)
        for reason, n in other.drops.items():
            drops[reason] = drops.get(reason, 0) + n
        return VifCounters(
            frames_tx=self.frames_tx + other.frames_tx,
            frames_rx=self.frames_rx + other.frames_rx,
            bytes_tx=self.bytes_tx + other.bytes_tx,
            bytes_rx=self.bytes_rx + other.bytes_rx,
            drops=drops,
            ring_full_waits=self.ring_full_waits + other.ring_full_waits,
            notifications_sent=self.notifications_sent + other.notifications_sent,
            notifications_received=self.notifications_received + other.notifications_received,
            notifications_spurious=self.notifications_spurious + other.notifications_spurious,
            watch_events_coalesced=self.watch_events_coalesced + other.watch_events_coalesced,
            watch_backoffs=self.watch_backoffs + other.watch_backoffs,
            channel_setups=self.channel_setups + other.channel_setups,
            tracked_foreign_pages=other.tracked_foreign_pages,
            rate_limited_frames=self.rate_limited_frames + other.rate_limited_frames,
            rate_delay_usec=self.rate_delay_usec + other.rate_delay_usec,
            rate_bytes=other.rate_bytes,
            rate_usec=other.rate_usec,
            spins_won=self.spins_won + other.spins_won,
            spins_missed=self.spins_missed + other.spins_missed,
            queues=sum_queues(self.queues, other.queues),
        )

    @property
    def rate_bytes_per_second(self) -> float:
        """The rate in effect, 0 = unlimited."""
        if not self.rate_bytes or not self.rate_usec:
            return 0.0
        return self.rate_bytes * 1_000_000 / self.rate_usec


@dataclass
class _Vif:
    domid: int
    devid: int
    counters: Callable[[], VifCounters]
    state: Callable[[], XenbusState]


class _VifCollector:
    """The vif and daemon metrics, from the sources at scrape time."""

    def __init__(self, metrics: Metrics, role: str, version: str) -> None:
        self._m = metrics
        self._build = {"version": version, "role": role}

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        yield InfoMetricFamily("ncd_build", "ncd build", value=self._build)
        failures = CounterMetricFamily(
            "ncd_handshake_failures", "Xenbus handshakes that failed", labels=["kind"]
        )
        for kind, n in self._m.handshake_failures().items():
            failures.add_metric([kind], n)
        yield failures
        lab = ["domid", "devid"]
        frames = CounterMetricFamily(
            "ncd_vif_frames", "Frames through the vchan", labels=[*lab, "direction"]
        )
        nbytes = CounterMetricFamily(
            "ncd_vif_bytes", "Ethernet frame bytes through the vchan", labels=[*lab, "direction"]
        )
        drops = CounterMetricFamily(
            "ncd_vif_drops", "Frames dropped, by reason", labels=[*lab, "reason"]
        )
        waits = CounterMetricFamily(
            "ncd_vif_ring_full_waits", "Times the sender waited for ring space", labels=lab
        )
        notes = CounterMetricFamily(
            "ncd_vif_notifications", "Event channel notifications", labels=[*lab, "direction"]
        )
        spurious = CounterMetricFamily(
            "ncd_vif_notifications_spurious",
            "Event channel notifications that carried no work (their unmask was deferred)",
            labels=lab,
        )
        spins = CounterMetricFamily(
            "ncd_vif_pump_spins",
            "Spins of the vif's pumps before sleeping: won (work came, a sleep avoided) or missed",
            labels=[*lab, "result"],
        )
        coalesced = CounterMetricFamily(
            "ncd_vif_watch_events_coalesced",
            "Xenstore watch events folded into a later look at the vif's entries",
            labels=lab,
        )
        backoffs = CounterMetricFamily(
            "ncd_vif_watch_backoffs",
            "Times the watch on the peer's directory was dropped a while, its events idle",
            labels=lab,
        )
        setups = CounterMetricFamily(
            "ncd_vif_channel_setups", "Channels brought up (mapped or granted)", labels=lab
        )
        pages = GaugeMetricFamily(
            "ncd_vif_tracked_foreign_pages", "Foreign pages in the tracker for this vif", labels=lab
        )
        limited = CounterMetricFamily(
            "ncd_vif_rate_limited_frames",
            "Frames from the guest that waited for the rate limit's refill",
            labels=lab,
        )
        delay = CounterMetricFamily(
            "ncd_vif_rate_delay_seconds",
            "Time frames from the guest waited for the rate limit's refill",
            labels=lab,
        )
        limit = GaugeMetricFamily(
            "ncd_vif_rate_limit_bytes_per_second",
            "The vif's rate limit in effect (the backend entry's rate; 0 = unlimited)",
            labels=lab,
        )
        qlab = [*lab, "queue", "direction"]
        qframes = CounterMetricFamily(
            "ncd_vif_queue_frames", "Frames through one queue (channel) of the vif", labels=qlab
        )
        qbytes = CounterMetricFamily(
            "ncd_vif_queue_bytes",
            "Ethernet frame bytes through one queue (channel) of the vif",
            labels=qlab,
        )
        state = GaugeMetricFamily("ncd_vif_state", "XenbusState of the vif (1..6)", labels=lab)
        by_state = dict.fromkeys(_STATES, 0)
        for vif, snap, st in self._m._snapshots():
            ids = [str(vif.domid), str(vif.devid)]
            frames.add_metric([*ids, "tx"], snap.frames_tx)
            frames.add_metric([*ids, "rx"], snap.frames_rx)
            nbytes.add_metric([*ids, "tx"], snap.bytes_tx)
            nbytes.add_metric([*ids, "rx"], snap.bytes_rx)
            for reason, n in sorted(snap.drops.items()):
                drops.add_metric([*ids, reason], n)
            waits.add_metric(ids, snap.ring_full_waits)
            notes.add_metric([*ids, "sent"], snap.notifications_sent)
            notes.add_metric([*ids, "received"], snap.notifications_received)
            spurious.add_metric(ids, snap.notifications_spurious)
            spins.add_metric([*ids, "won"], snap.spins_won)
            spins.add_metric([*ids, "missed"], snap.spins_missed)
            coalesced.add_metric(ids, snap.watch_events_coalesced)
            backoffs.add_metric(ids, snap.watch_backoffs)
            setups.add_metric(ids, snap.channel_setups)
            pages.add_metric(ids, snap.tracked_foreign_pages)
            limited.add_metric(ids, snap.rate_limited_frames)
            delay.add_metric(ids, snap.rate_delay_usec / 1e6)
            limit.add_metric(ids, snap.rate_bytes_per_second)
            for q, qc in enumerate(snap.queues):
                qframes.add_metric([*ids, str(q), "tx"], qc.frames_tx)
                qframes.add_metric([*ids, str(q), "rx"], qc.frames_rx)
                qbytes.add_metric([*ids, str(q), "tx"], qc.bytes_tx)
                qbytes.add_metric([*ids, str(q), "rx"], qc.bytes_rx)
            state.add_metric(ids, int(st))
            if st in by_state:
                by_state[st] += 1
        vifs = GaugeMetricFamily("ncd_vifs", "Vifs of this daemon by XenbusState", labels=["state"])
        for st, n in by_state.items():
            vifs.add_metric([st.label], n)
        yield from (frames, nbytes, drops, waits, notes, spurious, spins, coalesced, backoffs)
        yield from (setups, pages, limited, delay, limit, qframes, qbytes, state, vifs)

    def describe(self) -> Iterator[Metric]:
        return iter(())


SwitchSource = Callable[[], list[dict[str, Any]]]


def tracker_entries() -> int:
    """Pages in this process's foreign-page tracker (every mapping of every vchan)."""
    from ncd.vchan._lib import lib

    return int(lib.ncd_tracker_count(lib.ncd_tracker_process()))


class _SwitchCollector:
    def __init__(self, source: SwitchSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lab = ["switch", "origin", "destination"]
        frames = CounterMetricFamily(
            "ncd_forwarded_frames",
            "Frames forwarded by a switch, by origin and destination domain",
            labels=lab,
        )
        nbytes = CounterMetricFamily(
            "ncd_forwarded_bytes",
            "Ethernet bytes forwarded by a switch, by origin and destination domain",
            labels=lab,
        )
        ports = GaugeMetricFamily("ncd_switch_ports", "Ports of a switch", labels=["switch"])
        stops = CounterMetricFamily(
            "ncd_switch_port_stops",
            "Ports a switch stopped on its own, by reason",
            labels=["switch", "reason"],
        )
        for sw in self._source():
            name = sw["name"]
            for (origin, dest), (f, b) in sorted(sw["forwarded"].items()):
                frames.add_metric([name, str(origin), str(dest)], f)
                nbytes.add_metric([name, str(origin), str(dest)], b)
            ports.add_metric([name], sw["ports"])
            for reason, n in sorted(sw["port_stops"].items()):
                stops.add_metric([name, reason], n)
        tracked = GaugeMetricFamily(
            "ncd_tracker_entries", "Pages in this process's foreign-page tracker"
        )
        tracked.add_metric([], tracker_entries())
        yield from (frames, nbytes, ports, stops, tracked)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _LogCollector:
    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "ncd_log_records_lost",
            "Log records the daemon could not write (the log sink failed)",
            value=logsink.records_lost(),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    """The metrics of one daemon (``role`` backend, frontend or driver) in its own
    registry."""

    def __init__(self, role: str, version: str) -> None:
        self._role = role
        self._version = version
        self._lock = threading.Lock()
        self._vifs: dict[tuple[int, int], _Vif] = {}
        self._failures = dict.fromkeys(FAIL_KINDS, 0)  # present at 0 from the start
        self._switches: SwitchSource | None = None
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus_client's registry of these metrics, made (and the library imported)
        on first use."""
        with self._lock:
            if self._registry is None:
                from prometheus_client import CollectorRegistry

                registry = CollectorRegistry(auto_describe=False)
                registry.register(_VifCollector(self, self._role, self._version))
                registry.register(_LogCollector())
                if self._switches is not None:
                    registry.register(_SwitchCollector(self._switches))
                self._registry = registry
            return self._registry

    def add_switches(self, source: SwitchSource) -> None:
        """The daemon's switches (:meth:`ncd.daemon.switches.SwitchRegistry.snapshot`);
        before the first scrape."""
        with self._lock:
            if self._registry is not None:
                raise RuntimeError("add_switches after the registry was made")
            self._switches = source

    def add_vif(
        self,
        domid: int,
        devid: int,
        counters: Callable[[], VifCounters],
        state: Callable[[], XenbusState],
    ) -> None:
        with self._lock:
            if (domid, devid) in self._vifs:
                raise ValueError(f"vif {domid}/{devid} already registered")
            self._vifs[(domid, devid)] = _Vif(domid, devid, counters, state)

    def remove_vif(self, domid: int, devid: int) -> None:
        with self._lock:
            self._vifs.pop((domid, devid), None)

    def handshake_failed(self, kind: str) -> None:
        if kind not in FAIL_KINDS:
            raise ValueError(f"unknown handshake failure kind {kind!r}")
        with self._lock:
            self._failures[kind] += 1

    def handshake_failures(self) -> dict[str, int]:
        with self._lock:
            return dict(self._failures)

    def _snapshots(self) -> list[tuple[_Vif, VifCounters, XenbusState]]:
        with self._lock:
            vifs = sorted(self._vifs.values(), key=lambda v: (v.domid, v.devid))
        out = []
        for vif in vifs:
            snap = vif.counters()
            for reason in snap.drops:
                if not _LABEL_VALUE.fullmatch(reason):
                    raise ValueError(f"drop reason {reason!r} is not a label value")
            out.append((vif, snap, vif.state()))
        return out

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        registry = self.registry  # first: it imports prometheus_client
        from prometheus_client import generate_latest

        return generate_latest(registry)

    def snapshot(self) -> dict[str, Any]:
        """The same numbers as JSON-ready data (for the control socket's ``stats``)."""
        vifs = []
        for vif, snap, st in self._snapshots():
            d = asdict(snap)
            d["drops"] = dict(snap.drops)
            vifs.append({"domid": vif.domid, "devid": vif.devid, "state": st.label, **d})
        out: dict[str, Any] = {"vifs": vifs, "handshake_failures": self.handshake_failures()}
        if self._switches is not None:
            out["switches"] = [
                {
                    **{k: v for k, v in sw.items() if k != "forwarded"},
                    "forwarded": [
                        {"origin": o, "destination": d, "frames": f, "bytes": b}
                        for (o, d), (f, b) in sorted(sw["forwarded"].items())
                    ],
                }
                for sw in self._switches()
            ]
        out["tracker_entries"] = tracker_entries()
        return out


class MetricsServer:
    """The HTTP endpoint (``/metrics``) in a background thread; port 0 picks one.

    The socket listens from the start (a port in use fails here); the thread waits for
    the first connection, then imports the HTTP server and prometheus_client (see the
    module notes) and serves that connection and the next ones."""

    def __init__(
        self, metrics: Metrics, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT
    ) -> None:
        # an IP address (the config checks it): getaddrinfo would load the idna codec
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self._sock = socket.create_server((address, port), family=family)
        self._wake, self._waker = socket.socketpair()
        self._metrics = metrics
        self._lock = threading.Lock()
        self._closing = False
        self._server: WSGIServer | None = None
        self.address = address
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="ncd-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake, selectors.EVENT_READ)
            ready = sel.select()
        if not any(key.fileobj is self._sock for key, _ in ready):
            return  # woken by close()
        try:
            server = _wsgi_server(self._sock, self.address, self._metrics.registry)
        except Exception as exc:  # an import or set-up failure: say it, stay up
            log.error("metrics endpoint %s:%d: %s", self.address, self.port, exc)
            return
        with self._lock:
            if self._closing:
                return
            self._server = server
        server.serve_forever()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            server = self._server
        if server is not None:
            server.shutdown()
        else:
            self._waker.send(b"\0")
        self._thread.join(timeout=5)
        for s in (self._sock, self._wake, self._waker):
            s.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wsgi_server(sock: socket.socket, address: str, registry: CollectorRegistry) -> WSGIServer:
    """prometheus_client's WSGI app on a threading wsgiref server over ``sock`` (listening).

    Its own app rather than start_http_server: that returns its server and thread only
    since 0.17 (Debian 12 has 0.16)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    from prometheus_client import make_wsgi_app

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = sock.family

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = Server(sock.getsockname()[:2], QuietHandler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    # what HTTPServer.server_bind sets (its getfqdn, a DNS lookup, left out), then WSGI's
    server.server_name, server.server_port = address, sock.getsockname()[1]
    server.setup_environ()
    server.set_app(make_wsgi_app(registry))
    return server


def serve_metrics(metrics: Metrics, enabled: bool, address: str, port: int) -> MetricsServer | None:
    """Start the endpoint as configured (``[metrics]``), or None when disabled."""
    if not enabled:
        return None
    try:
        return MetricsServer(metrics, address, port)
    except OSError as exc:
        raise OSError(exc.errno, f"metrics endpoint {address}:{port}: {exc.strerror}") from None
