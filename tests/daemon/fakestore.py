"""An in-memory xenstore with xenstored's permission rules, for layout/ncctl tests.

One `FakeTree` is the whole store; `tree.conn(domid)` is a connection acting as
that domain. Rules as docs/misc/xenstore.txt and xenstored: dom0 may do
anything; a domain may read/write a node it owns; otherwise the entry for its
domid applies, else the owner entry's perm (the default for everyone). New
nodes inherit the parent's perms; an unprivileged creator becomes the owner.
Missing nodes raise OSError(ENOENT), denied access OSError(EACCES).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import Any

from ncd.perms import Perm


def _err(code: int, call: str) -> OSError:
    return OSError(code, f"{call}: {os.strerror(code)}")


class FakeTree:
    def __init__(self) -> None:
        self.nodes: dict[str, tuple[bytes, list[Perm]]] = {"/": (b"", [Perm(0, "n")])}
        self.ops = 0
        self._mk(0, "/local/domain")

    def conn(self, domid: int) -> FakeConn:
        return FakeConn(self, domid)

    def add_domain(self, domid: int) -> None:
        base = f"/local/domain/{domid}"
        self._mk(0, base)
        self.nodes[base] = (b"", [Perm(domid, "n")])
        for key, val in (("domid", str(domid)), ("name", f"dom{domid}")):
            self.nodes[f"{base}/{key}"] = (val.encode(), [Perm(domid, "n")])
        self._mk(0, f"{base}/device")
        self.nodes[f"{base}/device"] = (b"", [Perm(domid, "n")])

    # -- internals ------------------------------------------------------------
    @staticmethod
    def norm(path: str, domid: int) -> str:
        if not path.startswith("/"):
            path = f"/local/domain/{domid}/{path}"
        if path != "/" and path.endswith("/") or "//" in path:
            raise _err(errno.EINVAL, f"path {path!r}")
        return path

    @staticmethod
    def parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def may(self, domid: int, path: str, want: str) -> bool:
        if domid == 0:
            return True
        perms = self.nodes[path][1]
        if perms[0].domid == domid:
            return True
        perm = next((p.perm for p in perms[1:] if p.domid == domid), perms[0].perm)
        return perm == "b" or perm == want

    def _mk(self, domid: int, path: str) -> None:
        if path in self.nodes:
            return
        parent = self.parent(path)
        self._mk(domid, parent)
        if not self.may(domid, parent, "w"):
            raise _err(errno.EACCES, f"create {path}")
        perms = list(self.nodes[parent][1])
        if domid != 0:
            perms[0] = Perm(domid, perms[0].perm)
        self.nodes[path] = (b"", perms)


class FakeConn:
    def __init__(self, tree: FakeTree, domid: int) -> None:
        self.tree = tree
        self.domid = domid

    def _get(self, path: str, want: str, call: str) -> str:
        self.tree.ops += 1
        path = self.tree.norm(path, self.domid)
        if path not in self.tree.nodes:
            raise _err(errno.ENOENT, call)
        if not self.tree.may(self.domid, path, want):
            raise _err(errno.EACCES, call)
        return path

    def read_bytes(self, path: str) -> bytes:
        return self.tree.nodes[self._get(path, "r", f"read {path}")][0]

    def write(self, path: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        path = self.tree.norm(path, self.domid)
        if path not in self.tree.nodes:
            self.tree._mk(self.domid, path)
        self._get(path, "w", f"write {path}")
        self.tree.nodes[path] = (data, self.tree.nodes[path][1])

    def mkdir(self, path: str) -> None:
        self.tree._mk(self.domid, self.tree.norm(path, self.domid))

    def rm(self, path: str, missing_ok: bool = False) -> None:
        try:
            path = self._get(path, "w", f"rm {path}")
        except OSError as exc:
            if missing_ok and exc.errno == errno.ENOENT:
                return
            raise
        for p in [p for p in self.tree.nodes if p == path or p.startswith(path + "/")]:
            del self.tree.nodes[p]

    def directory(self, path: str) -> list[str]:
        path = self._get(path, "r", f"directory {path}")
        prefix = path.rstrip("/") + "/"
        return sorted(
            p[len(prefix) :]
            for p in self.tree.nodes
            if p.startswith(prefix) and "/" not in p[len(prefix) :] and p != path
        )

    def get_perms(self, path: str) -> list[Perm]:
        return list(self.tree.nodes[self._get(path, "r", f"get_perms {path}")][1])

    def set_perms(self, path: str, perms: Sequence[Any]) -> None:
        path = self._get(path, "w", f"set_perms {path}")
        owner = self.tree.nodes[path][1][0].domid
        if self.domid not in (0, owner):
            raise _err(errno.EACCES, f"set_perms {path}")
        self.tree.nodes[path] = (self.tree.nodes[path][0], [Perm(*p) for p in perms])

    def exists(self, path: str) -> bool:
        try:
            self.read_bytes(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def run_in_transaction(self, fn: Callable[[FakeConn], Any]) -> Any:
        # all-or-nothing: snapshot and restore on any exception
        snapshot = dict(self.tree.nodes)
        try:
            return fn(self)
        except BaseException:
            self.tree.nodes = snapshot
            raise

    def get_domain_path(self, domid: int) -> str:
        return f"/local/domain/{domid}"
