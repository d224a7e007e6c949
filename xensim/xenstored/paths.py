"""Path rules of docs/misc/xenstore.txt: characters, slashes, lengths, relative paths."""

from __future__ import annotations

import re

from .wire import REL_PATH_MAX

_VALID_CHARS = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_LOCAL_DOMAIN = re.compile(r"/local/domain/(\d{1,5})/")


def home(domid: int) -> str:
    return f"/local/domain/{domid}"


def canonicalize(path: str, domid: int) -> str:
    """Absolute paths and special ``@`` paths stay; others are relative to the caller's home."""
    if path.startswith("/") or path.startswith("@"):
        return path
    return f"{home(domid)}/{path}"


def is_valid(path: str) -> bool:
    """Xen's is_valid_nodename: absolute, no trailing or doubled slash, charset, length."""
    if not path.startswith("/"):
        return False
    if path.endswith("/") and path != "/":
        return False
    if "//" in path:
        return False
    local_off = 0
    m = _LOCAL_DOMAIN.match(path)
    if m and int(m.group(1)) <= 0xFFFFFFFF:
        local_off = m.end()
    if len(path) > local_off + REL_PATH_MAX:
        return False
    return _VALID_CHARS.match(path) is not None


def parent(path: str) -> str:
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def child(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def is_child(path: str, ancestor: str) -> bool:
    """True if ``path`` is ``ancestor`` or below it ('/' is everyone's ancestor)."""
    if ancestor == "/":
        return True
    return path == ancestor or path.startswith(ancestor + "/")
