"""Request dispatch: payload parsing and the per-type handlers (Xen's wire_funcs table)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import ops, paths, perms
from .connection import Connection, reply
from .transactions import Transaction
from .tree import View
from .watches import MAX_WATCHES, Watch
from .wire import (
    REL_PATH_MAX,
    Message,
    Op,
    XsError,
    atoi,
    count_strings,
    decode,
    onearg,
    strings,
)

if TYPE_CHECKING:
    from .server import XenstoreServer

log = logging.getLogger("xensim.xenstored")

MAX_TRANSACTIONS = 10  # quota_max_transaction
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
OK = b"OK\0"


@dataclass
class Result:
    reply: bytes
    # (path, token) watch events to send to the caller after the reply
    after: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Request:
    server: XenstoreServer
    conn: Connection
    msg: Message
    tx: Transaction | None

    @property
    def view(self) -> View:
        return self.tx if self.tx is not None else self.server.store

    @property
    def caller(self) -> ops.Caller:
        return ops.Caller(
            self.conn.domid, self.conn.privileged, self.server.targets.get(self.conn.domid)
        )

    def fire(self, events: list) -> None:
        if self.tx is not None:
            self.tx.events.extend(events)
        else:
            self.server.fire(events)


Handler = Callable[[Request], bytes | Result]


def _read(req: Request) -> bytes:
    return ops.read(req.view, req.caller, onearg(req.msg.payload))


def _write(req: Request) -> bytes:
    payload = req.msg.payload
    if count_strings(payload) < 1:
        raise XsError("EINVAL", "WRITE needs a path")
    cut = payload.index(b"\0")
    req.fire(ops.write(req.view, req.caller, decode(payload[:cut]), payload[cut + 1 :]))
    return OK


def _mkdir(req: Request) -> bytes:
    req.fire(ops.mkdir(req.view, req.caller, onearg(req.msg.payload)))
    return OK


def _rm(req: Request) -> bytes:
    req.fire(ops.rm(req.view, req.caller, onearg(req.msg.payload)))
    return OK


def _directory(req: Request) -> bytes:
    return ops.directory(req.view, req.caller, onearg(req.msg.payload))


def _directory_part(req: Request) -> bytes:
    if count_strings(req.msg.payload) != 2:
        raise XsError("EINVAL", "DIRECTORY_PART needs path and offset")
    path, offset = (decode(s) for s in strings(req.msg.payload))
    off = atoi(offset) & 0xFFFFFFFF
    return ops.directory_part(req.view, req.caller, path, off)


def _get_perms(req: Request) -> bytes:
    return perms.to_payload(ops.get_perms(req.view, req.caller, onearg(req.msg.payload)))


def _set_perms(req: Request) -> bytes:
    args = [decode(s) for s in strings(req.msg.payload)]
    if len(args) < 2:
        raise XsError("EINVAL", "SET_PERMS needs a path and permissions")
    new = perms.parse(args[1:])
    ops.check_perm_count(req.caller, new)
    name = args[0]
    if name.startswith("@"):
        current = req.server.special.get(name)
        if current is None:
            raise XsError("EINVAL", f"no special node {name!r}")
        want = perms.WRITE | perms.OWNER
        if req.caller.access(current) & want != want:
            raise XsError("EACCES", name)
        req.server.special[name] = new
        return OK
    req.fire(ops.set_perms(req.view, req.caller, name, new))
    return OK


def _watch(req: Request) -> Result:
    args = strings(req.msg.payload)
    if len(args) != 2:
        raise XsError("EINVAL", "WATCH needs path and token")
    path, token = decode(args[0]), decode(args[1])
    relative = False
    if path.startswith("@"):
        if len(path) > REL_PATH_MAX:
            raise XsError("EINVAL", "special path too long")
    else:
        relative = not path.startswith("/")
        path = paths.canonicalize(path, req.conn.domid)
        if not paths.is_valid(path):
            raise XsError("EINVAL", f"invalid watch path {path!r}")
    conn = req.conn
    watch = Watch(path, token, paths.home(conn.domid) if relative else None)
    if any(w.path == path and w.token == token for w in conn.watches.watches):
        raise XsError("EEXIST", "duplicate watch")
    if not conn.privileged and req.server.watch_count(conn.domid) >= MAX_WATCHES:
        raise XsError("E2BIG", "watch quota")
    conn.watches.link(req.server.watch_index, conn)  # its watches join the server's index
    conn.watches.add(watch)
    # A new watch fires once straight away, after the acknowledgement.
    return Result(reply(req.msg, OK), [(watch.report_path(watch.path), token)])


def _unwatch(req: Request) -> bytes:
    args = strings(req.msg.payload)
    if len(args) != 2:
        raise XsError("EINVAL", "UNWATCH needs path and token")
    path = paths.canonicalize(decode(args[0]), req.conn.domid)
    if not req.conn.watches.remove(path, decode(args[1])):
        raise XsError("ENOENT", "no such watch")
    return OK


def _transaction_start(req: Request) -> bytes:
    conn = req.conn
    if req.tx is not None:
        raise XsError("EBUSY", "TRANSACTION_START inside a transaction")
    if not conn.privileged and len(conn.transactions) >= MAX_TRANSACTIONS:
        raise XsError("ENOSPC", "transaction quota")
    tx_id = conn.allocate_tx_id()
    conn.transactions[tx_id] = Transaction(req.server.store, tx_id, conn.privileged)
    return f"{tx_id}".encode() + b"\0"


def _transaction_end(req: Request) -> bytes:
    arg = onearg(req.msg.payload)
    if arg not in ("T", "F"):
        raise XsError("EINVAL", "TRANSACTION_END takes T or F")
    tx = req.tx
    if tx is None:
        raise XsError("ENOENT", "not in a transaction")
    del req.conn.transactions[tx.tx_id]
    if arg == "T":
        req.server.fire(tx.commit())
    return OK


def _get_domain_path(req: Request) -> bytes:
    domid = atoi(onearg(req.msg.payload)) & 0xFFFFFFFF
    return paths.home(domid).encode() + b"\0"


def _domid_arg(req: Request) -> int:
    domid = atoi(onearg(req.msg.payload))
    if domid == 0:
        raise XsError("EINVAL", "not a domain")
    if domid not in req.server.domains:
        raise XsError("ENOENT", f"domain {domid} not introduced")
    return domid


def _introduce(req: Request) -> bytes:
    args = strings(req.msg.payload)
    if len(args) < 3:
        raise XsError("EINVAL", "INTRODUCE needs domid, gfn and port")
    domid = atoi(decode(args[0]))
    port = atoi(decode(args[2]))
    if port <= 0:
        raise XsError("EINVAL", "bad event channel")
    if domid <= 0 or domid >= DOMID_FIRST_RESERVED:
        raise XsError("EINVAL", f"bad domid {domid}")
    req.server.introduce(domid, port)
    return OK


def _release(req: Request) -> bytes:
    req.server.release(_domid_arg(req))
    return OK


def _resume(req: Request) -> bytes:
    _domid_arg(req)
    return OK


def _is_domain_introduced(req: Request) -> bytes:
    domid = atoi(onearg(req.msg.payload)) & 0xFFFFFFFF
    known = domid == DOMID_SELF or domid in req.server.domains
    return b"T\0" if known else b"F\0"


def _set_target(req: Request) -> bytes:
    args = strings(req.msg.payload)
    if len(args) < 2:
        raise XsError("EINVAL", "SET_TARGET needs two domids")
    domid, target = atoi(decode(args[0])), atoi(decode(args[1]))
    for d in (domid, target):
        if d not in req.server.domains:
            raise XsError("ENOENT", f"domain {d} not introduced")
    req.server.targets[domid] = target
    return OK


def _reset_watches(req: Request) -> bytes:
    req.conn.forget()
    return OK


_CONTROL_COMMANDS = ("check", "help", "print")


def _control(req: Request) -> bytes:
    args = [decode(s) for s in strings(req.msg.payload)]
    if not args:
        raise XsError("EINVAL", "CONTROL needs a command")
    cmd = args[0]
    if cmd == "print":
        log.info("control print: %s", " ".join(args[1:]))
        return OK
    if cmd == "check":
        return OK
    if cmd == "help":
        return ("".join(c + "\n" for c in _CONTROL_COMMANDS)).encode() + b"\0"
    raise XsError("EINVAL", f"unsupported control command {cmd!r}")


PRIV = 1
NOTID = 2

HANDLERS: dict[int, tuple[Handler, int]] = {
    Op.CONTROL: (_control, PRIV),
    Op.DIRECTORY: (_directory, 0),
    Op.READ: (_read, 0),
    Op.GET_PERMS: (_get_perms, 0),
    Op.WATCH: (_watch, NOTID),
    Op.UNWATCH: (_unwatch, NOTID),
    Op.TRANSACTION_START: (_transaction_start, 0),
    Op.TRANSACTION_END: (_transaction_end, 0),
    Op.INTRODUCE: (_introduce, PRIV),
    Op.RELEASE: (_release, PRIV),
    Op.GET_DOMAIN_PATH: (_get_domain_path, 0),
    Op.WRITE: (_write, 0),
    Op.MKDIR: (_mkdir, 0),
    Op.RM: (_rm, 0),
    Op.SET_PERMS: (_set_perms, 0),
    Op.IS_DOMAIN_INTRODUCED: (_is_domain_introduced, PRIV),
    Op.RESUME: (_resume, PRIV),
    Op.SET_TARGET: (_set_target, PRIV),
    Op.RESET_WATCHES: (_reset_watches, 0),
    Op.DIRECTORY_PART: (_directory_part, 0),
}


def dispatch(server: XenstoreServer, conn: Connection, msg: Message) -> Result:
    entry = HANDLERS.get(msg.type)
    if entry is None:
        raise XsError("ENOSYS", f"unknown request type {msg.type}")
    handler, flags = entry
    if flags & PRIV and not conn.privileged:
        raise XsError("EACCES", "privileged request")
    tx: Transaction | None = None
    if not flags & NOTID and msg.tx_id != 0:
        tx = conn.transactions.get(msg.tx_id)
        if tx is None:
            raise XsError("ENOENT", f"no transaction {msg.tx_id}")
    out = handler(Request(server, conn, msg, tx))
    if isinstance(out, Result):
        return out
    return Result(reply(msg, out))
