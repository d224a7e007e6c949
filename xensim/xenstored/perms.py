"""Node permissions: ``n``/``r``/``w``/``b`` + domid entries, first entry = owner + default.

The access rule is Xen's ``perm_for_conn``: the privileged domain and the node's
owner (or a domain targeting the owner) get everything; otherwise the first
entry naming the caller (or its target) decides; otherwise the owner entry's
flags are the default for everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import XsError

NONE = 0
READ = 1
WRITE = 2
OWNER = 8
ALL = READ | WRITE | OWNER

_LETTER_TO_FLAGS = {"n": NONE, "r": READ, "w": WRITE, "b": READ | WRITE}
_FLAGS_TO_LETTER = {v: k for k, v in _LETTER_TO_FLAGS.items()}


@dataclass(frozen=True)
class Perm:
    domid: int
    flags: int

    def __str__(self) -> str:
        return f"{_FLAGS_TO_LETTER[self.flags & (READ | WRITE)]}{self.domid}"


Perms = tuple[Perm, ...]


_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _strtol0(text: str) -> int:
    """strtol(text, &end, 0) that must consume everything (xs_strings_to_perms).

    C's rules, not Python's int(): leading (never trailing) whitespace, one sign,
    ASCII digits only, no underscores, the value saturates at LONG_MIN/LONG_MAX."""
    if not text:
        raise XsError("EINVAL", "empty domid")
    body = text.lstrip(_C_SPACE)
    neg = body[:1] == "-"
    if body[:1] in ("+", "-"):
        body = body[1:]
    if body[:2] in ("0x", "0X") and body[2:3] and body[2:3] in _DIGITS[16]:
        base, body = 16, body[2:]
    else:
        base = 8 if body[:1] == "0" else 10
    if not body or any(c not in _DIGITS[base] for c in body):
        raise XsError("EINVAL", f"bad domid {text!r}")
    value = int(body, base)
    value = max(_LONG_MIN, min(-value if neg else value, _LONG_MAX))
    # struct xs_permissions.id is unsigned int
    return value & 0xFFFFFFFF


def parse_one(text: str) -> Perm:
    if not text or text[0] not in _LETTER_TO_FLAGS:
        raise XsError("EINVAL", f"bad permission {text!r}")
    return Perm(_strtol0(text[1:]), _LETTER_TO_FLAGS[text[0]])


def parse(texts: list[str]) -> Perms:
    if not texts:
        raise XsError("EINVAL", "no permissions")
    return tuple(parse_one(t) for t in texts)


def to_payload(perms: Perms) -> bytes:
    return b"".join(str(p).encode() + b"\0" for p in perms)


def for_domain(domid: int, perms: Perms, privileged: bool, target: int | None = None) -> int:
    """Access flags (READ|WRITE|OWNER) the caller ``domid`` has on a node with ``perms``."""
    owner = perms[0].domid
    if privileged or owner == domid or (target is not None and owner == target):
        return ALL
    for p in perms[1:]:
        if p.domid == domid or (target is not None and p.domid == target):
            return p.flags
    return perms[0].flags


def drop_domain(perms: Perms, domid: int) -> Perms:
    """Remove non-owner entries naming a domain that went away (a new domain with
    the same domid must not inherit them)."""
    return perms[:1] + tuple(p for p in perms[1:] if p.domid != domid)
