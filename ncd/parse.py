"""Parsers for every value another domain (or the toolstack) can write into xenstore.

Each parser takes the key (for the message) and the raw value as read: ``bytes`` from
the store, ``str``, or ``None`` when the key is absent. It returns a typed value or
raises :class:`BadEntry` (a ValueError) whose message starts with the key.

Numbers are ASCII decimal digits only: no sign (not even '+'), no whitespace, no
non-ASCII digits such as '\u0663' (``str.isdigit`` alone accepts those), and a bounded
number of digits; leading zeros are allowed, as Xen's own parsers (strtoul) accept them.
"""

from __future__ import annotations

import ipaddress
import re

DOMID_FIRST_RESERVED = 0x7FF0  # xen/include/public/xen.h: DOMID_SELF and up
DOMID_MAX = DOMID_FIRST_RESERVED - 1  # the largest domid of a real domain
DEVID_MAX = 0xFFFF
MTU_MIN = 68
MTU_MAX = 65521  # tun: MAX_MTU - ETH_HLEN
IFNAMSIZ = 16
GREF_MAX = (1 << 32) - 1  # grant_ref_t is uint32_t
EVTCHN_PORT_MAX = (1 << 17) - 1  # FIFO event-channel ABI limit
IPS_MAX = 16  # addresses one vif may be locked to (anti-spoofing)
VALUE_MAX = 4096  # XENSTORE_PAYLOAD_MAX: nothing legitimate is longer
UINT_DIGITS = 10  # enough for any uint32

Raw = bytes | str | None


class BadEntry(ValueError):
    """A value that fails validation; the message names the key."""


def text(key: str, raw: Raw, max_len: int = VALUE_MAX) -> str:
    """The value as ASCII text of at most ``max_len`` characters."""
    if raw is None:
        raise BadEntry(f"{key}: missing")
    if len(raw) > max_len:
        raise BadEntry(f"{key}: value too long ({len(raw)} bytes)")
    if isinstance(raw, bytes):
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise BadEntry(f"{key}: not ASCII: {raw[:32]!r}") from None
    if not raw.isascii():
        raise BadEntry(f"{key}: not ASCII: {raw[:32]!r}")
    return raw


def uint(
    key: str, raw: Raw, lo: int, hi: int, max_digits: int = UINT_DIGITS,
    what: str = "a decimal number",
) -> int:
    """A decimal integer in [lo, hi] of 1..``max_digits`` ASCII digits, nothing else.

    ``what`` names the expected form in the message (``<key>: not <what>: <value>``).
    """
    value = raw if isinstance(raw, str) else text(key, raw)  # a str: judged digit by digit
    if not 0 < len(value) <= max_digits or not (value.isascii() and value.isdigit()):
        raise BadEntry(f"{key}: not {what}: {value[:32]!r}")
    number = int(value)
    if not lo <= number <= hi:
        raise BadEntry(f"{key}: {number} out of range {lo}..{hi}")
    return number


def domid(key: str, raw: Raw) -> int:
    """A domain id of a real domain: 0..DOMID_MAX."""
    return uint(key, raw, 0, DOMID_MAX)


def devid(key: str, raw: Raw) -> int:
    return uint(key, raw, 0, DEVID_MAX)


def mtu(key: str, raw: Raw) -> int:
    return uint(key, raw, MTU_MIN, MTU_MAX)


def gref(key: str, raw: Raw) -> int:
    """A grant reference (0 is reserved, never valid for a peer to name)."""
    return uint(key, raw, 1, GREF_MAX)


def evtchn_port(key: str, raw: Raw) -> int:
    """An event-channel port (0 is never a bound port)."""
    return uint(key, raw, 1, EVTCHN_PORT_MAX)


def flag(key: str, raw: Raw) -> bool:
    """A boolean written as exactly ``0`` or ``1``."""
    value = text(key, raw)
    if value not in ("0", "1"):
        raise BadEntry(f"{key}: expected 0 or 1, got {value[:32]!r}")
    return value == "1"


def optional_flag(key: str, raw: Raw) -> bool:
    """A ``feature-*`` style flag: absent means 0, as in netif."""
    return False if raw is None else flag(key, raw)


