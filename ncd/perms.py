"""A xenstore permission entry: the one ``Perm`` type of ncd (no I/O, no bindings).

:mod:`ncd.xen.xenstore` returns and takes it; :mod:`ncd.layout` and the vchan's
xenstore entry build lists of it without loading the Xen libraries.
"""

from __future__ import annotations

from typing import NamedTuple


class Perm(NamedTuple):
    """One xenstore permission entry: ``perm`` is 'n' (none), 'r', 'w' or 'b' (both).

    In a permission list the first entry names the owner, and its ``perm`` applies to every
    domain not listed after it (as ``xenstore-chmod`` and libxl use it).
    """

    domid: int
    perm: str

    def __str__(self) -> str:
        return f"{self.perm}{self.domid}"
