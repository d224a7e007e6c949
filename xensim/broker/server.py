"""The broker's socket side: one SOCK_SEQPACKET listener per domain, a selector loop.

Which listener a client connected to is its domain; SO_PEERCRED gives its pid
(used to SIGKILL a destroyed domain's processes).  Requests are decoded here
and handed to :class:`~xensim.broker.model.Hypervisor`.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import logging
import os
import select
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from xensim import paths
from xensim.broker.model import Conn, Domain, HvError, Hypervisor, Limits, Page
from xensim.broker.proto import (
    CONT,
    CONTROL_OPS,
    COPY_SEG,
    DOMINFO,
    DOMINFO_DYING,
    MAGIC,
    MAX_FDS_PER_MSG,
    MAX_MSG,
    REF,
    Op,
    pack_rsp,
    unpack_req,
)

log = logging.getLogger("xensim.broker")

_UCRED = struct.Struct("3i")


class _Reply(Exception):
    """Raised by a handler to send an error reply."""


@dataclass
class _Destroy:
    domid: int
    requester: Client
    deadline: float
    killed: int


class Client:
    def __init__(self, sock: socket.socket, conn: Conn) -> None:
        self.sock = sock
        self.conn = conn


class Broker:
    def __init__(self, world: Path, limits: Limits, destroy_timeout: float = 5.0) -> None:
        self.world = world
        self.hv = Hypervisor(limits)
        self.destroy_timeout = destroy_timeout
        self.sel = selectors.DefaultSelector()
        self.listeners: dict[int, socket.socket] = {}
        self.clients: dict[socket.socket, Client] = {}
        self.destroys: list[_Destroy] = []
        self._next_conn = 1
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        _raise_nofile()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.create_domain(0)

    def create_domain(self, domid: int) -> None:
        dom = self.hv.create_domain(domid)
        path = paths.hypervisor_socket(self.world, domid)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            lsock.bind(str(path))
            lsock.listen(128)
            lsock.setblocking(False)
        except OSError:
            del self.hv.domains[dom.domid]
            raise
        self.listeners[domid] = lsock
        self.sel.register(lsock, selectors.EVENT_READ, ("listen", domid))
        log.info("domain %d created (%s)", domid, path)

    def _close_listener(self, domid: int) -> None:
        lsock = self.listeners.pop(domid, None)
        if lsock is None:
            return
        self.sel.unregister(lsock)
        lsock.close()
        with contextlib.suppress(FileNotFoundError):
            paths.hypervisor_socket(self.world, domid).unlink()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        for domid in list(self.listeners):
            self._close_listener(domid)
        for dom in list(self.hv.domains.values()):
            self.hv.teardown_domain(dom)
        self.sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def serve_forever(self) -> None:
        while not self._stop:
            timeout = 0.05 if self.destroys else None
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 64)
                elif key.data[0] == "listen":
                    self._accept(key.fileobj, key.data[1])  # type: ignore[arg-type]
                else:
                    client = self.clients.get(key.fileobj)  # type: ignore[call-overload]
                    if client is not None:
                        self._readable(client)
            if self.destroys:
                self._progress_destroys()

    # ---------------------------------------------------------- connections
    def _accept(self, lsock: socket.socket, domid: int) -> None:
        try:
            sock, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        dom = self.hv.domains.get(domid)
        if dom is None or dom.dying:
            sock.close()
            return
        sock.setblocking(False)
        pid, _uid, _gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        conn = Conn(self._next_conn, dom, pid)
        self._next_conn += 1
        self.hv.add_conn(conn)
        client = Client(sock, conn)
        self.clients[sock] = client
        self.sel.register(sock, selectors.EVENT_READ, ("client",))
        log.debug("d%d: connection %d from pid %d", domid, conn.id, pid)

    def _drop(self, client: Client) -> None:
        if self.clients.pop(client.sock, None) is None:
            return
        self.sel.unregister(client.sock)
        client.sock.close()
        conn = client.conn
        log.debug("d%d: connection %d (pid %d) closed", conn.dom.domid, conn.id, conn.pid)
        self.hv.release_conn(conn)

    def _readable(self, client: Client) -> None:
        try:
            msg, anc, flags, _ = client.sock.recvmsg(
                MAX_MSG, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        for level, kind, data in anc:  # clients never send fds; don't leak them
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                for fd in fds:
                    os.close(fd)
        if not msg:
            self._drop(client)
            return
        if flags & socket.MSG_TRUNC:
            self._send(client, pack_rsp(errno.EMSGSIZE))
            return
        try:
            self._dispatch(client, msg)
        except OSError as exc:
            log.warning("d%d: connection %d: %s", client.conn.dom.domid, client.conn.id, exc)
            self._drop(client)

    def _send(self, client: Client, data: bytes, fds: list[int] | None = None) -> None:
        """Send one reply; fds beyond MAX_FDS_PER_MSG go in continuation messages."""
        fds = fds or []
        first, rest = fds[:MAX_FDS_PER_MSG], fds[MAX_FDS_PER_MSG:]
        self._sendmsg(client, data, first)
        while rest:
            chunk, rest = rest[:MAX_FDS_PER_MSG], rest[MAX_FDS_PER_MSG:]
            self._sendmsg(client, CONT.pack(MAGIC, len(chunk)), chunk)

    def _sendmsg(self, client: Client, data: bytes, fds: list[int]) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        deadline = time.monotonic() + 2.0
        while True:
            try:
                client.sock.sendmsg([data], anc)
                return
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError(errno.ETIMEDOUT, "client does not read its replies") from None
                select.select([], [client.sock], [], left)

    # ------------------------------------------------------------- requests
    def _dispatch(self, client: Client, msg: bytes) -> None:
        try:
            op, count, args, payload = unpack_req(msg)
        except ValueError as exc:
            self._send(client, pack_rsp(errno.EBADMSG))
            log.warning("d%d: %s", client.conn.dom.domid, exc)
            return
        conn = client.conn
        if op in CONTROL_OPS and conn.dom.domid != 0:
            log.warning("d%d: control request %d refused", conn.dom.domid, op)
            self._send(client, pack_rsp(errno.EPERM))
            return
        handler = self._handlers.get(op)
        if handler is None:
            self._send(client, pack_rsp(errno.ENOSYS))
            return
        try:
            handler(self, client, count, args, payload)
        except HvError as exc:
            log.info("d%d: %s: %s", conn.dom.domid, _opname(op), exc)
            self._send(client, pack_rsp(exc.errno, (0, exc.status, exc.index)))

    @staticmethod
    def _items(payload: bytes, count: int, size: int) -> None:
        if count * size != len(payload):
            raise HvError(errno.EINVAL, f"payload of {len(payload)} bytes for {count} items")

    def _op_hello(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        if args[0] != MAGIC:
            raise HvError(errno.EPROTO, "bad protocol magic")
        client.conn.kind = args[1]
        self._send(client, pack_rsp(0, (client.conn.dom.domid,)))

    def _op_share(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        grants = self.hv.share(client.conn, args[0], count, bool(args[1]), args[2], args[3])
        refs = array.array("I", (g.ref for g in grants)).tobytes()
        fds = [g.page.fd for g in grants]
        self._send(client, pack_rsp(0, (), len(grants), refs, len(fds)), fds)

    def _op_unshare(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        self._items(pl, count, 4)
        self.hv.unshare(client.conn, list(array.array("I", pl)))
        self._send(client, pack_rsp(0))

    def _op_grant_existing(
        self, client: Client, count: int, args: tuple[int, ...], pl: bytes
    ) -> None:
        g = self.hv.grant_existing(client.conn, args[3], args[0], args[4], args[1], bool(args[2]))
        self._send(client, pack_rsp(0, (g.ref,)))

    def _op_end_grant(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        self.hv.end_grant(client.conn, args[0])
        self._send(client, pack_rsp(0))

    def _op_map(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        self._items(pl, count, REF.size)
        refs = [REF.unpack_from(pl, i * REF.size) for i in range(count)]
        writable = bool(args[0])
        m = self.hv.map(client.conn, refs, writable, args[1], args[2])
        self._send_pages(client, (m.id,), [(g.page, writable) for g in m.grants])

    def _send_pages(
        self,
        client: Client,
        vals: tuple[int, ...],
        pages: list[tuple[Page, bool]],
        count: int = 0,
        payload: bytes = b"",
    ) -> None:
        fds: list[int] = []
        opened: list[int] = []
        try:
            for page, writable in pages:
                if writable:
                    fds.append(page.fd)
                else:
                    fd = page.readonly_fd()
                    opened.append(fd)
                    fds.append(fd)
            self._send(client, pack_rsp(0, vals, count, payload, len(fds)), fds)
        finally:
            for fd in opened:
                os.close(fd)

    def _op_unmap(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        self.hv.unmap(client.conn, args[0])
        self._send(client, pack_rsp(0))

    def _op_copy(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        self._items(pl, count, COPY_SEG.size)
        segs = [COPY_SEG.unpack_from(pl, i * COPY_SEG.size) for i in range(count)]
        statuses, pages = self.hv.copy(client.conn, segs)
        payload = array.array("i", statuses).tobytes()
        self._send_pages(client, (), pages, len(statuses), payload)

    def _op_alloc_unbound(
        self, client: Client, count: int, args: tuple[int, ...], pl: bytes
    ) -> None:
        port = self.hv.alloc_unbound(client.conn, args[0])
        self._send(
            client, pack_rsp(0, (port.port, port.index), nfds=3), [port.rx, port.tx, port.state.fd]
        )

    def _op_bind_interdomain(
        self, client: Client, count: int, args: tuple[int, ...], pl: bytes
    ) -> None:
        port = self.hv.bind_interdomain(client.conn, args[0], args[1])
        self._send(
            client, pack_rsp(0, (port.port, port.index), nfds=3), [port.rx, port.tx, port.state.fd]
        )

    def _op_unbind(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        self.hv.unbind(client.conn, args[0])
        self._send(client, pack_rsp(0))

    # -------------------------------------------------------------- control
    def _op_create_domain(
        self, client: Client, count: int, args: tuple[int, ...], pl: bytes
    ) -> None:
        try:
            self.create_domain(args[0])
        except OSError as exc:
            raise HvError(exc.errno or errno.EIO, str(exc)) from exc
        self._send(client, pack_rsp(0))

    def _op_destroy_domain(
        self, client: Client, count: int, args: tuple[int, ...], pl: bytes
    ) -> None:
        domid = args[0]
        dom = self.hv.domains.get(domid)
        if dom is None or dom.dying:
            raise HvError(errno.ESRCH, f"no domain {domid}")
        if domid == 0:
            raise HvError(errno.EPERM, "dom0 cannot be destroyed")
        dom.dying = True
        self._close_listener(domid)
        killed = self._kill_domain_processes(dom, client.conn.pid)
        log.info("domain %d: destroying, SIGKILLed %d process(es)", domid, killed)
        self.destroys.append(
            _Destroy(domid, client, time.monotonic() + self.destroy_timeout, killed)
        )

    def _kill_domain_processes(self, dom: Domain, requester: int) -> int:
        spare = {0, 1, os.getpid(), requester}
        pids = {c.pid for c in dom.conns} - spare
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def _progress_destroys(self) -> None:
        now = time.monotonic()
        for d in list(self.destroys):
            dom = self.hv.domains[d.domid]
            if dom.conns and now < d.deadline:
                continue
            self.destroys.remove(d)
            for client in [c for c in self.clients.values() if c.conn.dom is dom]:
                log.warning(
                    "domain %d: connection %d still open, dropping", d.domid, client.conn.id
                )
                self._drop(client)
            self.hv.teardown_domain(dom)
            log.info("domain %d destroyed", d.domid)
            if d.requester.sock in self.clients:
                with contextlib.suppress(OSError):
                    self._send(d.requester, pack_rsp(0, (d.killed,)))

    def _op_list_domains(
        self, client: Client, count: int, args: tuple[int, ...], pl: bytes
    ) -> None:
        ids = sorted(d for d, dom in self.hv.domains.items() if not dom.dying)
        self._send(client, pack_rsp(0, (), len(ids), array.array("I", ids).tobytes()))

    def _op_domain_info(
        self, client: Client, count: int, args: tuple[int, ...], pl: bytes
    ) -> None:
        """xc_domain_getinfo: up to arg1 domains with domid >= arg0, dying ones included
        (Xen lists a dying domain until its last page is freed)."""
        first, most = args[0], min(args[1], (MAX_MSG - 64) // DOMINFO.size)
        st = self.hv.stats()
        items = [
            DOMINFO.pack(
                d,
                DOMINFO_DYING if dom.dying else 0,
                st[d]["shared_pages"],
                st[d]["mapped_pages"],
            )
            for d, dom in sorted(self.hv.domains.items())
            if d >= first
        ][:most]
        self._send(client, pack_rsp(0, (), len(items), b"".join(items)))

    def _op_stats(self, client: Client, count: int, args: tuple[int, ...], pl: bytes) -> None:
        data = json.dumps(self.hv.stats()).encode()
        self._send(client, pack_rsp(0, (), len(data), data))

    _handlers = {
        Op.HELLO: _op_hello,
        Op.SHARE: _op_share,
        Op.UNSHARE: _op_unshare,
        Op.GRANT_EXISTING: _op_grant_existing,
        Op.END_GRANT: _op_end_grant,
        Op.MAP: _op_map,
        Op.UNMAP: _op_unmap,
        Op.COPY: _op_copy,
        Op.ALLOC_UNBOUND: _op_alloc_unbound,
        Op.BIND_INTERDOMAIN: _op_bind_interdomain,
        Op.UNBIND: _op_unbind,
        Op.CREATE_DOMAIN: _op_create_domain,
        Op.DESTROY_DOMAIN: _op_destroy_domain,
        Op.LIST_DOMAINS: _op_list_domains,
        Op.STATS: _op_stats,
        Op.DOMAIN_INFO: _op_domain_info,
    }


def _opname(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"op{op}"


def _raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
