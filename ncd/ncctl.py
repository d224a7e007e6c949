"""ncctl: attach and detach ncvifs through xenstore; list and stats from the daemon.

::

    ncctl attach DOMID [--devid N] [--mac MAC] [--mtu N] [--bridge BR | --switch NAME]
                 [--trunk] [--ip ADDRS] [--backend DOMID]
    ncctl detach DOMID DEVID [--force] [--timeout S] [--backend DOMID]
    ncctl list [--json]
    ncctl stats [--json]

attach/detach work with the daemons down (they pick the entries up when they
start); list/stats ask the backend daemon over its control socket
(``--socket``, default ``$NCD_RUNTIME_DIR/ncd.sock`` else ``/run/ncd/ncd.sock``).
Errors are one line on stderr and exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import layout, parse
from .control import ControlClient, ControlError, DaemonNotRunning
from .layout import AttachError, Store
from .parse import BadEntry
from .xenbus import BadPeerState, XenbusState, parse_state

StoreFactory = Callable[[], Store]


class CliError(Exception):
    """Shown as ``ncctl: error: <message>``, exit status 1."""


def random_mac() -> str:
    """A MAC in Xen's OUI 00:16:3e, as libxl picks one."""
    return layout.XEN_OUI + "".join(f":{b:02x}" for b in secrets.token_bytes(3))


def open_xenstore() -> Store:
    try:
        from .xen.xenstore import XenStore
    except ImportError as exc:
        raise CliError(f"xenstore bindings unavailable: {exc}") from None
    try:
        return XenStore()  # type: ignore[return-value]
    except OSError as exc:
        raise CliError(f"cannot connect to xenstore: {exc}") from None


def _domid(text: str) -> int:
    try:
        return parse.domid("domain id", text)
    except BadEntry as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def _ips(text: str) -> tuple[str, ...]:
    try:
        return parse.ip_list("ip", text)
    except BadEntry as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncctl", description="Manage ncd virtual interfaces.")
    p.add_argument("--socket", help="daemon control socket")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attach", help="attach a new ncvif to a domain")
    a.add_argument("domid", type=_domid, help="the guest (frontend) domain")
    a.add_argument("--devid", type=_devid, help="device number (default: the next free one)")
    a.add_argument("--mac", help="the guest's MAC (default: a random 00:16:3e:xx:xx:xx)")
    a.add_argument(
        "--mtu", type=int, default=layout.MTU_DEFAULT, help=f"MTU (default {layout.MTU_DEFAULT})"
    )
    where = a.add_mutually_exclusive_group()
    where.add_argument("--bridge", help="put the backend's TAP into this bridge")
    where.add_argument(
        "--switch", type=_switch,
        help="make the vif a port of the backend daemon's in-daemon switch NAME (no TAP)",
    )
    a.add_argument(
        "--trunk", action="store_true",
        help="the vif carries other domains' frames (a driver domain's uplink): no "
        "anti-spoofing lock on its source MAC/IP",
    )
    a.add_argument(
        "--ip", type=_ips, default=(), metavar="ADDRS",
        help="the guest's own IPv4/IPv6 addresses, comma-separated: its frames must come "
        "from them (ARP, IPv4, IPv6 and neighbour discovery)",
    )
    a.add_argument(
        "--backend", type=_domid, default=0,
        help="backend domain, as libxl's backend= (default 0: dom0)",
    )
    d = sub.add_parser("detach", help="close and remove an ncvif")
    d.add_argument("domid", type=_domid, help="the guest (frontend) domain")
    d.add_argument("devid", type=_devid, help="device number")
    d.add_argument(
        "--force",
        action="store_true",
        help="remove the entries even if the backend does not close in time",
    )
    d.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for Closed")
    d.add_argument("--backend", type=_domid, default=0, help="backend domain (default 0)")
    for name in ("list", "stats"):
        s = sub.add_parser(name, help=f"{name} from the daemon")
        s.add_argument("--json", action="store_true", help="print JSON")
    return p


# ---------------------------------------------------------------- commands


def cmd_attach(args: argparse.Namespace, store: Store, out: TextIO) -> None:
    mac = args.mac if args.mac is not None else random_mac()
    spec = layout.attach(
        store,
        backend=args.backend,
        frontend=args.domid,
        mac=mac,
        devid=args.devid,
        mtu=args.mtu,
        bridge=args.bridge,
        switch=args.switch,
        trunk=args.trunk,
        ips=args.ip,
    )
    extra = f" bridge {spec.bridge}" if spec.bridge else ""
    if spec.trunk:
        extra += " trunk"
    if spec.ips:
        extra += f" ip {','.join(spec.ips)}"
    port = (
        f"port of switch {spec.switch}" if spec.switch
        else layout.backend_ifname(spec.frontend, spec.devid)
    )
    backend = f" backend {spec.backend}" if spec.backend else ""
    out.write(
        f"attached domain {spec.frontend} devid {spec.devid} mac {spec.mac} "
        f"mtu {spec.mtu}{extra}{backend} ({port})\n"
    )


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
            + (f", ports stopped: {extra}" if extra else "") + "\n"
        )
        rows = [["  ORIGIN", "DESTINATION", "FRAMES", "BYTES"]]
        for f in sw.get("forwarded") or []:
            if isinstance(f, dict):
                rows.append([f"  {f.get('origin', '?')}", str(f.get("destination", "?")),
                             str(f.get("frames", "?")), str(f.get("bytes", "?"))])
        if len(rows) > 1:
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
        if args.cmd in ("attach", "detach"):
            store = factory()
            try:
                if args.cmd == "attach":
                    cmd_attach(args, store, out)
                else:
                    cmd_detach(args, store, out, args.socket)
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
