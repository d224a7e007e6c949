"""Where an ncvif lives in xenstore, what ``ncctl attach`` writes, and reading it back.

Contract (the design notes' "xenstore layout"; the negotiation keys each end adds to
its own directory are in docs/protocol.md, "Negotiation")::

    /local/domain/<be>/backend/ncvif/<fe>/<devid>/   frontend, frontend-id, online, state,
                                                      mac, mtu, handle; optional: bridge or
                                                      switch, trunk, ip
    /local/domain/<fe>/device/ncvif/<devid>/         backend, backend-id, state, mac, mtu,
                                                      handle

Permissions as libxl sets them for a vif: the backend directory is owned by the
backend with read for the frontend (``n<be> r<fe>``); the frontend directory is
owned by the frontend with read for the backend (``n<fe> r<be>``).

The store is injected (mirage-net-xen style): anything with the methods of
:class:`Store` works, e.g. :class:`ncd.xen.xenstore.XenStore` or an in-memory
fake. Values written by another domain are untrusted: each is read through
:mod:`ncd.parse`, which raises :class:`BadEntry` (a ValueError) naming the key.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ncd import parse
from ncd.parse import IFNAMSIZ, BadEntry
from ncd.perms import Perm
from ncd.xenbus import BadPeerState, XenbusState, parse_state

DEVICE_KIND = "ncvif"
MTU_DEFAULT = 1500
XEN_OUI = "00:16:3e"

R = TypeVar("R")


class StoreOps(Protocol):
    """The store operations layout uses (in or outside a transaction)."""

    def read_bytes(self, path: str) -> bytes: ...
    def write(self, path: str, value: str | bytes) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def rm(self, path: str, missing_ok: bool = False) -> None: ...
    def directory(self, path: str) -> list[str]: ...
    def get_perms(self, path: str) -> Sequence[tuple[int, str]]: ...
    def set_perms(self, path: str, perms: Sequence[Perm | tuple[int, str]]) -> None: ...


class Store(StoreOps, Protocol):
    """A xenstore connection: the operations plus transactions."""

    def run_in_transaction(self, fn: Callable[..., R]) -> R: ...


class AttachError(Exception):
    """``ncctl attach`` / ``detach`` refused: the message is the one line to show."""


# ---------------------------------------------------------------- paths


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def backend_root(be: int) -> str:
    return f"{domain_path(be)}/backend/{DEVICE_KIND}"


def backend_dir(be: int, fe: int, devid: int) -> str:
    return f"{backend_root(be)}/{fe}/{devid}"


def frontend_root(fe: int) -> str:
    return f"{domain_path(fe)}/device/{DEVICE_KIND}"


def frontend_dir(fe: int, devid: int) -> str:
    return f"{frontend_root(fe)}/{devid}"


def queue_dir(fe: int, devid: int, queue: int) -> str:
    """Where the frontend (vchan server) publishes queue ``queue``'s vchan."""
    return f"{frontend_dir(fe, devid)}/queue-{queue}"


def backend_ifname(fe: int, devid: int) -> str:
    """The backend's TAP name for a vif: ``ncvif<domid>.<devid>`` (fits IFNAMSIZ)."""
    return f"ncvif{fe}.{devid}"


def frontend_ifname(devid: int) -> str:
    return f"nc{devid}"


# ---------------------------------------------------------------- store helpers


