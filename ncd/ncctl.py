"""ncctl: attach and detach ncvifs through xenstore; list and stats from the daemon.

::

    ncctl attach DOMAIN [VIFSPEC ...] [--devid N] [--mac MAC] [--mtu N]
                 [--bridge BR | --switch NAME] [--trunk] [--ip ADDRS] [--rate RATE]
                 [--vifname NAME] [--backend DOMAIN]
    ncctl detach DOMAIN DEVID|MAC [--force] [--timeout S] [--backend DOMAIN]
    ncctl list [--json] [--xl [DOMAIN ...] [--backend DOMAIN]]
    ncctl stats [--json]

DOMAIN is a name or a domid (:mod:`ncd.domains`); VIFSPEC is xl's
(``mac=...,bridge=...,rate=100Mb/s``, :mod:`ncd.vifspec`).

attach/detach work with the daemons down (they pick the entries up when they
start); list/stats ask the backend daemon over its control socket
(``--socket``, default ``$NCD_RUNTIME_DIR/ncd.sock`` else ``/run/ncd/ncd.sock``).
Errors are one line on stderr and exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import domains, layout, parse, vifspec
from .control import ControlClient, ControlError, DaemonNotRunning
from .layout import AttachError, Store
from .parse import BadEntry, Rate
from .xenbus import BadPeerState, XenbusState, parse_state

StoreFactory = Callable[[], Store]


class CliError(Exception):
    """Shown as ``ncctl: error: <message>``, exit status 1."""


def open_xenstore() -> Store:
    try:
        from .xen.xenstore import XenStore
    except ImportError as exc:
        raise CliError(f"xenstore bindings unavailable: {exc}") from None
    try:
        return XenStore()  # type: ignore[return-value]
    except OSError as exc:
        raise CliError(f"cannot connect to xenstore: {exc}") from None


def _devid(text: str) -> int:
    try:
        return parse.devid("devid", text)
    except BadEntry as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _switch(text: str) -> str:
    try:
        return parse.switch_name("switch", text)
    except BadEntry as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ifname(text: str) -> str:
    try:
        return parse.ifname("vifname", text)
    except BadEntry as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> Rate:
    try:
        return vifspec.parse_rate("rate", text)
    except BadEntry as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ips(text: str) -> tuple[str, ...]:
    try:
        return parse.ip_list("ip", text)
    except BadEntry as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ncctl",
        description="Manage ncd virtual interfaces.",
        epilog="DOMAIN is a domain name or a domid, as with xl.",
    )
    p.add_argument("--socket", help="daemon control socket")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser(
        "attach",
        help="attach a new ncvif to a domain (like xl network-attach)",
        description="Attach a new ncvif. VIFSPEC is xl's vifspec (xl-network-configuration(5)):"
        " key=value items separated by commas or given as separate arguments: mac, bridge, "
        "ip (space-separated), rate (RATE/s[@INTERVAL]), vifname, mtu, backend, devid, and "
        "ncd's switch=NAME and trunk; type=vif, model and accel are ignored (as xl does for "
        "a paravirtual vif), script takes only vif-bridge, any other key is an error. A "
        "setting given twice, or both as a flag and in VIFSPEC, is an error.",
    )
    a.add_argument("domain", metavar="DOMAIN", help="the guest (frontend): a name or a domid")
    a.add_argument(
        "vifspec",
        nargs="*",
        metavar="VIFSPEC",
        help="xl vifspec items, e.g. 'mac=00:16:3e:00:00:01,bridge=xenbr0,rate=100Mb/s'",
    )
    a.add_argument("--devid", type=_devid, help="device number (default: the next free one)")
    a.add_argument("--mac", help="the guest's MAC (default: a random 00:16:3e:xx:xx:xx)")
    a.add_argument("--mtu", type=int, help=f"MTU (default {layout.MTU_DEFAULT})")
    where = a.add_mutually_exclusive_group()
    where.add_argument("--bridge", help="put the backend's TAP into this bridge")
    where.add_argument(
        "--switch",
        type=_switch,
        help="make the vif a port of the backend daemon's in-daemon switch NAME (no TAP)",
    )
    a.add_argument(
        "--trunk",
        action="store_const",
        const=True,
        default=None,
        help="the vif carries other domains' frames (a driver domain's uplink): no "
        "anti-spoofing lock on its source MAC/IP",
    )
    a.add_argument(
        "--ip",
        type=_ips,
        metavar="ADDRS",
        help="the guest's own IPv4/IPv6 addresses, comma-separated: its frames must come "
        "from them (ARP, IPv4, IPv6 and neighbour discovery)",
    )
    a.add_argument(
        "--rate",
        type=_rate,
        metavar="RATE",
        help="limit the guest's transmit rate, as xl's rate= "
        "(RATE/s[@INTERVAL], e.g. 100Mb/s or 1MB/s@20ms)",
    )
    a.add_argument(
        "--vifname",
        type=_ifname,
        metavar="NAME",
        help="the backend's TAP name (default ncvif<domid>.<devid>)",
    )
    a.add_argument(
        "--backend",
        metavar="DOMAIN",
        help="backend domain (name or domid), as libxl's backend= (default 0: dom0)",
    )
    d = sub.add_parser("detach", help="close and remove an ncvif (like xl network-detach)")
    d.add_argument("domain", metavar="DOMAIN", help="the guest (frontend): a name or a domid")
    d.add_argument("device", metavar="DEVID|MAC", help="the device: its number or its MAC")
    d.add_argument(
        "--force",
        action="store_true",
        help="remove the entries even if the backend does not close in time",
    )
    d.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for Closed")
    d.add_argument(
        "--backend", metavar="DOMAIN", default="0", help="backend domain, name or domid (default 0)"
    )
    ls = sub.add_parser("list", help="list from the daemon")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument(
        "--xl",
        action="store_true",
        help="xl network-list's columns from xenstore (Idx, BE, Mac Addr., handle, state, "
        "evt-ch, ring-ref, BE-path), then ncd's STATE and IFNAME from the daemon",
    )
    ls.add_argument(
        "domains",
        nargs="*",
        metavar="DOMAIN",
        help="with --xl: only these guests (default: every one)",
    )
    ls.add_argument(
        "--backend",
        metavar="DOMAIN",
        default="0",
        help="with --xl: the backend domain whose vifs to list (default 0)",
    )
    st = sub.add_parser("stats", help="stats from the daemon")
    st.add_argument("--json", action="store_true", help="print JSON")
    return p


# ---------------------------------------------------------------- commands

# the attach flags that set a vifspec key (``--ip`` sets ``ips``)
_FLAG_KEYS = (
    "mac",
    "bridge",
    "switch",
    "trunk",
    "ip",
    "rate",
    "vifname",
    "mtu",
    "backend",
    "devid",
)


def merged_options(args: argparse.Namespace) -> vifspec.VifOptions:
    """The vifspec's settings and the flags' in one; a setting given both ways is an error."""
    spec = vifspec.parse_vifspec(args.vifspec)
    changes: dict[str, Any] = {}
    for key in _FLAG_KEYS:
        flag = getattr(args, key)
        if flag is None:
            continue
        if key in spec.given():
            raise CliError(f"{key}: given both as --{key} and in the vifspec")
        changes["ips" if key == "ip" else key] = flag
    return dataclasses.replace(spec, **changes).checked()


def cmd_attach(args: argparse.Namespace, store: Store, out: TextIO, err: TextIO) -> None:
    opts = merged_options(args)
    frontend = domains.resolve(store, args.domain)
    spec = vifspec.attach(store, frontend, opts)
    for note in opts.notes:
        err.write(f"ncctl: note: {note}\n")
    extra = f" bridge {spec.bridge}" if spec.bridge else ""
    if spec.trunk:
        extra += " trunk"
    if spec.ips:
        extra += f" ip {','.join(spec.ips)}"
    if opts.rate is not None:
        r = opts.rate
        extra += f" rate {r.bytes} bytes per {r.usec} us"
    port = (
        f"port of switch {spec.switch}"
        if spec.switch
        else opts.vifname or layout.backend_ifname(spec.frontend, spec.devid)
    )
    backend = f" backend {spec.backend}" if spec.backend else ""
    out.write(
        f"attached domain {spec.frontend} devid {spec.devid} mac {spec.mac} "
        f"mtu {spec.mtu}{extra}{backend} ({port})\n"
    )


def resolve_detach(args: argparse.Namespace, store: Store) -> None:
    """DOMAIN, DEVID|MAC and --backend as domids and a devid (``args.domid`` ...)."""
    args.domid = domains.resolve(store, args.domain)
    args.backend = domains.resolve(store, args.backend, "backend")
    if ":" not in args.device:
        args.devid = parse.devid("devid", args.device)
        return
    mac = parse.mac("mac", args.device)
    for fe, devid in layout.list_backend_devices(store, args.backend):
        raw = layout.read_optional(store, f"{layout.backend_dir(args.backend, fe, devid)}/mac")
        if fe == args.domid and raw is not None and raw.decode("ascii", "replace").lower() == mac:
            args.devid = devid
            return
    raise CliError(f"domain {args.domid} has no {layout.DEVICE_KIND} with mac {mac}")


def _backend_state(store: Store, path: str) -> XenbusState | None:
    raw = layout.read_optional(store, f"{path}/state")
    if raw is None:
        return None
    try:
        return parse_state(raw)
    except BadPeerState:
        return XenbusState.UNKNOWN


def cmd_detach(
    args: argparse.Namespace,
    store: Store,
    out: TextIO,
    socket_path: str | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    be_dir = layout.backend_dir(args.backend, args.domid, args.devid)
    before = _backend_state(store, be_dir)
    fe_dir = layout.frontend_dir(args.domid, args.devid)
    if before is None and layout.read_optional(store, f"{fe_dir}/backend-id") is not None:
        # Half a device: its backend directory went (the backend's domain was destroyed,
        # or a hostile backend removed it) and the frontend's stayed. Nobody is left to
        # close it, so removing what is left is the whole detach.
        layout.remove_entries(store, args.backend, args.domid, args.devid)
        out.write(
            f"detached domain {args.domid} devid {args.devid}: removed "
            f"(its backend directory {be_dir} was already gone)\n"
        )
        return
    layout.request_detach(store, args.backend, args.domid, args.devid)
    running = True
    try:
        with ControlClient(socket_path, timeout=2) as c:
            c.call("ping")
    except DaemonNotRunning:
        running = False
    except ControlError:
        pass  # something listens: treat it as running and wait for xenstore
    how = "closed"
    if not running or before in (XenbusState.CLOSED, XenbusState.UNKNOWN):
        how = "removed (backend daemon not running)" if not running else "removed"
    else:
        deadline = clock() + args.timeout
        while True:
            state = _backend_state(store, be_dir)
            if state is None or state == XenbusState.CLOSED:
                break
            if clock() >= deadline:
                if not args.force:
                    label = state.label if state is not None else "gone"
                    raise CliError(
                        f"backend did not close domain {args.domid} devid {args.devid} within "
                        f"{args.timeout:g}s (state {label}); retry, or use --force"
                    )
                how = "removed by force"
                break
            sleep(0.05)
    layout.remove_entries(store, args.backend, args.domid, args.devid)
    out.write(f"detached domain {args.domid} devid {args.devid}: {how}\n")


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def cmd_list(args: argparse.Namespace, client: ControlClient, out: TextIO) -> None:
    result = client.call("list")
    if args.json:
        out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return
    rows = [["DOMID", "DEVID", "STATE", "IFNAME", "MAC", "MTU", "BRIDGE"]]
    for v in _vifs(result):
        rows.append(
            [
                str(v.get("domid", "?")),
                str(v.get("devid", "?")),
                str(v.get("state", "?")),
                str(v.get("ifname", "-")),
                str(v.get("mac", "-")),
                str(v.get("mtu", "-")),
                str(v.get("bridge") or "-"),
            ]
        )
    _table(rows, out)
    # IFNAME is "switch:NAME" for a vif that is a port of an in-daemon switch (no TAP)


def cmd_stats(args: argparse.Namespace, client: ControlClient, out: TextIO) -> None:
    result = client.call("stats")
    if args.json:
        out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return
    rows = [
        [
            "DOMID",
            "DEVID",
            "STATE",
            "TX_FRAMES",
            "TX_BYTES",
            "RX_FRAMES",
            "RX_BYTES",
            "DROPS",
            "RING_FULL",
            "NOTIFY_TX",
            "NOTIFY_RX",
            "RATE_WAITS",
        ]
    ]
    for v in _vifs(result):
        drops = v.get("drops") or {}
        ndrops = sum(n for n in drops.values() if isinstance(n, int))
        rows.append(
            [
                str(v.get(k, "?"))
                for k in (
                    "domid",
                    "devid",
                    "state",
                    "frames_tx",
                    "bytes_tx",
                    "frames_rx",
                    "bytes_rx",
                )
            ]
            + [
                str(ndrops),
                str(v.get("ring_full_waits", 0)),
                str(v.get("notifications_sent", 0)),
                str(v.get("notifications_received", 0)),
                str(v.get("rate_limited_frames", 0)),
            ]
        )
    _table(rows, out)
    _switch_stats(result, out)
    failures = result.get("handshake_failures") if isinstance(result, dict) else None
    if isinstance(failures, dict) and any(failures.values()):
        out.write(
            "handshake failures: "
            + ", ".join(f"{k} {n}" for k, n in sorted(failures.items()) if n)
            + "\n"
        )


def _switch_stats(result: Any, out: TextIO) -> None:
    """Per switch: forwarded frames/bytes by (origin, destination) domain; port drops
    by reason are in the vif rows (``--json`` has each reason)."""
    switches = result.get("switches") if isinstance(result, dict) else None
    if not isinstance(switches, list):
        return
    for sw in switches:
        if not isinstance(sw, dict):
            continue
        stops = sw.get("port_stops") or {}
        extra = ", ".join(f"{k} {n}" for k, n in sorted(stops.items()) if n)
        out.write(
            f"switch {sw.get('name', '?')}: {sw.get('ports', '?')} ports, "
            f"forward_copy {sw.get('forward_copy', '?')}"
            + (f", ports stopped: {extra}" if extra else "")
            + "\n"
        )
        rows = [["  ORIGIN", "DESTINATION", "FRAMES", "BYTES"]]
        for f in sw.get("forwarded") or []:
            if isinstance(f, dict):
                rows.append(
                    [
                        f"  {f.get('origin', '?')}",
                        str(f.get("destination", "?")),
                        str(f.get("frames", "?")),
                        str(f.get("bytes", "?")),
                    ]
                )
        if len(rows) > 1:
            _table(rows, out)


def _xl_number(store: Store, path: str, check: Callable[[str, bytes], int]) -> str:
    """A value the frontend wrote, as xl shows it: -1 when absent; ``?`` when invalid."""
    raw = layout.read_optional(store, path)
    if raw is None:
        return "-1"
    try:
        return str(check(path, raw))
    except BadEntry:
        return "?"


def _state_number(key: str, raw: bytes) -> int:
    return parse.uint(key, raw, 0, 7)


def cmd_list_xl(args: argparse.Namespace, store: Store, out: TextIO) -> None:
    """xl network-list's columns, read from xenstore as libxl reads them (the frontend's
    state, its event channel and ring: an ncvif's vchan has one ring-ref, the control page
    that grants both rings, instead of netif's tx-/rx-ring-ref), then ncd's own."""
    be = domains.resolve(store, args.backend, "backend")
    only = {domains.resolve(store, d) for d in args.domains}
    ncd: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        with ControlClient(args.socket, timeout=2) as client:
            ncd = {(v.get("domid"), v.get("devid")): v for v in _vifs(client.call("list"))}
    except DaemonNotRunning:
        pass
    rows = [
        [
            "Dom",
            "Idx",
            "BE",
            "Mac Addr.",
            "handle",
            "state",
            "evt-ch",
            "ring-ref",
            "BE-path",
            "STATE",
            "IFNAME",
        ]
    ]
    for fe, devid in layout.list_backend_devices(store, be):
        if only and fe not in only:
            continue
        be_dir = layout.backend_dir(be, fe, devid)
        queue = layout.queue_dir(fe, devid, 0)
        mac = layout.read_optional(store, f"{be_dir}/mac")
        v = ncd.get((fe, devid), {})
        rows.append(
            [
                str(fe),
                str(devid),
                str(be),
                mac.decode("ascii", "replace") if mac is not None else "-",
                str(devid),
                _xl_number(store, f"{layout.frontend_dir(fe, devid)}/state", _state_number),
                _xl_number(store, f"{queue}/event-channel", parse.evtchn_port),
                _xl_number(store, f"{queue}/ring-ref", parse.gref),
                be_dir,
                str(v.get("state", "-")),
                str(v.get("ifname", "-")),
            ]
        )
    _table(rows, out)


def _vifs(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, dict) or not isinstance(result.get("vifs"), list):
        raise CliError("daemon sent an unexpected reply")
    return [v for v in result["vifs"] if isinstance(v, dict)]


# ---------------------------------------------------------------- main


def main(
    argv: Sequence[str] | None = None,
    *,
    store_factory: StoreFactory | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
    factory = store_factory or open_xenstore
    try:
        if args.cmd == "list" and (args.domains or args.backend != "0") and not args.xl:
            raise CliError("DOMAIN and --backend are for list --xl")
        if args.cmd == "list" and args.xl and args.json:
            raise CliError("list: --xl prints xl's table; --json prints the daemon's list")
        if args.cmd in ("attach", "detach") or getattr(args, "xl", False):
            store = factory()
            try:
                if args.cmd == "attach":
                    cmd_attach(args, store, out, err)
                elif args.cmd == "detach":
                    resolve_detach(args, store)
                    cmd_detach(args, store, out, args.socket)
                else:
                    cmd_list_xl(args, store, out)
            finally:
                close = getattr(store, "close", None)
                if callable(close) and store_factory is None:
                    close()
        else:
            with ControlClient(args.socket) as client:
                (cmd_list if args.cmd == "list" else cmd_stats)(args, client, out)
    except (CliError, AttachError, BadEntry, ControlError) as exc:
        err.write(f"ncctl: error: {exc}\n")
        return 1
    except OSError as exc:
        err.write(f"ncctl: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
