"""xenstore layout: what attach writes, with which permissions, and hostile values."""

from __future__ import annotations

import errno
import sys

import pytest

from ncd import layout
from ncd.layout import AttachError, BadEntry
from ncd.perms import Perm

MAC = "00:16:3e:01:02:03"


def test_paths():
    assert layout.backend_dir(0, 3, 1) == "/local/domain/0/backend/ncvif/3/1"
    assert layout.frontend_dir(3, 1) == "/local/domain/3/device/ncvif/1"
    assert layout.queue_dir(3, 1, 0) == "/local/domain/3/device/ncvif/1/queue-0"
    assert layout.backend_ifname(32000, 9999) == "ncvif32000.9999"


def test_interface_name_must_fit(tree):
    # ncvif<domid>.<devid> must fit IFNAMSIZ: refused at attach, not at TAP creation
    tree.add_domain(32000)
    with pytest.raises(BadEntry, match="ncvif32000.10000 exceeds 15"):
        layout.attach(tree.conn(0), backend=0, frontend=32000, mac=MAC, devid=10000)
    assert layout.attach(tree.conn(0), backend=0, frontend=32000, mac=MAC, devid=9999).devid


def test_attach_writes_libxl_entries_and_perms(tree):
    dom0 = tree.conn(0)
    spec = layout.attach(
        dom0, backend=0, frontend=1, mac="00:16:3E:AA:BB:CC", mtu=9000, bridge="br0"
    )
    assert spec.devid == 0 and spec.mac == "00:16:3e:aa:bb:cc"
    be = "/local/domain/0/backend/ncvif/1/0"
    fe = "/local/domain/1/device/ncvif/0"
    got_be = {k: dom0.read_bytes(f"{be}/{k}").decode() for k in dom0.directory(be)}
    assert got_be == {
        "frontend": fe,
        "frontend-id": "1",
        "online": "1",
        "state": "1",
        "mac": "00:16:3e:aa:bb:cc",
        "mtu": "9000",
        "bridge": "br0",
        "handle": "0",
    }
    got_fe = {k: dom0.read_bytes(f"{fe}/{k}").decode() for k in dom0.directory(fe)}
    assert got_fe == {
        "backend": be,
        "backend-id": "0",
        "state": "1",
        "mac": "00:16:3e:aa:bb:cc",
        "mtu": "9000",
        "handle": "0",
    }
    assert dom0.get_perms(be) == [Perm(0, "n"), Perm(1, "r")]
    assert dom0.get_perms(fe) == [Perm(1, "n"), Perm(0, "r")]
    assert dom0.get_perms(f"{fe}/mac") == [Perm(1, "n"), Perm(0, "r")]  # keys inherit


def test_permissions_hold_for_guests(tree):
    spec = layout.attach(tree.conn(0), backend=0, frontend=1, mac=MAC)
    d1, d2 = tree.conn(1), tree.conn(2)
    # the frontend reads the backend dir but cannot write it
    assert d1.read_bytes(f"{spec.backend_dir}/state") == b"1"
    with pytest.raises(OSError) as e:
        d1.write(f"{spec.backend_dir}/state", "4")
    assert e.value.errno == errno.EACCES
    # the frontend owns its own dir
    d1.write(f"{spec.frontend_dir}/state", "4")
    d1.write(f"{layout.queue_dir(1, 0, 0)}/ring-ref", "8")
    # another guest sees neither
    for path in (spec.backend_dir + "/mac", spec.frontend_dir + "/mac"):
        with pytest.raises(OSError) as e:
            d2.read_bytes(path)
        assert e.value.errno == errno.EACCES


def test_attach_next_devid_and_duplicate(tree):
    dom0 = tree.conn(0)
    assert layout.attach(dom0, backend=0, frontend=1, mac=MAC).devid == 0
    assert layout.attach(dom0, backend=0, frontend=1, mac=MAC, devid=5).devid == 5
    assert layout.attach(dom0, backend=0, frontend=1, mac=MAC).devid == 6
    assert layout.attach(dom0, backend=0, frontend=2, mac=MAC).devid == 0
    before = dict(tree.nodes)
    with pytest.raises(AttachError, match="domain 1 already has ncvif devid 5"):
        layout.attach(dom0, backend=0, frontend=1, mac=MAC, devid=5)
    assert tree.nodes == before
    assert layout.list_backend_devices(dom0, 0) == [(1, 0), (1, 5), (1, 6), (2, 0)]
    assert layout.list_frontend_devices(tree.conn(1), 1) == [0, 5, 6]


def test_attach_unknown_domain_writes_nothing(tree):
    before = dict(tree.nodes)
    with pytest.raises(AttachError, match="domain 7 does not exist"):
        layout.attach(tree.conn(0), backend=0, frontend=7, mac=MAC)
    assert tree.nodes == before


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"mac": "01:16:3e:00:00:01"}, "multicast"),
        ({"mac": "00:00:00:00:00:00"}, "zero address"),
        ({"mac": "00:16:3e:00:00"}, "not a MAC"),
        ({"mac": "00-16-3e-00-00-01"}, "not a MAC"),
        ({"mtu": 67}, "out of range"),
        ({"mtu": 70000}, "out of range"),
        ({"bridge": "a" * 16}, "not an interface name"),
        ({"bridge": "br 0"}, "not an interface name"),
        ({"devid": 70000}, "devid: 70000 out of range"),
        ({"frontend": 0}, "own backend"),
    ],
)
def test_attach_rejects_bad_arguments(tree, kw, needle):
    args = {"backend": 0, "frontend": 1, "mac": MAC, **kw}
    with pytest.raises(BadEntry, match=needle):
        layout.attach(tree.conn(0), **args)
    assert layout.list_backend_devices(tree.conn(0), 0) == []


