"""Discovery looks only at the devices a burst of watch events names (ncd.daemon.discovery):
which paths name a device, and which bursts need the full scan."""

from __future__ import annotations

import re

from ncd import layout
from ncd.daemon.discovery import Devices, Discovery, device_keys
from ncd.daemon.service import VifTable
from ncd.xen.xenstore import WatchEvent

BE = layout.backend_root(0)  # /local/domain/0/backend/ncvif
FE = layout.frontend_root(7)


def test_a_backend_device_is_named_by_frontend_domain_and_devid() -> None:
    key_of = device_keys(BE)
    assert key_of(f"{BE}/5/0") == (5, 0)
    assert key_of(f"{BE}/5/0/state") == (5, 0)
    assert key_of(f"{BE}/12/3/queue-1/ring-ref") == (12, 3)
    for path in (
        BE,
        f"{BE}/5",
        "@releaseDomain",
        f"{BE}x/5/0",
        f"{BE}/+5/0",
        f"{BE}/5/x",
        f"{BE}/5/-1",
        "/local/domain/1/backend/ncvif/5/0",
    ):
        assert key_of(path) is None, path


def test_a_frontend_device_is_its_own_domain_and_devid() -> None:
    key_of = device_keys(FE, 7)
    assert key_of(f"{FE}/0") == (7, 0)
    assert key_of(f"{FE}/2/backend-id") == (7, 2)
    for path in (FE, f"{FE}/x", "/local/domain/8/device/ncvif/0"):
        assert key_of(path) is None, path


def test_a_burst_names_its_devices_unless_one_event_names_none() -> None:
    devices = Devices(
        role="backend",
        watch=(BE,),
        tap_pattern=re.compile("ncvif.*"),
        live_ifnames=set,
        listed=list,
        ready=lambda key: False,
        make_vif=lambda key: None,  # type: ignore[arg-type,return-value]
        key_of=device_keys(BE),
    )
    disc = Discovery(None, VifTable(), devices)  # type: ignore[arg-type]
    ev = [
        WatchEvent(f"{BE}/5/0/state", "t"),
        WatchEvent(f"{BE}/6/1/online", "t"),
        WatchEvent(f"{BE}/5/0/mac", "t"),
    ]
    assert disc._named(ev) == {(5, 0), (6, 1)}
    assert disc._named([*ev, WatchEvent("@releaseDomain", "t")]) is None  # sweep + full scan
    assert disc._named([*ev, "vif-gone"]) is None
    assert disc._named([WatchEvent(BE, "t")]) is None  # the watch's first event: start
    # a role without key_of: every burst is a full scan, as before
    plain = Discovery(None, VifTable(), Devices(**{**devices.__dict__, "key_of": Devices.key_of}))  # type: ignore[arg-type]
    assert plain._named(ev) is None
