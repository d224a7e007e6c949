"""The simulated hypervisor's state and rules: grant tables, mappings, event channels.

No sockets here; ``server.py`` drives it.  Each shim handle is a :class:`Conn`;
everything a handle creates is owned by its ``Conn`` and released with it, as
Linux's gntdev / gntalloc / evtchn release everything on file close.

Rules follow Xen (xen/common/grant_table.c, event_channel.c) and Linux's
drivers/xen (gntdev.c, gntalloc.c, evtchn.c):

* a domain maps only grants made to it, read-only grants only read-only
  (map failures are GNTST_* per ref; gntdev turns them into EINVAL);
* sharing always allocates fresh pages (memfds); the only way to grant an
  existing page is :meth:`Hypervisor.grant_existing`, which refuses (EPERM) any
  page that the caller's domain does not own: foreign pages cannot be granted
  onward;
* unmap notifications (clear a byte, send an event) fire when a share or a
  mapping is released, however it is released;
* event channels: per-domain port space (port 0 reserved), interdomain bind
  only to an unbound port allocated for the binder; closing one end leaves the
  other end unbound.  Each port's "pending" state is an eventfd.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass, field

from xensim.broker.proto import (
    DOMID_SELF,
    NONE,
    PAGE_SIZE,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTST_bad_domain,
    GNTST_bad_gntref,
    GNTST_general_error,
    GNTST_okay,
)

log = logging.getLogger("xensim.broker")

EVTCHN_STATE_STRIDE = 64  # one cache line per port state word in a channel's state page
GNTTAB_NR_RESERVED_ENTRIES = 8  # Linux never hands out refs 0..7
GRANT_ENTRIES_PER_FRAME = PAGE_SIZE // 8  # v1 grant entries are 8 bytes


class HvError(Exception):
    """A failed hypercall/ioctl: errno for the caller, plus GNTST detail for maps."""

    def __init__(self, err: int, msg: str, status: int = 0, index: int = 0) -> None:
        super().__init__(msg)
        self.errno = err
        self.status = status
        self.index = index


@dataclass
class Limits:
    gntalloc_limit: int = 1024  # Linux gntalloc module param `limit` (ENOSPC)
    max_grant_frames: int = 64  # Xen/libxl default max_grant_frames
    max_evtchn_port: int = 1023  # libxl default max_event_channels
    gntdev_limit: int = 65536  # Linux gntdev `limit`: pages per map op (EINVAL)

    @property
    def nr_grant_entries(self) -> int:
        return self.max_grant_frames * GRANT_ENTRIES_PER_FRAME


class Page:
    """One 4 KiB page of a domain: a sealed memfd owned by the broker."""

    __slots__ = ("fd", "owner", "refs")

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.refs = 0
        fd = os.memfd_create(f"xensim-d{owner}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, PAGE_SIZE)
            # A client must not be able to resize the page under its peer (SIGBUS).
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
        except OSError:
            os.close(fd)
            raise
        self.fd = fd

    def get(self) -> Page:
        self.refs += 1
        return self

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)
            self.fd = -1

    def readonly_fd(self) -> int:
        """A new O_RDONLY description of the page: mmap(PROT_WRITE) and mprotect fail."""
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def clear_byte(self, offset: int) -> None:
        os.pwrite(self.fd, b"\0", offset)


@dataclass(eq=False)
class Port:
    dom: Domain
    port: int
    rx: int  # eventfd: wakes this port's handle
    tx: int  # eventfd: wakes the (future) peer port's handle
    state: Page  # the channel's state page, shared by both ends
    index: int  # which EVTCHN_STATE_STRIDE slot of `state` is this port's word
    remote_dom: int
    remote_port: int | None = None  # None: unbound
    conn: Conn | None = None  # None once its handle closed but notifies still hold it
    notify_refs: int = 0


@dataclass(eq=False)
class Notify:
    page: Page | None  # byte to clear, with its offset in the page
    offset: int
    port: Port | None  # event to send

    def fire(self, hv: Hypervisor) -> None:
        if self.page is not None:
            self.page.clear_byte(self.offset)
            self.page.put()
            self.page = None
        if self.port is not None:
            port, self.port = self.port, None
            hv.send_event(port)
            hv.port_put(port)


@dataclass(eq=False)
class Grant:
    granter: Domain
    ref: int
    grantee: int
    page: Page
    readonly: bool
    conn: Conn | None
    from_share: bool  # counts against the gntalloc limit
    notify: Notify | None = None
    maps: int = 0
    ending: bool = False
    freed: bool = False


@dataclass(eq=False)
class Mapping:
    id: int
    conn: Conn
    grants: list[Grant]
    notify: Notify | None = None


@dataclass(eq=False)
class Conn:
    id: int
    dom: Domain
    pid: int
    kind: int = 0
    grants: dict[int, Grant] = field(default_factory=dict)
    mappings: dict[int, Mapping] = field(default_factory=dict)
    ports: dict[int, Port] = field(default_factory=dict)


@dataclass(eq=False)
class Domain:
    domid: int
    grants: dict[int, Grant] = field(default_factory=dict)
    ports: dict[int, Port] = field(default_factory=dict)
    conns: set[Conn] = field(default_factory=set)
    shared_pages: int = 0
    next_ref: int = GNTTAB_NR_RESERVED_ENTRIES
    dying: bool = False


def _new_page(owner: int) -> Page:
    """A fresh page, one reference held; resource exhaustion becomes an HvError."""
    try:
        return Page(owner).get()
    except OSError as exc:
        raise HvError(exc.errno or errno.ENOMEM, f"cannot allocate a page: {exc}") from exc


def _eventfd() -> int:
    try:
        return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    except OSError as exc:
        raise HvError(exc.errno or errno.ENOMEM, f"cannot create an eventfd: {exc}") from exc


def _drain(efd: int) -> None:
    try:
        os.eventfd_read(efd)
    except BlockingIOError:
        pass


class Hypervisor:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.domains: dict[int, Domain] = {}
        self._next_map_id = 1

    # ---------------------------------------------------------------- domains
    def create_domain(self, domid: int) -> Domain:
        if not 0 <= domid < DOMID_SELF:
            raise HvError(errno.EINVAL, f"bad domid {domid}")
        if domid in self.domains:
            raise HvError(errno.EEXIST, f"domain {domid} exists")
        dom = Domain(domid)
        self.domains[domid] = dom
        return dom

    def teardown_domain(self, dom: Domain) -> None:
        """Free what is left of a domain whose connections are all gone."""
        for conn in list(dom.conns):
            self.release_conn(conn)
        for port in list(dom.ports.values()):
            self._free_port(port)
        for grant in list(dom.grants.values()):
            # Grants still mapped by live domains: those mappings keep their memory.
            if grant.notify is not None:
                grant.notify.fire(self)
                grant.notify = None
            self._forget_grant(grant)
        del self.domains[dom.domid]

    def _resolve(self, conn: Conn, domid: int) -> int:
        return conn.dom.domid if domid == DOMID_SELF else domid

    # ------------------------------------------------------------- grant refs
    def _alloc_ref(self, dom: Domain) -> int:
        n = self.limits.nr_grant_entries
        usable = n - GNTTAB_NR_RESERVED_ENTRIES
        if len(dom.grants) >= usable:
            raise HvError(errno.ENOSPC, f"d{dom.domid}: grant table full ({usable} entries)")
        ref = dom.next_ref
        while ref in dom.grants:
            ref = ref + 1 if ref + 1 < n else GNTTAB_NR_RESERVED_ENTRIES
        dom.next_ref = ref + 1 if ref + 1 < n else GNTTAB_NR_RESERVED_ENTRIES
        return ref

    def _notify_port(self, dom: Domain, port: int) -> Port | None:
        if port == NONE:
            return None
        p = dom.ports.get(port)
        if p is None:
            # gntalloc/gntdev: evtchn_get() fails -> EINVAL
            raise HvError(errno.EINVAL, f"d{dom.domid}: unmap notify port {port} not bound")
        return p

    def share(
        self, conn: Conn, grantee: int, count: int, writable: bool, noff: int, nport: int
    ) -> list[Grant]:
        dom = conn.dom
        grantee = self._resolve(conn, grantee)
        if count <= 0:
            raise HvError(errno.EINVAL, "share of 0 pages")
        if dom.shared_pages + count > self.limits.gntalloc_limit:
            raise HvError(
                errno.ENOSPC,
                f"d{dom.domid}: gntalloc limit {self.limits.gntalloc_limit} pages reached",
            )
        port = self._notify_port(dom, nport)
        grants: list[Grant] = []
        try:
            for _ in range(count):
                ref = self._alloc_ref(dom)
                g = Grant(dom, ref, grantee, _new_page(dom.domid), not writable, conn, True)
                dom.grants[ref] = g
                dom.shared_pages += 1
                conn.grants[ref] = g
                grants.append(g)
        except BaseException:
            for g in grants:
                self._release_grant(g)
            raise
        if noff != NONE and noff < count * PAGE_SIZE:
            idx: int | None = noff // PAGE_SIZE
        else:
            idx = None
        if idx is not None or port is not None:
            g = grants[idx or 0]
            g.notify = Notify(
                g.page.get() if idx is not None else None,
                noff % PAGE_SIZE if idx is not None else 0,
                self.port_get(port) if port is not None else None,
            )
        return grants

    def unshare(self, conn: Conn, refs: list[int]) -> None:
        for ref in refs:
            g = conn.grants.get(ref)
            if g is None or not g.from_share:
                raise HvError(errno.EINVAL, f"ref {ref} is not shared by this handle")
        for ref in refs:
            self._release_grant(conn.grants[ref])

    def grant_existing(
        self, conn: Conn, src_kind: int, src_id: int, index: int, grantee: int, writable: bool
    ) -> Grant:
        """Grant a page the caller already has mapped (xensim_grant_existing).

        src_kind 0: the page of one of the domain's own grants (ref src_id);
        src_kind 1: page `index` of mapping `src_id` held by any handle of the domain.
        Only pages the calling domain owns may be granted: a page mapped from another
        domain is refused with EPERM (no onward granting of foreign pages).
        """
        dom = conn.dom
        if src_kind == 0:
            src = dom.grants.get(src_id)
            if src is None or src.ending:
                raise HvError(errno.EINVAL, f"d{dom.domid}: no grant ref {src_id}")
            page = src.page
        elif src_kind == 1:
            mapping = next((c.mappings[src_id] for c in dom.conns if src_id in c.mappings), None)
            if mapping is None or not 0 <= index < len(mapping.grants):
                raise HvError(errno.EINVAL, f"d{dom.domid}: no mapping {src_id}[{index}]")
            page = mapping.grants[index].page
        else:
            raise HvError(errno.EINVAL, f"bad source kind {src_kind}")
        if page.owner != dom.domid:
            raise HvError(
                errno.EPERM,
                f"d{dom.domid}: page belongs to d{page.owner}; foreign pages cannot be granted",
            )
        ref = self._alloc_ref(dom)
        g = Grant(dom, ref, self._resolve(conn, grantee), page.get(), not writable, conn, False)
        dom.grants[ref] = g
        conn.grants[ref] = g
        return g

    def end_grant(self, conn: Conn, ref: int) -> None:
        g = conn.grants.get(ref)
        if g is None or g.from_share:
            raise HvError(errno.EINVAL, f"ref {ref} is not an extra grant of this handle")
        self._release_grant(g)

    def _release_grant(self, g: Grant) -> None:
        """End a grant for its owner (unshare/close): notify now, free once unmapped."""
        if g.conn is not None:
            g.conn.grants.pop(g.ref, None)
            g.conn = None
        if g.notify is not None:
            n, g.notify = g.notify, None
            n.fire(self)
        if g.maps > 0:
            g.ending = True
        else:
            self._forget_grant(g)

    def _forget_grant(self, g: Grant) -> None:
        """Drop a grant from its table; its page goes once no mapping uses it."""
        if g.granter.grants.get(g.ref) is g:
            del g.granter.grants[g.ref]
            if g.from_share:
                g.granter.shared_pages -= 1
        if g.conn is not None:
            g.conn.grants.pop(g.ref, None)
            g.conn = None
        g.ending = True
        if g.maps == 0 and not g.freed:
            g.freed = True
            g.page.put()

    # ------------------------------------------------------------ map / copy
    def _lookup(self, conn: Conn, domid: int, ref: int, write: bool) -> tuple[int, Grant | None]:
        """Xen's checks, in Xen's order; returns (GNTST_*, grant)."""
        rd = self.domains.get(domid)
        if rd is None or rd.dying:
            return GNTST_bad_domain, None
        if not 0 <= ref < self.limits.nr_grant_entries:
            return GNTST_bad_gntref, None
        g = rd.grants.get(ref)
        if g is None or g.ending or g.grantee != conn.dom.domid:
            return GNTST_general_error, None  # "Bad flags or dom"
        if write and g.readonly:
            return GNTST_general_error, None  # "Attempt to write-pin a r/o grant entry"
        return GNTST_okay, g

    def map(
        self, conn: Conn, refs: list[tuple[int, int]], writable: bool, noff: int, nport: int
    ) -> Mapping:
        count = len(refs)
        if count == 0 or count > self.limits.gntdev_limit:
            raise HvError(errno.EINVAL, f"bad map count {count}")
        grants: list[Grant] = []
        for i, (domid, ref) in enumerate(refs):
            status, g = self._lookup(conn, domid, ref, writable)
            if g is None:
                raise HvError(
                    errno.EINVAL, f"map of d{domid} ref {ref} failed: GNTST {status}", status, i
                )
            grants.append(g)
        port = self._notify_port(conn.dom, nport)
        for g in grants:
            g.maps += 1
        m = Mapping(self._next_map_id, conn, grants)
        self._next_map_id += 1
        if (noff != NONE and noff < count * PAGE_SIZE) or port is not None:
            page = None
            off = 0
            if noff != NONE and noff < count * PAGE_SIZE:
                page = grants[noff // PAGE_SIZE].page.get()
                off = noff % PAGE_SIZE
            m.notify = Notify(page, off, self.port_get(port) if port is not None else None)
        conn.mappings[m.id] = m
        return m

    def unmap(self, conn: Conn, map_id: int) -> None:
        m = conn.mappings.pop(map_id, None)
        if m is None:
            raise HvError(errno.EINVAL, f"no mapping {map_id}")
        if m.notify is not None:
            n, m.notify = m.notify, None
            n.fire(self)
        for g in m.grants:
            g.maps -= 1
            if g.maps == 0 and g.ending:
                self._forget_grant(g)

    def copy(
        self, conn: Conn, segs: list[tuple[int, ...]]
    ) -> tuple[list[int], list[tuple[Page, bool]]]:
        """Grant copy: per-segment GNTST status and the pages the shim copies from/to.

        Like gntdev: local->local segments and gref offset+len beyond a page fail the
        whole call with EINVAL; the hypervisor's verdicts are per segment.
        """
        for flags, length, _sr, _sd, soff, _dr, _dd, doff in segs:
            if not flags & (GNTCOPY_source_gref | GNTCOPY_dest_gref):
                raise HvError(errno.EINVAL, "local->local grant copy")
            if flags & GNTCOPY_source_gref and soff + length > PAGE_SIZE:
                raise HvError(errno.EINVAL, "grant copy source crosses a page")
            if flags & GNTCOPY_dest_gref and doff + length > PAGE_SIZE:
                raise HvError(errno.EINVAL, "grant copy dest crosses a page")
        statuses: list[int] = []
        pages: list[tuple[Page, bool]] = []
        for flags, _len, sref, sdom, _soff, dref, ddom, _doff in segs:
            seg_pages: list[tuple[Page, bool]] = []
            status = GNTST_okay
            if flags & GNTCOPY_source_gref:
                status, g = self._lookup(conn, self._resolve(conn, sdom), sref, False)
                if g is not None:
                    seg_pages.append((g.page, False))
            if status == GNTST_okay and flags & GNTCOPY_dest_gref:
                status, g = self._lookup(conn, self._resolve(conn, ddom), dref, True)
                if g is not None:
                    seg_pages.append((g.page, True))
            statuses.append(status)
            if status == GNTST_okay:
                pages.extend(seg_pages)
        return statuses, pages

    # --------------------------------------------------------- event channels
    def _alloc_port(self, dom: Domain) -> int:
        for p in range(1, self.limits.max_evtchn_port + 1):
            if p not in dom.ports:
                return p
        raise HvError(errno.ENOSPC, f"d{dom.domid}: no free event channel port")

    def alloc_unbound(self, conn: Conn, remote: int) -> Port:
        dom = conn.dom
        num = self._alloc_port(dom)
        fds: list[int] = []
        try:
            fds.append(_eventfd())
            fds.append(_eventfd())
            state = _new_page(dom.domid)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        rx, tx = fds
        port = Port(dom, num, rx, tx, state, 0, self._resolve(conn, remote), None, conn)
        dom.ports[num] = port
        conn.ports[num] = port
        return port

    def bind_interdomain(self, conn: Conn, remote_dom: int, remote_port: int) -> Port:
        ld = conn.dom
        rd = self.domains.get(self._resolve(conn, remote_dom))
        if rd is None or rd.dying:
            raise HvError(errno.ESRCH, f"no domain {remote_dom}")
        num = self._alloc_port(ld)
        rchn = rd.ports.get(remote_port)
        if (
            rchn is None
            or rchn.conn is None
            or rchn.remote_port is not None
            or rchn.remote_dom != ld.domid
        ):
            raise HvError(
                errno.EINVAL,
                f"d{rd.domid} port {remote_port} is not an unbound port for d{ld.domid}",
            )
        rx = os.dup(rchn.tx)
        tx = os.dup(rchn.rx)
        index = 1 - rchn.index
        # A fresh end: clear whatever an earlier binder or notifies left behind.
        os.pwrite(rchn.state.fd, bytes(4), index * EVTCHN_STATE_STRIDE)
        _drain(rx)
        port = Port(ld, num, rx, tx, rchn.state.get(), index, rd.domid, rchn.port, conn)
        rchn.remote_port = num
        ld.ports[num] = port
        conn.ports[num] = port
        os.eventfd_write(rx, 1)  # Xen marks the binder's port pending
        return port

    def unbind(self, conn: Conn, num: int) -> None:
        port = conn.ports.get(num)
        if port is None:
            raise HvError(errno.ENOTCONN, f"port {num} not bound by this handle")
        self._close_port(port)

    def send_event(self, port: Port) -> None:
        if port.remote_port is not None:
            os.eventfd_write(port.tx, 1)

    def port_get(self, port: Port) -> Port:
        port.notify_refs += 1
        return port

    def port_put(self, port: Port) -> None:
        port.notify_refs -= 1
        if port.notify_refs == 0 and port.conn is None:
            self._free_port(port)

    def _close_port(self, port: Port) -> None:
        if port.conn is not None:
            port.conn.ports.pop(port.port, None)
            port.conn = None
        if port.notify_refs == 0:
            self._free_port(port)

    def _free_port(self, port: Port) -> None:
        dom = port.dom
        if dom.ports.get(port.port) is not port:
            return
        del dom.ports[port.port]
        if port.conn is not None:
            port.conn.ports.pop(port.port, None)
            port.conn = None
        if port.remote_port is not None:
            rd = self.domains.get(port.remote_dom)
            peer = rd.ports.get(port.remote_port) if rd else None
            if peer is not None and peer.remote_port == port.port:
                peer.remote_port = None  # the peer end is now unbound
        os.close(port.rx)
        os.close(port.tx)
        port.state.put()

    # ----------------------------------------------------------- connections
    def add_conn(self, conn: Conn) -> None:
        conn.dom.conns.add(conn)

    def release_conn(self, conn: Conn) -> None:
        """Everything a handle held goes, as on release() of the device file."""
        for map_id in list(conn.mappings):
            self.unmap(conn, map_id)
        for g in list(conn.grants.values()):
            self._release_grant(g)
        for port in list(conn.ports.values()):
            self._close_port(port)
        conn.dom.conns.discard(conn)

    def stats(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for domid, dom in sorted(self.domains.items()):
            out[domid] = {
                "grants": len(dom.grants),
                "shared_pages": dom.shared_pages,
                "mappings": sum(len(c.mappings) for c in dom.conns),
                "mapped_pages": sum(len(m.grants) for c in dom.conns for m in c.mappings.values()),
                "ports": len(dom.ports),
                "connections": len(dom.conns),
            }
        return out
