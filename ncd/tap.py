"""TAP devices for vifs: create/open with a virtio-net header, offloads, link settings.

A TAP is opened with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``: every read gives
(and every write takes) a ``struct virtio_net_hdr`` then the Ethernet frame. With
``IFF_MULTI_QUEUE`` (a vif's TAP) each further open of the same name attaches one more
queue (:meth:`Tap.open_queue`), a fd of its own; closing it detaches the queue. The
kernel then picks the queue a frame it transmits is read from by flow
(``tun_automq_select_queue``: the symmetric flow hash of the 5-tuple, or, once a frame
of that flow was written on some queue, that queue, from tun's flow table), so every
frame of one flow is read from one fd, in order.
``TUNSETVNETHDRSZ`` and ``TUNSETOFFLOAD`` are set explicitly on every open:
offloads persist on a (persistent) TAP after its fd closes, so a value left by
an earlier owner must never be trusted. Offloads are ``TUN_F_*`` flags; which
ones a vif uses follows from its negotiated features (:mod:`ncd.features`).

Link settings: MAC, MTU and up through the ``SIOCSIF*`` ioctls (what ``ifconfig`` does),
delete through one rtnetlink ``RTM_DELLINK``; only a bridge port (the backend's) and
:func:`link_info` need pyroute2, imported when used: a frontend never loads it (its
package import costs ~11 MB of RSS). Everything acts in the calling thread's network
namespace: the daemon runs inside its domain's namespace. (Tests that work on another
namespace enter it around these calls: tests/netns.py.)
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ncd.vchan.pump import mac_bytes

if TYPE_CHECKING:
    from pyroute2 import IPRoute

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

VNET_HDR_SIZE = 10  # struct virtio_net_hdr
IFNAMSIZ = 16
TUN_PATH = "/dev/net/tun"

# linux/ethtool.h, for reading back what the kernel made of our offloads
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x03
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GFEATURES = 0x3A
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32


class TapError(OSError):
    """A TAP operation failed; the message names the device and the step."""


def _check_name(name: str) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) < IFNAMSIZ or b"/" in raw or b"\0" in raw or name.strip() != name:
        raise ValueError(f"bad interface name {name!r}")
    return raw


class Tap:
    """An open TAP fd (``IFF_VNET_HDR``), non-blocking, close-on-exec."""

    def __init__(self, fd: int, name: str, vnet_hdr_size: int, offloads: int,
                 multi_queue: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr_size = vnet_hdr_size
        self.offloads = offloads  # TUN_F_* flags as last set
        self.multi_queue = multi_queue  # IFF_MULTI_QUEUE: open_queue() adds queues

    def open_queue(self) -> Tap:
        """One more queue of this (``IFF_MULTI_QUEUE``) TAP: a new fd, configured like
        this one (vnet header size, offloads); closing it detaches the queue."""
        if not self.multi_queue:
            raise TapError(errno.EINVAL, f"{self.name} is not a multi-queue TAP")
        self.fileno()  # not after close: the name could be a new device by now
        try:  # TUNSETIFF would create a device of that name: attach, never create
            socket.if_nametoindex(self.name)
        except OSError:
            raise TapError(errno.ENODEV, f"{self.name}: no such device, no queue added") from None
        return open_tap(self.name, offloads=self.offloads, vnet_hdr_size=self.vnet_hdr_size,
                        multi_queue=True)

    def set_offloads(self, flags: int) -> None:
        """TUNSETOFFLOAD: what the kernel may hand us (it persists on the device)."""
        _ioctl_int(self.fileno(), TUNSETOFFLOAD, flags, f"TUNSETOFFLOAD {self.name}")
        self.offloads = flags

    def accepts_offloads(self, flags: int) -> bool:
        """Whether this kernel's TAP supports ``flags`` (TUNSETOFFLOAD refuses unknown bits
        with EINVAL); the offloads set before are restored."""
        try:
            fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, flags)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise TapError(exc.errno, f"TUNSETOFFLOAD {self.name}: {exc.strerror}") from None
        finally:
            self.set_offloads(self.offloads)
        return True

    def fileno(self) -> int:
        if self.fd < 0:
            raise ValueError(f"TAP {self.name} is closed")
        return self.fd

    def set_persist(self, persist: bool) -> None:
        _ioctl_int(self.fileno(), TUNSETPERSIST, int(persist), f"TUNSETPERSIST {self.name}")

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ioctl_int(fd: int, req: int, value: int, what: str) -> None:
    try:
        fcntl.ioctl(fd, req, value)
    except OSError as exc:
        raise TapError(exc.errno, f"{what}: {exc.strerror}") from None


def open_tap(
    name: str,
    *,
    offloads: int = 0,
    vnet_hdr_size: int = VNET_HDR_SIZE,
    multi_queue: bool = False,
) -> Tap:
    """Create (or attach to an existing persistent) TAP ``name`` and configure its fd.

    The fd is non-blocking. The device exists as long as the fd is open (or
    until :func:`delete` if it was made persistent). ``offloads``: the TUN_F_* flags
    (default none: set them once features are negotiated). ``multi_queue``:
    ``IFF_MULTI_QUEUE`` (the kernel refuses, EINVAL, to attach with a flag the
    existing device was not created with).
    """
    raw = _check_name(name)
    if vnet_hdr_size not in (10, 12) and not 12 <= vnet_hdr_size <= 64:
        raise ValueError(f"vnet_hdr_size {vnet_hdr_size}: must be 10, 12 or up to 64")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TapError(exc.errno, f"open {TUN_PATH}: {exc.strerror}") from None
    try:
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if multi_queue else 0)
        ifr = struct.pack("16sH22x", raw, flags)
        try:
            out = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            hint = " (exists with other flags, or not a TAP?)" if exc.errno == errno.EINVAL else ""
            raise TapError(exc.errno, f"TUNSETIFF {name}: {exc.strerror}{hint}") from None
        got = out[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if got != name:  # pragma: no cover - the kernel honours explicit names
            raise TapError(errno.EEXIST, f"TUNSETIFF {name}: kernel named it {got}")
        hdr = struct.pack("i", vnet_hdr_size)
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, hdr)
        except OSError as exc:
            raise TapError(exc.errno, f"TUNSETVNETHDRSZ {name}: {exc.strerror}") from None
        _ioctl_int(fd, TUNSETOFFLOAD, offloads, f"TUNSETOFFLOAD {name}")
    except BaseException:
        os.close(fd)
        raise
    return Tap(fd, name, vnet_hdr_size, offloads, multi_queue)


# linux/sockios.h, if.h, if_arp.h: a struct ifreq is the name then a 24-byte union
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1
# linux/netlink.h, rtnetlink.h: deleting a link has no ioctl
RTM_DELLINK = 17
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4


def _ifreq(name: str, req: int, union: bytes = bytes(24)) -> bytes:
    """ioctl ``req`` with a struct ifreq for ``name``; returns its union as the kernel left it."""
    ifr = _check_name(name).ljust(IFNAMSIZ, b"\0") + union
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return fcntl.ioctl(sock.fileno(), req, ifr)[IFNAMSIZ:]


def _no_such(name: str, exc: OSError) -> TapError | None:
    if exc.errno != errno.ENODEV:
        return None
    return TapError(errno.ENODEV, f"{name}: no such interface")


@contextmanager
def _iproute(ipr: IPRoute | None) -> Iterator[IPRoute]:
    """``ipr`` if given (a long-lived socket: pyroute2 leaks ~2.6 KB of native memory per
    IPRoute instance), else a new one."""
    if ipr is not None:
        yield ipr
        return
    from pyroute2 import IPRoute  # the backend's bridges only (see the module notes)

    with IPRoute() as new:
        yield new


def configure(
    name: str,
    *,
    mac: str | None = None,
    mtu: int | None = None,
    up: bool = True,
    bridge: str | None = None,
    ipr: IPRoute | None = None,
) -> None:
    """Set MAC / MTU, enslave to ``bridge`` (which must exist), bring up (or down).

    ``ipr``: an open IPRoute for the bridge step instead of a new one.
    """
    try:
        if mac is not None:
            _ifreq(name, SIOCSIFHWADDR, struct.pack("H6s16x", ARPHRD_ETHER, mac_bytes(mac)))
        if mtu is not None:
            _ifreq(name, SIOCSIFMTU, struct.pack("i20x", mtu))
        _ifreq(name, SIOCGIFFLAGS)  # there at all? (ENODEV, named below) before the bridge
    except OSError as exc:
        raise _no_such(name, exc) or TapError(
            exc.errno, f"{name}: set mac/mtu: {exc.strerror}"
        ) from None
    if bridge is not None:
        with _iproute(ipr) as ipr:
            br = ipr.link_lookup(ifname=bridge)
            if not br:
                raise TapError(errno.ENODEV, f"{name}: bridge {bridge} does not exist")
            try:
                ipr.link("set", index=_index(ipr, name), master=br[0])
            except TapError:
                raise
            except Exception as exc:
                raise TapError(
                    getattr(exc, "code", errno.EINVAL), f"{name}: enslave to {bridge}: {exc}"
                ) from None
    try:
        flags = struct.unpack_from("H", _ifreq(name, SIOCGIFFLAGS))[0]
        flags = flags | IFF_UP if up else flags & ~IFF_UP
        _ifreq(name, SIOCSIFFLAGS, struct.pack("H22x", flags))
    except OSError as exc:
        raise _no_such(name, exc) or TapError(
            exc.errno, f"{name}: set state: {exc.strerror}"
        ) from None


def delete(name: str, *, missing_ok: bool = True) -> bool:
    """Remove interface ``name`` (persistent or not). Returns whether it existed."""
    _check_name(name)
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        if missing_ok:
            return False
        raise TapError(errno.ENODEV, f"{name}: no such interface") from None
    # struct nlmsghdr, then struct ifinfomsg naming the link by index
    msg = struct.pack("=LHHLL", 32, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
    msg += struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.send(msg)
        while True:  # the ACK: an NLMSG_ERROR carrying 0 or -errno
            reply = sock.recv(4096)
            if len(reply) >= 20 and struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
                break
    err = -struct.unpack_from("=i", reply, 16)[0]
    if err == errno.ENODEV and missing_ok:  # gone meanwhile
        return False
    if err:
        raise TapError(err, f"{name}: delete: {os.strerror(err)}")
    return True


def tun_names() -> list[str]:
    """The names of this namespace's TUN/TAP devices (their ethtool driver is "tun")."""
    out = []
    for _, name in socket.if_nameindex():
        try:
            if driver(name) == "tun":
                out.append(name)
        except OSError:  # gone meanwhile
            continue
    return out


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise TapError(errno.ENODEV, f"{name}: no such interface")
    return int(found[0])


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    mac: str
    mtu: int
    up: bool
    master: str | None


