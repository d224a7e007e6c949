"""xenstore in memory for the layout/ncctl tests: the simulator's own database and rules.

`MemStore` holds one :class:`xensim.xenstored.tree.Store`; ``store.conn(domid)`` is a
connection acting as that domain, with the methods of :class:`ncd.xen.xenstore.XenStore`
that ``ncd.layout`` and ``ncd.ncctl`` use. Every operation goes through
:mod:`xensim.xenstored.ops` (the rules xensim's xenstored applies: paths, permissions,
quotas, Xen's ENOENT/EACCES choice), so failures are the errnos a real store gives,
raised as :class:`ncd.xen.errors.XenError`. ``add_domain`` writes what the toolstack
does (:meth:`xensim.world.World.create_domain`, ``_init_dom0``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ncd.layout import Perm
from ncd.xen.errors import XenError
from xensim.world import write_domain_nodes
from xensim.xenstored import ops, perms
from xensim.xenstored.transactions import Transaction
from xensim.xenstored.tree import Node, Store, View
from xensim.xenstored.wire import XsError

R = TypeVar("R")
_FLAGS = {"n": perms.NONE, "r": perms.READ, "w": perms.WRITE, "b": perms.READ | perms.WRITE}
_LETTER = {v: k for k, v in _FLAGS.items()}


class MemStore:
    def __init__(self) -> None:
        self.store = Store.initial()
        self._tx_ids = 0
        self.released: set[int] = set()

    def release(self, domid: int) -> None:
        """What xenstored does when a domain dies, before the toolstack removes its home:
        the domain is no longer introduced and the nodes it owns go (its device dirs)."""
        self.released.add(domid)
        for path in [p for p, n in self.store.nodes.items() if n.perms[0].domid == domid]:
            if path in self.store.nodes:
                self.conn(0).rm(path)

    @property
    def nodes(self) -> dict[str, Node]:
        """The committed database (path -> node), e.g. to check that nothing changed."""
        return self.store.nodes

    def conn(self, domid: int) -> MemConn:
        return MemConn(self, self.store, domid)

    def add_domain(self, domid: int) -> None:
        """What the toolstack leaves in xenstore for a new domain (xensim's own nodes)."""
        write_domain_nodes(self.conn(0), domid, Perm)

    def next_tx_id(self) -> int:
        self._tx_ids += 1
        return self._tx_ids


class MemConn:
    """One domain's connection; ``view`` is the store, or a transaction inside one."""

    def __init__(self, mem: MemStore, view: View, domid: int) -> None:
        self.mem = mem
        self.view = view
        self.domid = domid
        self.caller = ops.Caller(domid, privileged=domid == 0)

    def _do(self, call: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(self.view, self.caller, *args)
        except XsError as exc:
            raise XenError(exc.errno, call) from None

    def read_bytes(self, path: str) -> bytes:
        return self._do(f"xs_read({path!r})", ops.read, path)

    def exists(self, path: str) -> bool:
        try:
            self.read_bytes(path)
        except XenError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def write(self, path: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        self._do(f"xs_write({path!r}, {len(data)} bytes)", ops.write, path, data)

    def mkdir(self, path: str) -> None:
        self._do(f"xs_mkdir({path!r})", ops.mkdir, path)

    def rm(self, path: str, missing_ok: bool = False) -> None:
        try:
            self._do(f"xs_rm({path!r})", ops.rm, path)
        except XenError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                raise

    def directory(self, path: str) -> list[str]:
        raw: bytes = self._do(f"xs_directory({path!r})", ops.directory, path)
        return [c.decode() for c in raw.split(b"\0") if c]

    def get_perms(self, path: str) -> list[Perm]:
        got = self._do(f"xs_get_permissions({path!r})", ops.get_perms, path)
        return [Perm(p.domid, _LETTER[p.flags & (perms.READ | perms.WRITE)]) for p in got]

    def set_perms(self, path: str, new: Sequence[Perm | tuple[int, str]]) -> None:
        entries = tuple(perms.Perm(d, _FLAGS[p]) for d, p in new)
        call = f"xs_set_permissions({path!r}, {list(new)})"
        try:
            ops.check_perm_count(self.caller, entries)
        except XsError as exc:
            raise XenError(exc.errno, call) from None
        self._do(call, ops.set_perms, path, entries)

    def get_domain_path(self, domid: int) -> str:
        return f"/local/domain/{domid}"

    def is_domain_introduced(self, domid: int) -> bool:
        """xenstored's answer (privileged), by the domains :meth:`MemStore.release`
        has not released."""
        if not self.caller.privileged:
            raise XenError(errno.EACCES, f"xs_is_domain_introduced({domid})")
        return domid not in self.mem.released

    def run_in_transaction(self, fn: Callable[[MemConn], R], attempts: int = 16) -> R:
        """``fn`` on a transaction, committed if it returns (xenstored's conflict rule,
        retried on EAGAIN), discarded if it raises."""
        assert isinstance(self.view, Store), "no nested transactions"
        for _ in range(attempts):
            tx = Transaction(self.view, self.mem.next_tx_id(), self.caller.privileged)
            result = fn(MemConn(self.mem, tx, self.domid))
            try:
                tx.commit()
            except XsError as exc:
                if exc.name != "EAGAIN":
                    raise XenError(exc.errno, "xs_transaction_end") from None
                continue
            return result
        raise XenError(errno.EAGAIN, "xs_transaction_end", f"gave up after {attempts} attempts")