_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def mac(key: str, raw: Raw) -> str:
    """A unicast, non-zero MAC ``xx:xx:xx:xx:xx:xx``; returned lower case."""
    value = text(key, raw)
    if not _MAC_RE.fullmatch(value):
        raise BadEntry(f"{key}: not a MAC address (xx:xx:xx:xx:xx:xx): {value[:32]!r}")
    octets = bytes(int(x, 16) for x in value.split(":"))
    if octets[0] & 1:
        raise BadEntry(f"{key}: {value} is a multicast address")
    if octets == bytes(6):
        raise BadEntry(f"{key}: {value} is the zero address")
    return value.lower()


_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def ifname(key: str, raw: Raw) -> str:
    """A Linux interface name: 1..15 chars of [A-Za-z0-9_.-], not '.' or '..'."""
    value = text(key, raw)
    if not 0 < len(value) < IFNAMSIZ or not _IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise BadEntry(f"{key}: not an interface name: {value[:32]!r}")
    return value


VLAN_MAX = 4095  # an 802.1Q VLAN id (Open vSwitch's Port tag/trunks range)
# vif-openvswitch's NAME[.TAG][:TRUNK[:TRUNK...]] (tools/hotplug/Linux/vif-openvswitch)
_OVS_BRIDGE_RE = re.compile(r"([^.:]+)(?:\.([0-9]{1,4}))?(?::([0-9]{1,4}(?::[0-9]{1,4})*))?")


def ovs_bridge(key: str, raw: Raw) -> tuple[str, int | None, tuple[int, ...]]:
    """vif-openvswitch's ``bridge`` syntax ``NAME[.TAG][:TRUNK[:TRUNK...]]``: the Open
    vSwitch bridge, the port's VLAN tag (None: untagged) and its trunk VLANs (sorted)."""
    value = text(key, raw)
    m = _OVS_BRIDGE_RE.fullmatch(value)
    if m is None:
        raise BadEntry(f"{key}: not NAME[.TAG][:TRUNK...]: {value[:32]!r}")
    name, tag_s, trunks_s = m.groups()
    ifname(key, name)
    tag = int(tag_s) if tag_s else None
    trunks = tuple(sorted({int(x) for x in trunks_s.split(":")})) if trunks_s else ()
    if any(v > VLAN_MAX for v in (tag or 0, *trunks)):
        raise BadEntry(f"{key}: a VLAN id above {VLAN_MAX}: {value[:32]!r}")
    return name, tag, trunks


def bridge(key: str, raw: Raw) -> str:
    """A vif's ``bridge``: a Linux bridge's name (an interface name), or an Open vSwitch
    bridge in vif-openvswitch's syntax (:func:`ovs_bridge`)."""
    value = text(key, raw)
    try:
        return ifname(key, value)
    except BadEntry:
        ovs_bridge(key, value)
    return value


_SWITCH_RE = re.compile(r"[A-Za-z0-9_-]{1,15}")


def switch_name(key: str, raw: Raw) -> str:
    """An in-daemon switch's name: 1..15 chars of [A-Za-z0-9_-] (it names metrics labels
    and config sections, so no dots or spaces)."""
    value = text(key, raw)
    if not _SWITCH_RE.fullmatch(value):
        raise BadEntry(f"{key}: not a switch name: {value[:32]!r}")
    return value


def ip_list(key: str, raw: Raw) -> tuple[str, ...]:
    """libxl's ``ip`` value: IPv4/IPv6 host addresses separated by spaces (``ncctl`` also
    takes commas), at most IPS_MAX; returned normalised (``ipaddress`` compressed form)."""
    value = text(key, raw)
    words = value.replace(",", " ").split()
    if not words:
        raise BadEntry(f"{key}: no address in {value[:32]!r}")
    if len(words) > IPS_MAX:
        raise BadEntry(f"{key}: {len(words)} addresses (at most {IPS_MAX})")
    out = []
    for w in words:
        try:
            addr = ipaddress.ip_address(w)
        except ValueError:
            raise BadEntry(f"{key}: not an IPv4 or IPv6 address: {w[:48]!r}") from None
        if addr.is_multicast or addr.is_unspecified:
            raise BadEntry(f"{key}: {addr} cannot be a vif's own address")
        out.append(str(addr))
    return tuple(dict.fromkeys(out))


def exact(key: str, raw: Raw, expected: str) -> str:
    """A value (a path) that must be exactly ``expected``: a peer must not point us elsewhere."""
    value = text(key, raw)
    if value != expected:
        raise BadEntry(f"{key}: {value[:120]!r} is not {expected!r}")
    return value
