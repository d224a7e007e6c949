"""Declared vifs: ``[[vif]]`` tables of ncd.toml, attached to a domain by its name.

With xl, a guest's vifs are part of its domain config and come back at every boot;
here the backend daemon does it: for each declared vif, whenever a domain of that name
exists — at start, and at every ``@introduceDomain`` — it writes the vif's entries (as
``ncctl attach`` would, with this daemon's domain as the backend), once per domain: a
vif the operator detaches stays detached until the domain goes, as an ``xl
network-detach`` does. When the domain goes (``@releaseDomain``), the backend
discovery's sweep removes its entries (:func:`ncd.daemon.backend.reap_dead_domains`),
libxl's job on a real host, and this module forgets the domid, so a new domain of the
same name (a reboot: a new domid) gets the vif again.

Writing a guest's ``device/`` directory needs dom0's privilege (as libxl has): a driver
domain's daemon that declares vifs logs why each attach failed, once per domain.
A domain renamed to a declared name (``xl rename``, the end of a migration) is not
watched for: it gets its vifs at the next introduction or restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from ncd import domains, layout, vifspec
from ncd.config import DeclaredVif
from ncd.layout import AttachError
from ncd.parse import BadEntry
from ncd.xen.aio import Watch

log = logging.getLogger("ncd.declared")

WATCHES = ("@introduceDomain", "@releaseDomain")


class DeclaredVifs:
    """Keeps the declared vifs attached; :meth:`reconcile` is one pass, no waiting."""

    def __init__(self, xs: Any, domid: int, vifs: Sequence[DeclaredVif]) -> None:
        self.xs = xs
        self.domid = domid
        self.vifs = tuple(vifs)
        self.handled: set[tuple[int, int]] = set()  # (domid, index in vifs) done or refused
        self._warned: set[str] = set()

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def reconcile(self) -> None:
        """Attach every declared vif whose domain exists and was not handled yet."""
        try:
            names = domains.names(self.xs)
        except OSError as exc:  # a driver domain may not list /local/domain (EACCES)
            self._warn_once("names", "declared vifs: cannot list the domains: %s", exc)
            return
        alive = set(names)
        self.handled = {(d, i) for d, i in self.handled if d in alive}
        for i, vif in enumerate(self.vifs):
            found = sorted(d for d, n in names.items() if n == vif.domain)
            if len(found) > 1:
                ids = ", ".join(map(str, found))
                self._warn_once(
                    f"ambiguous {vif.domain} {ids}",
                    "declared vif for %r: domains %s share that name; attaching to none",
                    vif.domain,
                    ids,
                )
                continue
            for fe in found:
                if (fe, i) not in self.handled:
                    self.handled.add((fe, i))
                    self._attach(fe, vif)

    def _attach(self, fe: int, vif: DeclaredVif) -> None:
        what = f"declared vif {vif.domain!r} devid {vif.devid} (domain {fe})"
        if fe == self.domid:
            log.warning("%s: that is this daemon's own domain; not attached", what)
            return
        if layout.read_optional(self.xs, layout.backend_dir(self.domid, fe, vif.devid)) is not None:
            log.info("%s: already attached", what)
            return
        try:
            spec = vifspec.attach(self.xs, fe, vif.options, backend=self.domid, mac=vif.mac)
        except (AttachError, BadEntry, OSError) as exc:
            log.warning("%s: not attached: %s", what, exc)
            return
        log.info("%s: attached (mac %s, %s)", what, spec.mac, vif.spec)

    async def run(self) -> None:
        """Reconcile at start and after every burst of domain introductions/releases."""
        events: asyncio.Queue[object] = asyncio.Queue()
        watches = [Watch(self.xs, path, events) for path in WATCHES]
        try:
            for w in watches:
                w.start()  # each fires once at once: the first pass runs straight away
            log.info(
                "declared vifs: %d, for %s",
                len(self.vifs),
                ", ".join(sorted({v.domain for v in self.vifs})),
            )
            while True:
                await events.get()
                while not events.empty():
                    events.get_nowait()
                self.reconcile()
        finally:
            for w in watches:
                w.close()
