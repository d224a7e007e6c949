"""Feature negotiation (docs/protocol.md, "Negotiation"): the ``feature-*`` keys, what
one end advertises, what both then use, and the TAP offloads that follow from it.

Each end advertises what it *accepts* (receives) in its own xenstore directory; it
advertises only what its own TAP can take and produce (:func:`usable`, probed with
``TUNSETOFFLOAD``). It then receives what it advertised and sends what both ends
advertised, and :func:`tun_offload_flags` turns exactly that into the TAP's
``TUNSETOFFLOAD`` argument: the kernel hands the pump only frames the peer accepts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ncd import parse
from ncd.layout import StoreOps, read_optional

PROTOCOL_VERSION = 1  # the record format of docs/protocol.md
ETH_MIN = 14  # an Ethernet header
ETH_MAX = 65664  # 64 KiB GSO payload + Ethernet, 2 VLAN tags and an IPv6 header
PEER_VALUE_MAX = 16  # no legitimate negotiation value is longer


class Features(enum.IntFlag):
    """What a receiver accepts; the values are the C ``NCD_FEAT_*`` bits."""

    NONE = 0
    CSUM = 0x01
    GSO_TCPV4 = 0x02
    GSO_TCPV6 = 0x04
    GSO_UDP_L4 = 0x08
    ALL = 0x0F


# xenstore key (written by each end in its own directory) -> feature bit
FEATURE_KEYS: dict[str, Features] = {
    "feature-csum": Features.CSUM,
    "feature-gso-tcpv4": Features.GSO_TCPV4,
    "feature-gso-tcpv6": Features.GSO_TCPV6,
    "feature-gso-udp-l4": Features.GSO_UDP_L4,
}
KEY_PROTOCOL = "protocol-version"
KEY_VNET_HDR = "feature-vnet-hdr"
KEY_MAX_FRAME = "max-frame"
PEER_KEYS = (KEY_PROTOCOL, KEY_VNET_HDR, KEY_MAX_FRAME, *FEATURE_KEYS)

# linux/if_tun.h: TUNSETOFFLOAD bits
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20  # Linux 6.2
TUN_F_USO6 = 0x40

# what each feature lets the TAP hand us; every one of them needs TUN_F_CSUM, as in the
# kernel (GSO without checksum offload is refused), so nothing is offloaded without CSUM
_TUN_FLAGS = {
    Features.CSUM: TUN_F_CSUM,
    Features.GSO_TCPV4: TUN_F_TSO4 | TUN_F_TSO_ECN,
    Features.GSO_TCPV6: TUN_F_TSO6 | TUN_F_TSO_ECN,
    Features.GSO_UDP_L4: TUN_F_USO4 | TUN_F_USO6,
}


def tun_offload_flags(tx_features: Features | int) -> int:
    """TUNSETOFFLOAD argument for our TAP: the kernel may hand us (to send to the peer)
    only what the peer accepts. GSO needs checksum offload, as in the kernel."""
    f = Features(tx_features)
    if not f & Features.CSUM:
        return 0
    flags = 0
    for bit, tun in _TUN_FLAGS.items():
        if f & bit:
            flags |= tun
    return flags


def usable(wanted: Features, tun_accepts: Callable[[int], bool]) -> Features:
    """``wanted`` minus the features this kernel's TAP cannot offload.

    ``tun_accepts(flags)`` tries ``TUNSETOFFLOAD`` with ``flags`` (False for EINVAL,
    e.g. ``TUN_F_USO4`` before Linux 6.2). A feature we cannot hand to the TAP we do
    not advertise either: it would be negotiated and never used.
    """
    out = Features.NONE
    for bit, tun in _TUN_FLAGS.items():
        if wanted & bit and tun_accepts(TUN_F_CSUM | tun):
            out |= bit
    return out if out & Features.CSUM else Features.NONE


@dataclass(frozen=True)
class Negotiated:
    rx_features: Features  # what the peer may send us (we advertised it)
    tx_features: Features  # what we may send (both ends advertised it)
    max_frame: int  # largest Ethernet frame either way


def advertise(features: Features, max_frame: int = ETH_MAX) -> dict[str, str]:
    """The keys one end writes in its own xenstore directory."""
    if not ETH_MIN <= max_frame <= ETH_MAX:
        raise ValueError(f"max_frame {max_frame} outside {ETH_MIN}..{ETH_MAX}")
    keys = {KEY_PROTOCOL: str(PROTOCOL_VERSION), KEY_VNET_HDR: "1",
            KEY_MAX_FRAME: str(max_frame)}
    keys.update({k: "1" if features & bit else "0" for k, bit in FEATURE_KEYS.items()})
    return keys


def negotiate(ours: Features, our_max_frame: int, peer: Mapping[str, str]) -> Negotiated:
    """Combine our offer with the peer's keys (untrusted strings) -> pump settings.

    A missing feature key means "not supported", as in netif. Raises BadEntry (a
    ValueError) naming the key for a protocol version we do not speak, a missing vnet
    header, or a malformed value.
    """
    ver = parse.uint(KEY_PROTOCOL, peer.get(KEY_PROTOCOL), 0, 9999, max_digits=4)
    if ver != PROTOCOL_VERSION:
        raise parse.BadEntry(f"{KEY_PROTOCOL}: peer speaks {ver}, we speak {PROTOCOL_VERSION}")
    if not parse.optional_flag(KEY_VNET_HDR, peer.get(KEY_VNET_HDR)):
        raise parse.BadEntry(f"{KEY_VNET_HDR}: peer does not set it to 1 (required by version 1)")
    theirs = Features.NONE
    for key, bit in FEATURE_KEYS.items():
        if parse.optional_flag(key, peer.get(key)):
            theirs |= bit
    raw = peer.get(KEY_MAX_FRAME, str(ETH_MAX))
    peer_max = parse.uint(KEY_MAX_FRAME, raw, ETH_MIN, ETH_MAX, max_digits=6)
    return Negotiated(rx_features=ours, tx_features=theirs & ours,
                      max_frame=min(our_max_frame, peer_max))


def read_peer(store: StoreOps, base: str) -> dict[str, str]:
    """The peer's negotiation keys under ``base`` (untrusted; absent keys left out)."""
    out: dict[str, str] = {}
    for key in PEER_KEYS:
        raw = read_optional(store, f"{base}/{key}")
        if raw is not None:
            out[key] = parse.text(f"{base}/{key}", raw, PEER_VALUE_MAX)
    return out


def negotiate_with(store: StoreOps, peer_dir: str, ours: Features) -> Negotiated:
    """Read the peer's keys under ``peer_dir`` and negotiate with ``ours`` (at ETH_MAX)."""
    return negotiate(ours, ETH_MAX, read_peer(store, peer_dir))
