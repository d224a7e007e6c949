"""ncd.features: advertise / negotiate over xenstore keys (untrusted), the TUNSETOFFLOAD
flags that follow from the result, and the probe that keeps a feature the TAP cannot
offload out of what we advertise."""

from __future__ import annotations

import errno

import pytest

from ncd import features, layout
from ncd import tap as tapmod
from ncd.features import ETH_MAX, Features


def test_negotiate_intersects_and_takes_smaller_max() -> None:
    peer = features.advertise(Features.CSUM | Features.GSO_TCPV4, 9018)
    assert peer["protocol-version"] == "1" and peer["feature-vnet-hdr"] == "1"
    assert peer["feature-gso-tcpv4"] == "1" and peer["feature-gso-tcpv6"] == "0"
    n = features.negotiate(Features.ALL, ETH_MAX, peer)
    assert n.tx_features == Features.CSUM | Features.GSO_TCPV4
    assert n.rx_features == Features.ALL
    assert n.max_frame == 9018


@pytest.mark.parametrize("change", [
    {"protocol-version": "2"},
    {"protocol-version": "1x"},
    {"protocol-version": "\u0661"},  # ARABIC-INDIC DIGIT ONE: isdigit() and int() say 1
    {"protocol-version": "+1"},
    {"protocol-version": None},
    {"feature-vnet-hdr": "0"},
    {"feature-vnet-hdr": None},
    {"feature-csum": "yes"},
    {"max-frame": "13"},
    {"max-frame": "99999999"},
    {"max-frame": "-5"},
    {"max-frame": "\u0661\u0665\u0661\u0668"},
    {"max-frame": " 1518"},
])
def test_negotiate_rejects_malformed_peer_values(change: dict[str, str | None]) -> None:
    peer: dict[str, str] = features.advertise(Features.ALL)
    for k, v in change.items():
        if v is None:
            peer.pop(k)
        else:
            peer[k] = v
    with pytest.raises(ValueError):
        features.negotiate(Features.ALL, ETH_MAX, peer)


def test_negotiate_missing_feature_keys_mean_off() -> None:
    n = features.negotiate(Features.ALL, 1518, {"protocol-version": "1", "feature-vnet-hdr": "1"})
    assert n.tx_features == Features.NONE and n.max_frame == 1518


@pytest.mark.parametrize("feats,flags", [
    (Features.NONE, 0),
    (Features.GSO_TCPV4, 0),  # GSO without checksum offload: nothing
    (Features.CSUM, features.TUN_F_CSUM),
    (Features.CSUM | Features.GSO_TCPV4, 0x01 | 0x02 | 0x08),
    (Features.ALL, 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40),
])
def test_tun_offload_flags_follow_peer_features(feats, flags) -> None:
    assert features.tun_offload_flags(feats) == flags


def test_negotiate_sends_only_what_both_advertised() -> None:
    # a peer that accepts UDP GSO, and us on a kernel whose TAP cannot produce it
    ours = Features.ALL & ~Features.GSO_UDP_L4
    n = features.negotiate(ours, ETH_MAX, features.advertise(Features.ALL))
    assert n.rx_features == ours and n.tx_features == ours
    assert not features.tun_offload_flags(n.tx_features) & (features.TUN_F_USO4
                                                            | features.TUN_F_USO6)


def test_udp_gso_is_negotiated_and_set_on_the_tap_when_both_advertise_it() -> None:
    n = features.negotiate(Features.ALL, ETH_MAX, features.advertise(Features.ALL))
    assert n.tx_features & Features.GSO_UDP_L4
    flags = features.tun_offload_flags(n.tx_features)
    assert flags & features.TUN_F_USO4 and flags & features.TUN_F_USO6


def _probe(refused: int):
    """A TUNSETOFFLOAD stand-in: EINVAL (False) for any flags that include ``refused``."""
    tried: list[int] = []

    def accepts(flags: int) -> bool:
        tried.append(flags)
        return not flags & refused

    return accepts, tried


def test_usable_drops_udp_gso_when_the_tap_refuses_uso() -> None:
    accepts, tried = _probe(features.TUN_F_USO4)
    assert features.usable(Features.ALL, accepts) == Features.ALL & ~Features.GSO_UDP_L4
    assert features.TUN_F_CSUM | features.TUN_F_USO4 | features.TUN_F_USO6 in tried
    keys = features.advertise(features.usable(Features.ALL, accepts))
    assert keys["feature-gso-udp-l4"] == "0" and keys["feature-gso-tcpv4"] == "1"


def test_usable_keeps_everything_a_tap_accepts_and_nothing_without_csum() -> None:
    assert features.usable(Features.ALL, _probe(0)[0]) == Features.ALL
    assert features.usable(Features.GSO_TCPV4, _probe(0)[0]) == Features.NONE
    assert features.usable(Features.ALL, _probe(features.TUN_F_CSUM)[0]) == Features.NONE


def test_read_peer_validates_values(tree) -> None:
    layout.attach(tree.conn(0), backend=0, frontend=1, mac="00:16:3e:01:02:03")
    d1 = tree.conn(1)  # the guest owns its device directory
    base = "/local/domain/1/device/ncvif/0"
    for k, v in features.advertise(Features.CSUM).items():
        d1.write(f"{base}/{k}", v)
    n = features.negotiate_with(d1, base, Features.ALL)
    assert n.tx_features == Features.CSUM and n.max_frame == ETH_MAX
    d1.write(f"{base}/max-frame", "1" * 17)
    with pytest.raises(features.parse.BadEntry, match="max-frame: value too long"):
        features.read_peer(d1, base)
    d1.write(f"{base}/max-frame", "\u0661\u0665\u0661\u0668".encode())
    with pytest.raises(features.parse.BadEntry, match="max-frame: not ASCII"):
        features.read_peer(d1, base)


def test_tap_probe_other_errors_are_not_unsupported(monkeypatch) -> None:
    def ioctl(fd: int, req: int, arg: int) -> None:
        raise OSError(errno.EBADFD, "File descriptor in bad state")

    monkeypatch.setattr(tapmod.fcntl, "ioctl", ioctl)
    t = tapmod.Tap(99, "ncx", 10, 0)
    with pytest.raises(tapmod.TapError, match="TUNSETOFFLOAD ncx"):
        t.accepts_offloads(features.TUN_F_CSUM)
