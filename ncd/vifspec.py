"""xl's vifspec (``xl-network-configuration(5)``) as ncd understands it, and xl's ``rate``.

A vifspec is a comma-separated list of ``key=value`` pairs and flags, as in an xl domain
config's ``vif = [ '...' ]`` or ``xl network-attach DOMAIN key=value ...`` (several
arguments, each itself a vifspec, are one list)::

    mac=00:16:3e:00:00:01,bridge=xenbr0,rate=100Mb/s

Keys, as xl reads them (values are checked with :mod:`ncd.parse`):

* ``mac``, ``bridge``, ``ip`` (space-separated addresses), ``vifname`` (the backend's TAP
  name), ``mtu``, ``devid``, ``backend`` (a domain name or domid), ``rate``
  (``RATE/s[@INTERVAL]``, see :func:`parse_rate`);
* ncd's own: ``switch=NAME`` (a port of the backend daemon's switch) and the flag
  ``trunk`` (or ``trunk=0|1``);
* accepted and ignored, with a note, where xl itself ignores them for a paravirtual
  vif, which is all an ncvif ever is: ``type=vif``, ``model=...`` (only for an
  emulated NIC), ``accel`` (xl: "not supported");
* refused, naming the key: ``type=ioemu`` (an emulated NIC), ``script`` other than
  ``vif-bridge`` (ncd runs no hotplug script: it does what vif-bridge does itself),
  ``gatewaydev``/``netdev`` (vif-route), ``forwarddev`` and ``colo_*`` (COLO), and any
  key xl does not know.

Where ncd is stricter than xl: a key given twice is an error (xl keeps the last), an
empty value is an error, and a number with a leading zero in ``rate`` is an error (xl's
strtoull reads it as octal, silently).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from . import domains, layout, parse
from .layout import Store
from .parse import BadEntry, Rate

UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1
RATE_INTERVAL_DEFAULT_US = 50_000  # xl: "The default is 50ms"

# libxlu_vif.c's regular expressions, as xl matches them (POSIX ERE)
_BYTES_PER_SEC_RE = re.compile(r"([0-9]+)([GMK]?)([Bb])/s")
_INTERVAL_RE = re.compile(r"([0-9]+)([mu]?)(s?)")
_NCD_TAP_RE = re.compile(r"ncvif\d+\.\d+")  # layout.backend_ifname's names
_UNIT = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}
_TIME_US = {"": 1_000_000, "m": 1000, "u": 1}  # no suffix, or "s": seconds

RATE_FORM = (
    "RATE/s[@INTERVAL]: RATE a number with B, KB, MB, GB (bytes) or b, Kb, Mb, Gb (bits); "
    "INTERVAL a number with s, ms or us (default 50ms)"
)


def _xl_number(key: str, digits: str, what: str, value: str) -> int:
    """A number as strtoull(..., 0) reads the digits xl's regex let through: 1..UINT32_MAX."""
    if len(digits) > 1 and digits[0] == "0":
        raise BadEntry(
            f"{key}: {value!r}: {what} {digits} has a leading 0 (xl would read it as octal)"
        )
    n = int(digits)
    if not 0 < n <= UINT32_MAX:
        raise BadEntry(f"{key}: {value!r}: {what} {n} out of range 1..{UINT32_MAX}")
    return n


