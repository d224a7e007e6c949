"""The node database: absolute path -> immutable :class:`Node`, with per-owner counts.

A :class:`Store` is the committed database. Operations (:mod:`.ops`) work on a
*view* with the same small interface (``get``/``put``/``delete``/``entries``), so
that a transaction (:mod:`.transactions`) can stand in for the store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Protocol

from .perms import NONE, Perm, Perms

# Size of Xen's struct xs_tdb_record_hdr and of one struct xs_permissions, used
# for the per-node size quota exactly as xenstored computes a record's size.
RECORD_HEADER = 24
PERM_SIZE = 8


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: Perms
    children: tuple[str, ...] = ()
    generation: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].domid

    def children_payload(self) -> bytes:
        return b"".join(c.encode("utf-8", "surrogateescape") + b"\0" for c in self.children)

    def record_size(self) -> int:
        childlen = sum(len(c.encode("utf-8", "surrogateescape")) + 1 for c in self.children)
        return RECORD_HEADER + PERM_SIZE * len(self.perms) + len(self.value) + childlen

    def with_child(self, name: str) -> Node:
        return replace(self, children=self.children + (name,))

    def without_child(self, name: str) -> Node:
        return replace(self, children=tuple(c for c in self.children if c != name))


class View(Protocol):
    """What the operations need from a database (the store or a transaction)."""

    def get(self, path: str) -> Node | None: ...

    def put(self, path: str, node: Node) -> Node: ...

    def delete(self, path: str) -> None: ...

    def entries(self, domid: int) -> int: ...


@dataclass
class Store:
    nodes: dict[str, Node] = field(default_factory=dict)
    counts: Counter[int] = field(default_factory=Counter)
    generation: int = 0

    @classmethod
    def initial(cls) -> Store:
        """Xen's xenstored creates /, /tool and /tool/xenstored (owner dom0, ``n0``);
        the toolstack's /local/domain hierarchy is created here as dom0 would."""
        store = cls()
        dom0_only: Perms = (Perm(0, NONE),)
        for path, children in (
            ("/", ("tool", "local")),
            ("/tool", ("xenstored",)),
            ("/tool/xenstored", ()),
            ("/local", ("domain",)),
            ("/local/domain", ()),
        ):
            store.put(path, Node(b"", dom0_only, children))
        return store

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: str, node: Node) -> Node:
        old = self.nodes.get(path)
        if old is not None:
            self.counts[old.owner] -= 1
        node = replace(node, generation=self.next_generation())
        self.nodes[path] = node
        self.counts[node.owner] += 1
        return node

    def delete(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.counts[old.owner] -= 1
            self.generation += 1

    def entries(self, domid: int) -> int:
        return self.counts[domid]
