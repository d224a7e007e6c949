"""Optimistic transactions, with the conflict rule of Xen 4.17's xenstored.

A transaction reads through to the committed store until it first touches a
node; from then on it sees its own copy (what it read first, or what it wrote).
For every node it *read* first, the generation seen (or "absent") is
remembered; at commit, if any of those nodes changed in the store meanwhile,
the commit fails with EAGAIN and nothing is applied. Watch events of a
transaction fire only when it commits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from .tree import Node, Store
from .watches import Event
from .wire import XsError

# xenstored's quota_trans_nodes: nodes one unprivileged transaction may touch.
MAX_TRANSACTION_NODES = 1024


@dataclass
class Transaction:
    store: Store
    tx_id: int
    privileged: bool
    overlay: dict[str, Node | None] = field(default_factory=dict)
    checks: dict[str, int | None] = field(default_factory=dict)
    # What the transaction saw at its first read of a node: later reads see the same.
    seen: dict[str, Node | None] = field(default_factory=dict)
    deltas: Counter[int] = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)

    def _touch(self, path: str) -> None:
        if path in self.checks or path in self.overlay:
            return
        if not self.privileged and len(self.checks) + len(self.overlay) >= MAX_TRANSACTION_NODES:
            raise XsError("ENOSPC", "transaction touches too many nodes")

    def get(self, path: str) -> Node | None:
        if path in self.overlay:
            return self.overlay[path]
        if path in self.seen:
            return self.seen[path]
        self._touch(path)
        node = self.store.get(path)
        self.seen[path] = node
        self.checks[path] = node.generation if node is not None else None
        return node

    def put(self, path: str, node: Node) -> Node:
        old = self.get(path)
        if old is not None:
            self.deltas[old.owner] -= 1
        node = replace(node, generation=self.store.next_generation())
        self.overlay[path] = node
        self.deltas[node.owner] += 1
        return node

    def delete(self, path: str) -> None:
        old = self.get(path)
        if old is not None:
            self.deltas[old.owner] -= 1
        self.overlay[path] = None

    def entries(self, domid: int) -> int:
        return self.store.entries(domid) + self.deltas[domid]

    def conflicts(self) -> bool:
        for path, seen in self.checks.items():
            node = self.store.get(path)
            if (node.generation if node is not None else None) != seen:
                return True
        return False

    def commit(self) -> list[Event]:
        """Apply to the store, or raise EAGAIN if a node read here changed meanwhile."""
        if self.conflicts():
            raise XsError("EAGAIN", f"transaction {self.tx_id} conflicts")
        for path, node in self.overlay.items():
            if node is None:
                self.store.delete(path)
            else:
                self.store.put(path, node)
        return self.events