def parse_rate(key: str, value: str) -> Rate:
    """``RATE/s[@INTERVAL]`` exactly as libxlu's xlu_vif_parse_rate computes it.

    RATE's K/M/G are powers of 1000; bits are divided by 8 after the unit is applied
    (integer division); INTERVAL without a unit is in seconds; bytes per interval is
    ``bytes_per_sec * interval_usecs // 1000000``. So ``100Mb/s`` is 625000 bytes per
    50000 us, and ``1MB/s@20ms`` 20000 bytes per 20000 us.
    """
    rate, at, interval = value.partition("@")
    if not rate:
        raise BadEntry(f"{key}: no rate specified in {value!r} ({RATE_FORM})")
    m = _BYTES_PER_SEC_RE.fullmatch(rate)
    if m is None:
        raise BadEntry(f"{key}: invalid rate {rate!r} ({RATE_FORM})")
    bytes_per_sec = _xl_number(key, m.group(1), "rate", value) * _UNIT[m.group(2)]
    if m.group(3) == "b":
        bytes_per_sec //= 8
    interval_usecs = RATE_INTERVAL_DEFAULT_US
    if at:
        mi = _INTERVAL_RE.fullmatch(interval)
        if mi is None:
            raise BadEntry(f"{key}: invalid replenishment interval {interval!r} ({RATE_FORM})")
        interval_usecs = _xl_number(key, mi.group(1), "interval", value) * _TIME_US[mi.group(2)]
        if interval_usecs > UINT32_MAX:
            raise BadEntry(
                f"{key}: {value!r}: interval {interval_usecs} us out of range 1..{UINT32_MAX}"
            )
    if bytes_per_sec > UINT64_MAX // interval_usecs:
        raise BadEntry(f"{key}: {value!r}: rate overflow")
    return Rate(bytes_per_sec * interval_usecs // 1_000_000, interval_usecs)


@dataclass(frozen=True)
class VifOptions:
    """What a vifspec says; None (or empty) where it says nothing."""

    mac: str | None = None
    bridge: str | None = None
    ips: tuple[str, ...] = ()
    rate: Rate | None = None
    vifname: str | None = None
    mtu: int | None = None
    backend: str | None = None  # a domain name or a domid, resolved by the caller
    devid: int | None = None
    switch: str | None = None
    trunk: bool | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # keys accepted and ignored

    def checked(self) -> VifOptions:
        """Self, if its keys go together (BadEntry names the one that does not)."""
        if self.switch is not None and self.bridge is not None:
            raise BadEntry("switch: a vif is a switch port or a TAP in a bridge, not both")
        if self.switch is not None and self.vifname is not None:
            raise BadEntry("vifname: a switch port has no TAP to name")
        return self

    def given(self) -> set[str]:
        """The keys this spec sets (``ip`` for ``ips``)."""
        out = {
            f.name
            for f in fields(self)
            if f.name not in ("ips", "notes") and getattr(self, f.name) is not None
        }
        return out | ({"ip"} if self.ips else set())


# the keys ncd takes, in xl-network-configuration(5)'s words (the last four: see above)
KEYS = tuple(
    "mac bridge ip rate vifname mtu backend devid switch trunk type model accel script".split()
)
_REFUSED = {
    "gatewaydev": "vif-route's gateway device: ncd does not route, it bridges or switches",
    "netdev": "vif-route's gateway device (xl's deprecated name of gatewaydev): "
    "ncd does not route, it bridges or switches",
    "forwarddev": "COLO is not supported by ncd",
}


def _domain_ref(key: str, value: str) -> str:
    """A domain name or domid as xl takes one (a name is any text xenstore can hold)."""
    text = parse.text(key, value, max_len=parse.VALUE_MAX)
    if text.isascii() and text.isdigit():
        parse.domid(key, text)
    return text


def _flag(key: str, value: str | None) -> bool:
    if value is None:
        return True
    return parse.flag(key, value)


def split(words: Iterable[str]) -> list[tuple[str, str | None]]:
    """``(key, value)`` of every item, value None for a flag; as xl tokenises a vif entry
    (strtok on ',': empty items vanish, leading spaces are skipped)."""
    out: list[tuple[str, str | None]] = []
    for word in words:
        for item in word.split(","):
            item = item.lstrip(" ")
            if not item:
                continue
            key, eq, value = item.partition("=")
            out.append((key, value if eq else None))
    return out


def parse_vifspec(words: Iterable[str]) -> VifOptions:
    """Parse one vifspec (given as one or more words); :class:`BadEntry` names the key."""
    values: dict[str, object] = {}
    notes: list[str] = []
    seen: set[str] = set()
    for key, value in split(words):
        where = f"vifspec: {key}"
        if key.startswith("colo_"):
            raise BadEntry(f"{where}: COLO is not supported by ncd")
        if key in _REFUSED:
            raise BadEntry(f"{where}: {_REFUSED[key]}")
        if key not in KEYS:
            raise BadEntry(f"vifspec: unknown key {key!r} (ncd knows {', '.join(KEYS)})")
        if key in seen:
            raise BadEntry(f"{where}: given twice")
        seen.add(key)
        if key == "trunk":
            values["trunk"] = _flag(where, value)
            continue
        if key == "accel":
            notes.append("accel ignored (xl: not supported)")
            continue
        if value is None:
            raise BadEntry(f"{where}: needs a value ({key}=...)")
        if value == "":
            raise BadEntry(f"{where}: empty value")
        if key == "mac":
            values["mac"] = parse.mac(where, value)
        elif key == "bridge":
            values[key] = parse.ifname(where, value)
        elif key == "vifname":
            values[key] = parse.ifname(where, value)
            if _NCD_TAP_RE.fullmatch(value):
                raise BadEntry(
                    f"{where}: {value} has the form of ncd's own TAP names "
                    "(ncvif<domid>.<devid>): another vif's, or the default"
                )
        elif key == "ip":
            values["ips"] = parse.ip_list(where, value)
        elif key == "rate":
            values["rate"] = parse_rate(where, value)
        elif key == "mtu":
            values["mtu"] = parse.mtu(where, value)
        elif key == "devid":
            values["devid"] = parse.devid(where, value)
        elif key == "backend":
            values["backend"] = _domain_ref(where, value)
        elif key == "switch":
            values["switch"] = parse.switch_name(where, value)
        elif key == "type":
            if value == "ioemu":
                raise BadEntry(
                    f"{where}: ioemu is an emulated NIC; an ncvif is paravirtual only (type=vif)"
                )
            if value != "vif":
                raise BadEntry(f"{where}: {value!r} is not vif or ioemu")
            notes.append("type=vif: an ncvif is always a paravirtual device")
        elif key == "model":
            notes.append(f"model={value} ignored (only an emulated NIC has a model)")
        elif key == "script" and value.rsplit("/", 1)[-1] != "vif-bridge":
            raise BadEntry(
                f"{where}: ncd runs no hotplug script (it joins the bridge "
                f"itself, as vif-bridge does): {value!r} is not vif-bridge"
            )
    return VifOptions(**values, notes=tuple(notes)).checked()  # type: ignore[arg-type]


# ---------------------------------------------------------------- writing it


def random_mac() -> str:
    """A MAC in Xen's OUI 00:16:3e, as libxl picks one (its 4th byte below 0x80)."""
    return _xen_mac(os.urandom(3))  # what secrets.token_bytes is


def stable_mac(name: str, devid: int) -> str:
    """The MAC of a declared vif without ``mac``: libxl's form, from a hash of the domain's
    name and the devid, so the guest keeps its MAC across reboots (libxl keeps the one it
    generated in the domain's stored config for the same reason)."""
    import hashlib  # here: OpenSSL's libcrypto is ~3 MB of RSS a frontend need not map

    return _xen_mac(hashlib.sha256(f"{name}/{devid}".encode()).digest()[:3])


def _xen_mac(r: bytes) -> str:
    return f"{layout.XEN_OUI}:{r[0] & 0x7F:02x}:{r[1]:02x}:{r[2]:02x}"


def attach(
    store: Store,
    frontend: int,
    opts: VifOptions,
    *,
    backend: int | None = None,
    mac: str | None = None,
) -> layout.VifSpec:
    """Write the entries of a vif as ``opts`` says (one transaction, :func:`layout.attach`).

    ``backend``: the backend's domid when the caller has it (a declared vif: the daemon
    itself), else ``opts.backend`` resolved by name or domid, else 0. ``mac``: used when
    ``opts`` has none, else a random one.
    """
    if backend is None:
        backend = 0 if opts.backend is None else domains.resolve(store, opts.backend, "backend")
    if opts.vifname is not None:
        for fe, devid in layout.list_backend_devices(store, backend):
            if layout.read_vifname(store, backend, fe, devid) == opts.vifname:
                raise layout.AttachError(
                    f"vifname {opts.vifname} is taken by domain {fe} devid {devid}"
                )
    return layout.attach(
        store,
        backend=backend,
        frontend=frontend,
        mac=opts.mac or mac or random_mac(),
        devid=opts.devid,
        mtu=opts.mtu if opts.mtu is not None else layout.MTU_DEFAULT,
        bridge=opts.bridge,
        switch=opts.switch,
        trunk=bool(opts.trunk),
        ips=opts.ips,
        extra=layout.libxl_entries(
            rate=opts.rate.entry if opts.rate is not None else None, vifname=opts.vifname
        ),
    )
