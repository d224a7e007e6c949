"""Domains by name, as xl finds them: ``/local/domain/<domid>/name``.

A DOMAIN argument that is all decimal digits is a domid (xl's rule); anything else is a
name, looked up among the domains in xenstore. Unlike xl, which takes the first match,
a name two domains share is an error naming both.
"""

from __future__ import annotations

from . import layout, parse
from .layout import AttachError, StoreOps
from .parse import BadEntry


def names(store: StoreOps) -> dict[int, str]:
    """domid -> name of every domain in xenstore that has a readable, ASCII name."""
    out: dict[int, str] = {}
    for entry in layout.list_optional(store, "/local/domain"):
        try:
            domid = parse.domid("/local/domain", entry)
        except BadEntry:
            continue
        try:
            raw = layout.read_optional(store, f"{layout.domain_path(domid)}/name")
        except OSError:
            continue  # not ours to read (a driver domain sees few names)
        if raw is None:
            continue
        try:
            out[domid] = parse.text("name", raw)
        except BadEntry:
            continue
    return out


def named(store: StoreOps, name: str) -> list[int]:
    """The domids of the domains called ``name`` (normally one, or none)."""
    return sorted(d for d, n in names(store).items() if n == name)


def resolve(store: StoreOps, text: str, what: str = "domain") -> int:
    """A domid for DOMAIN ``text``: digits are a domid, else a domain's name.

    Raises :class:`AttachError` for an unknown or ambiguous name.
    """
    if text.isascii() and text.isdigit():
        return parse.domid(what, text)
    parse.text(what, text)
    found = named(store, text)
    if not found:
        raise AttachError(f"{what} {text!r}: no domain of that name")
    if len(found) > 1:
        ids = ", ".join(str(d) for d in found)
        raise AttachError(f"{what} {text!r}: ambiguous, domains {ids} have that name")
    return found[0]