def test_detach_request_and_remove(tree):
    dom0 = tree.conn(0)
    spec = layout.attach(dom0, backend=0, frontend=1, mac=MAC)
    layout.request_detach(dom0, 0, 1, 0)
    assert dom0.read_bytes(f"{spec.backend_dir}/online") == b"0"
    assert dom0.read_bytes(f"{spec.backend_dir}/state") == b"5"
    layout.remove_entries(dom0, 0, 1, 0)
    assert not dom0.exists(spec.backend_dir) and not dom0.exists(spec.frontend_dir)
    assert not dom0.exists("/local/domain/0/backend/ncvif/1")
    with pytest.raises(AttachError, match="no ncvif devid 0"):
        layout.request_detach(dom0, 0, 1, 0)


def test_read_views(tree):
    spec = layout.attach(tree.conn(0), backend=0, frontend=1, mac=MAC, mtu=1400, bridge="xb")
    bv = layout.read_backend(tree.conn(0), 0, 1, 0)
    assert (bv.frontend, bv.devid, bv.online, bv.mac, bv.mtu, bv.bridge) == (
        1,
        0,
        True,
        MAC,
        1400,
        "xb",
    )
    fv = layout.read_frontend(tree.conn(1), 1, 0)
    assert (fv.backend, fv.backend_path, fv.mac, fv.mtu) == (0, spec.backend_dir, MAC, 1400)


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("backend", "/local/domain/0/backend/vif/1/0", "backend: '/local/domain/0/backend/vif"),
        ("backend-id", "1", "backend-id: 1 is this domain"),
        ("backend-id", "-0", "backend-id: not a decimal"),
        ("mac", "ff:ff:ff:ff:ff:ff", "mac: ff:ff:ff:ff:ff:ff is a multicast"),
        ("mtu", "1500 ", "mtu: not a decimal"),
        ("mtu", "99999999999", "mtu: not a decimal"),
        ("handle", "3", "handle: 3 does not match"),
    ],
)
def test_read_frontend_rejects_hostile_values(tree, key, value, needle):
    layout.attach(tree.conn(0), backend=0, frontend=1, mac=MAC)
    d1 = tree.conn(1)  # the frontend owns these keys: they are what a bad guest could write
    d1.write(f"/local/domain/1/device/ncvif/0/{key}", value)
    with pytest.raises(BadEntry, match=f"/local/domain/1/device/ncvif/0/{needle}"):
        layout.read_frontend(d1, 1, 0)


def test_read_backend_missing_key_named(tree):
    layout.attach(tree.conn(0), backend=0, frontend=1, mac=MAC)
    tree.conn(0).rm("/local/domain/0/backend/ncvif/1/0/online")
    with pytest.raises(BadEntry, match="backend/ncvif/1/0/online: missing"):
        layout.read_backend(tree.conn(0), 0, 1, 0)


def test_hostile_directory_names_are_skipped(tree):
    dom0 = tree.conn(0)
    layout.attach(dom0, backend=0, frontend=1, mac=MAC)
    dom0.mkdir("/local/domain/1/device/ncvif/junk")  # device/ is the toolstack's (libxl)
    dom0.mkdir("/local/domain/0/backend/ncvif/x9")
    assert layout.list_frontend_devices(dom0, 1) == [0]
    assert layout.list_backend_devices(dom0, 0) == [(1, 0)]
    assert layout.attach(dom0, backend=0, frontend=1, mac=MAC).devid == 1


# ------------------------------------------------------------ with the real XenStore

VIEW_SCRIPT = """
import sys
from ncd import layout
from ncd.xen.xenstore import XenStore
xs = XenStore()
role = sys.argv[1]
try:
    if role == "fe":
        v = layout.read_frontend(xs, 1, 0)
        print(v.backend, v.mac, v.mtu, v.backend_path)
    else:
        v = layout.read_backend(xs, 0, 1, 0)
        print(v.frontend, v.mac, v.mtu, v.bridge, v.online)
except layout.BadEntry as exc:
    print("BadEntry:", exc)
"""


def test_views_through_the_real_xenstore(sim):
    py = [sys.executable, "-c", VIEW_SCRIPT]
    sim.run(
        0,
        [
            sys.executable,
            "-m",
            "ncd.ncctl",
            "attach",
            "1",
            "--mac",
            "00:16:3e:aa:00:02",
            "--mtu",
            "1400",
            "--bridge",
            "xb0",
        ],
    )
    assert sim.run(1, [*py, "fe"]).stdout.split() == [
        "0",
        "00:16:3e:aa:00:02",
        "1400",
        "/local/domain/0/backend/ncvif/1/0",
    ]
    assert sim.run(0, [*py, "be"]).stdout.split() == [
        "1",
        "00:16:3e:aa:00:02",
        "1400",
        "xb0",
        "True",
    ]
    # the guest owns its directory: whatever it writes there is validated, not trusted
    sim.run(
        1,
        [
            "xenstore-write",
            "/local/domain/1/device/ncvif/0/backend",
            "/local/domain/0/backend/vif/1/0",
        ],
    )
    assert sim.run(1, [*py, "fe"]).stdout.strip() == (
        "BadEntry: /local/domain/1/device/ncvif/0/backend: '/local/domain/0/backend/vif/1/0' "
        "is not '/local/domain/0/backend/ncvif/1/0'"
    )