def link_info(name: str) -> LinkInfo:
    """MAC, MTU, admin state and bridge of ``name`` as the kernel reports them."""
    with _iproute(None) as ipr:
        idx = _index(ipr, name)
        msg = ipr.link("get", index=idx)[0]
        master_idx = msg.get_attr("IFLA_MASTER")
        master = None
        if master_idx:
            master = ipr.link("get", index=master_idx)[0].get_attr("IFLA_IFNAME")
        return LinkInfo(
            name=name,
            index=idx,
            mac=msg.get_attr("IFLA_ADDRESS"),
            mtu=msg.get_attr("IFLA_MTU"),
            up=bool(msg["flags"] & 1),
            master=master,
        )


def _buffer(head: bytes, size: int) -> array.array[int]:
    """A buffer the kernel fills through a pointer in the ioctl's argument."""
    return array.array("B", head.ljust(size, b"\0"))


def _ethtool(sock: socket.socket, name: bytes, buf: array.array[int]) -> None:
    ifr = struct.pack("16sP", name, buf.buffer_info()[0]) + bytes(16)
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)


def driver(name: str) -> str:
    """The ethtool driver name of ``name`` ("tun" for a TUN/TAP device)."""
    info = _buffer(struct.pack("I", ETHTOOL_GDRVINFO), 196)  # struct ethtool_drvinfo
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _ethtool(sock, _check_name(name), info)
    return info[4:36].tobytes().split(b"\0", 1)[0].decode(errors="replace")


def active_features(name: str) -> dict[str, bool]:
    """The kernel's active netdev features of ``name`` (as ``ethtool -k`` shows them)."""
    raw = _check_name(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        info = _buffer(struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0), 20)
        _ethtool(sock, raw, info)
        count = struct.unpack_from("I", info, 16)[0]
        strings = _buffer(
            struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count),
            12 + count * ETH_GSTRING_LEN,
        )
        _ethtool(sock, raw, strings)
        blocks = (count + 31) // 32
        feats = _buffer(struct.pack("II", ETHTOOL_GFEATURES, blocks), 8 + blocks * 16)
        _ethtool(sock, raw, feats)
    out: dict[str, bool] = {}
    for i in range(count):
        off = 12 + i * ETH_GSTRING_LEN
        fname = strings[off : off + ETH_GSTRING_LEN].tobytes().split(b"\0", 1)[0].decode()
        active = struct.unpack_from("I", feats, 8 + (i // 32) * 16 + 8)[0]
        out[fname] = bool(active >> (i % 32) & 1)
    return out
