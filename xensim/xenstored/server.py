"""The daemon: one listening Unix socket per domain, connections, domains, event fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import paths as world_paths
from . import ops
from .connection import (
    Connection,
    ProtocolViolation,
    error_reply,
    read_message,
)
from .handlers import dispatch
from .paths import child
from .perms import NONE, READ, Perm, Perms, drop_domain, for_domain
from .tree import Store
from .watches import Event, WatchIndex, permitted
from .wire import Message, XsError

log = logging.getLogger("xensim.xenstored")

SPECIAL_PATHS = ("@introduceDomain", "@releaseDomain")


@dataclass(eq=False)
class Domain:
    domid: int
    socket_path: Path
    server: asyncio.AbstractServer | None = None
    starting: asyncio.Task[None] | None = None
    sock: socket.socket | None = None
    connections: set[Connection] = field(default_factory=set)
    port: int = 0


class XenstoreServer:
    def __init__(self, world: Path) -> None:
        self.world = Path(world)
        self.store = Store.initial()
        self.domains: dict[int, Domain] = {}
        self.special: dict[str, Perms] = {p: (Perm(0, NONE),) for p in SPECIAL_PATHS}
        self.targets: dict[int, int] = {}
        self.watch_index = WatchIndex()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        domain = self.open_domain(0)
        assert domain.starting is not None
        await domain.starting
        log.info("xenstored ready on %s", domain.socket_path)

    async def stop(self) -> None:
        for domid in list(self.domains):
            self.close_domain(domid)

    def open_domain(self, domid: int, port: int = 0) -> Domain:
        """Bind and listen on the domain's socket now; accepting starts on the loop.

        Clients may connect as soon as this returns (the kernel queues them)."""
        path = world_paths.xenstored_socket(self.world, domid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        domain = Domain(domid, path, port=port, sock=sock)
        self.domains[domid] = domain

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.serve_connection(domain, reader, writer)

        async def listen() -> None:
            server = await asyncio.start_unix_server(serve, sock=sock)
            if self.domains.get(domid) is domain:
                domain.server = server
            else:  # released meanwhile
                server.close()

        domain.starting = asyncio.get_running_loop().create_task(listen())
        return domain

    def close_domain(self, domid: int) -> None:
        domain = self.domains.pop(domid, None)
        if domain is None:
            return
        if domain.server is not None:
            domain.server.close()
        else:
            if domain.starting is not None:
                domain.starting.cancel()
            if domain.sock is not None:
                domain.sock.close()
        for conn in list(domain.connections):
            conn.close()
        domain.connections.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(domain.socket_path)

    # -- connections -------------------------------------------------------------------------

    async def serve_connection(
        self, domain: Domain, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = Connection(domain.domid, writer)
        if self.domains.get(domain.domid) is not domain:
            writer.close()
            return
        domain.connections.add(conn)
        log.debug("%s: connected", conn)
        try:
            while not conn.closed:
                msg = await read_message(reader)
                self.handle(conn, msg)
                conn.flush()  # the reply now; other connections' events next iteration
                if not conn.closed:
                    await writer.drain()
        except asyncio.IncompleteReadError as e:
            if e.partial:
                log.info("%s: hung up in the middle of a packet", conn)
        except ProtocolViolation as e:
            log.warning("%s: protocol violation, closing: %s", conn, e)
        except (ConnectionError, OSError) as e:
            log.debug("%s: %s", conn, e)
        finally:
            domain.connections.discard(conn)
            conn.close()
            log.debug("%s: closed", conn)

    def handle(self, conn: Connection, msg: Message) -> None:
        try:
            result = dispatch(self, conn, msg)
        except XsError as e:
            log.debug("%s: %s -> %s", conn, msg.type, e)
            conn.send(error_reply(msg, e))
            return
        except Exception:
            log.exception("%s: internal error on request type %d", conn, msg.type)
            conn.send(error_reply(msg, XsError("EIO")))
            return
        conn.send(result.reply)
        for path, token in result.after:
            conn.send_event(path, token)

    def connections(self) -> list[Connection]:
        return [c for d in self.domains.values() for c in d.connections if not c.closed]

    def watch_count(self, domid: int) -> int:
        domain = self.domains.get(domid)
        return sum(len(c.watches) for c in domain.connections) if domain else 0

    # -- events ------------------------------------------------------------------------------

    def fire(self, events: list[Event]) -> None:
        for event in events:
            for conn, watches in self.watch_index.matching(event).items():
                if conn.closed or not self.may_see(conn, event):
                    continue
                for watch in watches:
                    conn.send_event(watch.report_path(event.path), watch.token)

    def may_see(self, conn: Connection, event: Event) -> bool:
        target = self.targets.get(conn.domid)
        if event.path.startswith("@"):
            perms = self.special.get(event.path)
            if perms is None:
                return False
            return bool(for_domain(conn.domid, perms, conn.privileged, target) & READ)
        return permitted(event, conn.domid, conn.privileged, target)

    # -- domains -----------------------------------------------------------------------------

    def introduce(self, domid: int, port: int) -> None:
        if domid in self.domains:
            return  # xenstored re-uses an introduced domain (ring reconnection)
        try:
            self.open_domain(domid, port)
        except OSError as e:
            raise XsError("EIO", f"cannot create socket for domain {domid}: {e}") from e
        log.info("introduced domain %d", domid)
        self.fire([Event("@introduceDomain", True)])

    def release(self, domid: int) -> None:
        self.close_domain(domid)
        self.targets.pop(domid, None)
        for t in [d for d, tgt in self.targets.items() if tgt == domid]:
            del self.targets[t]
        for name, perms in self.special.items():
            self.special[name] = drop_domain(perms, domid)
        self.fire(self.remove_owned_nodes(domid))
        self.forget_grants(domid)
        log.info("released domain %d", domid)
        self.fire([Event("@releaseDomain", True)])

    def forget_grants(self, domid: int) -> None:
        """Drop permission entries naming a released domain, so that a later domain with
        the same domid inherits nothing (xenstored ignores such entries the same way);
        silently, like xenstored: no generation change, no watch event."""
        nodes = self.store.nodes
        for path, node in nodes.items():
            if any(p.domid == domid for p in node.perms[1:]):
                nodes[path] = replace(node, perms=drop_domain(node.perms, domid))

    def remove_owned_nodes(self, domid: int) -> list[Event]:
        """xenstored deletes the nodes a departing domain owns, with their subtrees."""
        events: list[Event] = []
        pending = ["/"]
        while pending:
            path = pending.pop()
            node = self.store.get(path)
            if node is None:
                continue
            if path != "/" and node.owner == domid:
                events += ops.remove_tree(self.store, path)
                continue
            pending.extend(child(path, c) for c in reversed(node.children))
        return events
