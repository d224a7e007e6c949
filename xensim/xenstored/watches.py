"""Watches: registration per connection, and matching of modification events.

Rules (docs/misc/xenstore.txt, Xen's xenstored watch.c):

* an event on path P matches a watch on W if P is W or below it (``exact``
  events -- the children removed by a recursive RM -- match only W == P);
* a watcher receives an event only if it may read the node (before or after a
  permission change) or its parent; special ``@...`` events go to domains the
  special node's permissions let read (dom0 always);
* a watch given as a relative path reports relative event paths.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from . import paths
from .perms import READ, Perms, for_domain

# xenstored's quota_nb_watch_per_domain
MAX_WATCHES = 128


@dataclass(frozen=True)
class Event:
    path: str
    exact: bool
    # Permission sets of which any granting READ lets a watcher see the event
    # (the node's old and new permissions, its parent's); unused for '@' events.
    perm_sets: tuple[Perms, ...] = ()


@dataclass(frozen=True)
class Watch:
    path: str  # canonical (absolute or '@...')
    token: str
    relative_base: str | None  # the caller's home if registered relative

    def report_path(self, path: str) -> str:
        if self.relative_base is None:
            return path
        rest = path[len(self.relative_base) :]
        return rest[1:] if rest.startswith("/") else rest

    def matches(self, event: Event) -> bool:
        if event.exact:
            return event.path == self.path
        return paths.is_child(event.path, self.path)


def permitted(event: Event, domid: int, privileged: bool, target: int | None) -> bool:
    return any(for_domain(domid, p, privileged, target) & READ for p in event.perm_sets)


class WatchIndex:
    """Every connection's watches by path. An event looks up its own path and its
    ancestors (the watches it can match: a handful of dict lookups) instead of testing
    every watch of every connection: with 64 guests attaching that test was half of
    the daemon's request handling (docs/performance.md)."""

    def __init__(self) -> None:
        self._by_path: dict[str, list[tuple[int, Any, Watch]]] = {}
        self._seq = itertools.count()

    def add(self, owner: Any, watch: Watch) -> None:
        self._by_path.setdefault(watch.path, []).append((next(self._seq), owner, watch))

    def remove(self, owner: Any, watch: Watch) -> None:
        entries = self._by_path.get(watch.path, [])
        entries[:] = [e for e in entries if not (e[1] is owner and e[2] is watch)]
        if not entries:
            self._by_path.pop(watch.path, None)

    def matching(self, event: Event) -> dict[Any, list[Watch]]:
        """The owners with watches ``event`` matches (:meth:`Watch.matches`), each with
        those watches in the order they were registered."""
        candidates = [event.path]
        if not event.exact:  # P matches a watch on P or on any ancestor ('/' included)
            path = event.path
            while path != "/":
                path = paths.parent(path)
                candidates.append(path)
        found = sorted(e for p in candidates for e in self._by_path.get(p, ()))
        out: dict[Any, list[Watch]] = {}
        for _, owner, watch in found:
            out.setdefault(owner, []).append(watch)
        return out


class WatchList:
    """The watches of one connection (kept in ``index`` too when given)."""

    def __init__(self, index: WatchIndex | None = None, owner: Any = None) -> None:
        self.watches: list[Watch] = []
        self._index = index
        self._owner = owner

    def __len__(self) -> int:
        return len(self.watches)

    def link(self, index: WatchIndex, owner: Any) -> None:
        """Keep these watches in ``index`` too, as ``owner``'s, from now on."""
        if self._index is index:
            return
        if self._index is not None:
            raise ValueError("a watch list is in one index")
        self._index, self._owner = index, owner
        for w in self.watches:
            index.add(owner, w)

    def add(self, watch: Watch) -> bool:
        """False if an identical (path, token) watch exists already."""
        for w in self.watches:
            if w.path == watch.path and w.token == watch.token:
                return False
        self.watches.append(watch)
        if self._index is not None:
            self._index.add(self._owner, watch)
        return True

    def remove(self, path: str, token: str) -> bool:
        for i, w in enumerate(self.watches):
            if w.path == path and w.token == token:
                del self.watches[i]
                if self._index is not None:
                    self._index.remove(self._owner, w)
                return True
        return False

    def clear(self) -> None:
        if self._index is not None:
            for w in self.watches:
                self._index.remove(self._owner, w)
        self.watches.clear()

    def matching(self, event: Event) -> list[Watch]:
        return [w for w in self.watches if w.matches(event)]