def read_optional(store: StoreOps, path: str) -> bytes | None:
    """The value at ``path``, or None if the node does not exist."""
    try:
        return store.read_bytes(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def list_optional(store: StoreOps, path: str) -> list[str]:
    try:
        return store.directory(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise


def state_of(raw: bytes | None) -> XenbusState | None:
    """A ``state`` value as read: Unknown when absent, None when not a state ncd accepts."""
    try:
        return parse_state(raw)
    except BadPeerState:
        return None


def read_online(store: StoreOps, base: str) -> bool:
    """The toolstack's ``online`` key under ``base``: 1 is online; absent or malformed is not."""
    try:
        return parse.flag(f"{base}/online", read_optional(store, f"{base}/online"))
    except BadEntry:
        return False


def domain_exists(store: StoreOps, domid: int) -> bool:
    return read_optional(store, domain_path(domid)) is not None


# ---------------------------------------------------------------- the entries


@dataclass(frozen=True)
class VifSpec:
    """One ncvif as the toolstack declares it."""

    backend: int
    frontend: int
    devid: int
    mac: str
    mtu: int = MTU_DEFAULT
    bridge: str | None = None
    switch: str | None = None  # a port of the backend daemon's switch, not a TAP
    trunk: bool = False  # carries other domains' frames: no anti-spoofing lock
    ips: tuple[str, ...] = ()  # the guest's own addresses (anti-spoofing)

    def __post_init__(self) -> None:
        parse.domid("backend-id", str(self.backend))
        parse.domid("frontend-id", str(self.frontend))
        parse.devid("devid", str(self.devid))
        object.__setattr__(self, "mac", parse.mac("mac", self.mac))
        parse.mtu("mtu", str(self.mtu))
        if self.bridge is not None:
            parse.bridge("bridge", self.bridge)
        if self.switch is not None:
            parse.switch_name("switch", self.switch)
            if self.bridge is not None:
                raise BadEntry("switch: a vif is a switch port or a TAP in a bridge, not both")
        if self.ips:
            object.__setattr__(self, "ips", parse.ip_list("ip", " ".join(self.ips)))
        if self.backend == self.frontend:
            raise BadEntry("frontend-id: a domain cannot be its own backend")
        name = backend_ifname(self.frontend, self.devid)
        if len(name) >= IFNAMSIZ:
            raise BadEntry(
                f"devid: {self.devid} too large for domain {self.frontend} "
                f"(interface name {name} exceeds {IFNAMSIZ - 1} characters)"
            )

    @property
    def backend_dir(self) -> str:
        return backend_dir(self.backend, self.frontend, self.devid)

    @property
    def frontend_dir(self) -> str:
        return frontend_dir(self.frontend, self.devid)


def backend_entries(spec: VifSpec) -> dict[str, str]:
    entries = {
        "frontend": spec.frontend_dir,
        "frontend-id": str(spec.frontend),
        "online": "1",
        "state": str(int(XenbusState.INITIALISING)),
        "mac": spec.mac,
        "mtu": str(spec.mtu),
        "handle": str(spec.devid),
    }
    if spec.bridge is not None:
        entries["bridge"] = spec.bridge
    if spec.switch is not None:
        entries["switch"] = spec.switch
    if spec.trunk:
        entries["trunk"] = "1"
    if spec.ips:
        entries["ip"] = " ".join(spec.ips)  # space-separated, as libxl writes it
    return entries


def libxl_entries(rate: str | None = None, vifname: str | None = None) -> dict[str, str]:
    """Optional backend keys named and written as libxl writes them for a vif: ``rate``
    ("BYTES,USECS", :attr:`ncd.vifspec.Rate.entry`) and ``vifname`` (the TAP's name)."""
    out = {}
    if rate is not None:
        out["rate"] = rate
    if vifname is not None:
        out["vifname"] = parse.ifname("vifname", vifname)
    return out


def read_vifname(store: StoreOps, be: int, fe: int, devid: int) -> str | None:
    """The backend entry's ``vifname`` (None when absent or empty); BadEntry if invalid."""
    base = backend_dir(be, fe, devid)
    raw = read_optional(store, f"{base}/vifname")
    return None if raw in (None, b"") else parse.ifname(f"{base}/vifname", raw)


def frontend_entries(spec: VifSpec) -> dict[str, str]:
    return {
        "backend": spec.backend_dir,
        "backend-id": str(spec.backend),
        "state": str(int(XenbusState.INITIALISING)),
        "mac": spec.mac,
        "mtu": str(spec.mtu),
        "handle": str(spec.devid),
    }


def backend_perms(spec: VifSpec) -> list[Perm]:
    return [Perm(spec.backend, "n"), Perm(spec.frontend, "r")]


def frontend_perms(spec: VifSpec) -> list[Perm]:
    return [Perm(spec.frontend, "n"), Perm(spec.backend, "r")]


def used_devids(store: StoreOps, be: int, fe: int) -> set[int]:
    """Devids already taken for ``fe``: in its device dir or in ``be``'s backend dir."""
    names = set(list_optional(store, frontend_root(fe)))
    names |= set(list_optional(store, f"{backend_root(be)}/{fe}"))
    out = set()
    for name in names:
        try:
            out.add(parse.devid(f"{DEVICE_KIND}/{name}", name))
        except BadEntry:
            continue  # not ours to judge; it cannot collide with a decimal devid
    return out


def _write_dir(t: StoreOps, path: str, perms: list[Perm], entries: dict[str, str]) -> None:
    t.mkdir(path)
    t.set_perms(path, perms)  # before the keys: they inherit the directory's perms
    for key, value in entries.items():
        t.write(f"{path}/{key}", value)


def attach(
    store: Store,
    *,
    backend: int,
    frontend: int,
    mac: str,
    devid: int | None = None,
    mtu: int = MTU_DEFAULT,
    bridge: str | None = None,
    switch: str | None = None,
    trunk: bool = False,
    ips: tuple[str, ...] = (),
    extra: Mapping[str, str] | None = None,
) -> VifSpec:
    """Write both directories of a new ncvif in one transaction (as libxl does).

    ``extra``: more backend keys (:func:`libxl_entries`: ``rate``, ``vifname``).

    Raises :class:`AttachError` for an unknown frontend domain or a devid in
    use, :class:`BadEntry` for bad arguments. With ``devid`` None the next free
    one (highest + 1, as libxl) is chosen.
    """
    if devid is not None:
        parse.devid("devid", str(devid))
    if devid is None:
        # validate before touching xenstore
        VifSpec(backend, frontend, 0, mac, mtu, bridge, switch, trunk, ips)

    def txn(t: StoreOps) -> VifSpec:
        if not domain_exists(t, frontend):
            raise AttachError(f"domain {frontend} does not exist")
        if not domain_exists(t, backend):
            raise AttachError(f"backend domain {backend} does not exist")
        used = used_devids(t, backend, frontend)
        chosen = devid if devid is not None else (max(used) + 1 if used else 0)
        if chosen in used:
            raise AttachError(f"domain {frontend} already has {DEVICE_KIND} devid {chosen}")
        spec = VifSpec(backend, frontend, chosen, mac, mtu, bridge, switch, trunk, ips)
        _write_dir(t, spec.frontend_dir, frontend_perms(spec), frontend_entries(spec))
        entries = {**backend_entries(spec), **(extra or {})}
        _write_dir(t, spec.backend_dir, backend_perms(spec), entries)
        return spec

    return store.run_in_transaction(txn)


def request_detach(store: Store, be: int, fe: int, devid: int) -> None:
    """Ask the backend to close the device: ``online`` 0, backend ``state`` Closing."""
    path = backend_dir(be, fe, devid)

    def txn(t: StoreOps) -> None:
        if read_optional(t, f"{path}/state") is None:
            raise AttachError(f"domain {fe} has no {DEVICE_KIND} devid {devid}")
        t.write(f"{path}/online", "0")
        t.write(f"{path}/state", str(int(XenbusState.CLOSING)))

    store.run_in_transaction(txn)


def remove_entries(store: Store, be: int, fe: int, devid: int) -> None:
    """Remove both directories (and the per-frontend backend dir once empty)."""

    def txn(t: StoreOps) -> None:
        t.rm(backend_dir(be, fe, devid), missing_ok=True)
        t.rm(frontend_dir(fe, devid), missing_ok=True)
        parent = f"{backend_root(be)}/{fe}"
        if read_optional(t, parent) is not None and not list_optional(t, parent):
            t.rm(parent, missing_ok=True)

    store.run_in_transaction(txn)


# ---------------------------------------------------------------- reading the peer


@dataclass(frozen=True)
class BackendView:
    """What the backend daemon reads from its own directory of one device."""

    frontend: int
    devid: int
    frontend_path: str
    online: bool
    mac: str
    mtu: int
    bridge: str | None
    handle: int
    switch: str | None = None
    trunk: bool = False
    ips: tuple[str, ...] = ()


def read_backend(store: StoreOps, be: int, fe: int, devid: int) -> BackendView:
    """Read and validate ``backend/ncvif/<fe>/<devid>``; BadEntry names a bad key."""
    base = backend_dir(be, fe, devid)

    def get(key: str) -> bytes | None:
        return read_optional(store, f"{base}/{key}")

    fe_path = parse.exact(f"{base}/frontend", get("frontend"), frontend_dir(fe, devid))
    fe_id = parse.domid(f"{base}/frontend-id", get("frontend-id"))
    if fe_id != fe:
        raise BadEntry(f"{base}/frontend-id: {fe_id} does not match the directory ({fe})")
    bridge_raw, switch_raw, ip_raw = get("bridge"), get("switch"), get("ip")
    handle = parse.devid(f"{base}/handle", get("handle"))
    if handle != devid:
        raise BadEntry(f"{base}/handle: {handle} does not match the directory ({devid})")
    return BackendView(
        frontend=fe,
        devid=devid,
        frontend_path=fe_path,
        online=parse.flag(f"{base}/online", get("online")),
        mac=parse.mac(f"{base}/mac", get("mac")),
        mtu=parse.mtu(f"{base}/mtu", get("mtu")),
        bridge=None if bridge_raw in (None, b"") else parse.bridge(f"{base}/bridge", bridge_raw),
        handle=handle,
        switch=None if switch_raw in (None, b"") else parse.switch_name(f"{base}/switch",
                                                                        switch_raw),
        trunk=parse.optional_flag(f"{base}/trunk", get("trunk")),
        ips=() if ip_raw in (None, b"") else parse.ip_list(f"{base}/ip", ip_raw),
    )


@dataclass(frozen=True)
class FrontendView:
    """What the frontend daemon reads from its device directory."""

    devid: int
    backend: int
    backend_path: str
    mac: str
    mtu: int
    handle: int


def read_frontend(store: StoreOps, fe: int, devid: int) -> FrontendView:
    """Read and validate ``device/ncvif/<devid>`` of domain ``fe``."""
    base = frontend_dir(fe, devid)

    def get(key: str) -> bytes | None:
        return read_optional(store, f"{base}/{key}")

    be = parse.domid(f"{base}/backend-id", get("backend-id"))
    if be == fe:
        raise BadEntry(f"{base}/backend-id: {be} is this domain")
    be_path = parse.exact(f"{base}/backend", get("backend"), backend_dir(be, fe, devid))
    handle = parse.devid(f"{base}/handle", get("handle"))
    if handle != devid:
        raise BadEntry(f"{base}/handle: {handle} does not match the directory ({devid})")
    return FrontendView(
        devid=devid,
        backend=be,
        backend_path=be_path,
        mac=parse.mac(f"{base}/mac", get("mac")),
        mtu=parse.mtu(f"{base}/mtu", get("mtu")),
        handle=handle,
    )


def list_backend_devices(store: StoreOps, be: int) -> list[tuple[int, int]]:
    """(frontend, devid) of every ncvif under ``be``'s backend dir (bad names skipped)."""
    out: list[tuple[int, int]] = []
    root = backend_root(be)
    for fe_name in list_optional(store, root):
        try:
            fe = parse.domid(f"{root}/{fe_name}", fe_name)
        except BadEntry:
            continue
        for dev_name in list_optional(store, f"{root}/{fe_name}"):
            try:
                out.append((fe, parse.devid(f"{root}/{fe_name}/{dev_name}", dev_name)))
            except BadEntry:
                continue
    return sorted(out)


def list_frontend_devices(store: StoreOps, fe: int) -> list[int]:
    out = []
    root = frontend_root(fe)
    for name in list_optional(store, root):
        try:
            out.append(parse.devid(f"{root}/{name}", name))
        except BadEntry:
            continue
    return sorted(out)
