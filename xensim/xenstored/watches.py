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

from dataclasses import dataclass

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


class WatchList:
    """The watches of one connection."""

    def __init__(self) -> None:
        self.watches: list[Watch] = []

    def __len__(self) -> int:
        return len(self.watches)

    def add(self, watch: Watch) -> bool:
        """False if an identical (path, token) watch exists already."""
        for w in self.watches:
            if w.path == watch.path and w.token == watch.token:
                return False
        self.watches.append(watch)
        return True

    def remove(self, path: str, token: str) -> bool:
        for i, w in enumerate(self.watches):
            if w.path == path and w.token == token:
                del self.watches[i]
                return True
        return False

    def clear(self) -> None:
        self.watches.clear()

    def matching(self, event: Event) -> list[Watch]:
        return [w for w in self.watches if w.matches(event)]
