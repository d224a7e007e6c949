"""The database operations of the protocol, on a :class:`~.tree.View`.

Each function validates its input, checks permissions and quotas, changes the
view atomically (everything is checked before the first change) and returns
the watch events to fire. Errors are :class:`~.wire.XsError` with Xen's names
and Xen's choice between them (ENOENT vs EACCES depends on what the nearest
existing ancestor lets the caller do, so that errors do not leak information).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import paths
from .perms import OWNER, READ, WRITE, Perm, Perms, for_domain
from .tree import Node, View
from .watches import Event
from .wire import PAYLOAD_MAX, XsError

# xenstored defaults (dom0 is exempt)
MAX_NODES_PER_DOMAIN = 1000  # quota_nb_entry_per_domain
MAX_NODE_SIZE = 2048  # quota_max_entry_size (record size, ENOSPC when reached)
MAX_PERMS_PER_NODE = 5  # quota_nb_perms_per_node


@dataclass(frozen=True)
class Caller:
    domid: int
    privileged: bool
    target: int | None = None

    def access(self, perms: Perms) -> int:
        return for_domain(self.domid, perms, self.privileged, self.target)


def _nearest_ancestor(view: View, path: str) -> Node | None:
    while path != "/":
        path = paths.parent(path)
        node = view.get(path)
        if node is not None:
            return node
    return None


def get_node(view: View, caller: Caller, path: str, want: int) -> Node:
    if not paths.is_valid(path):
        raise XsError("EINVAL", f"invalid path {path!r}")
    node = view.get(path)
    if node is not None and caller.access(node.perms) & want == want:
        return node
    err = "ENOENT" if node is None else "EACCES"
    anc = _nearest_ancestor(view, path)
    if anc is None or not caller.access(anc.perms) & want:
        err = "EACCES"
    raise XsError(err, path)


def _check_size(caller: Caller, node: Node) -> None:
    if not caller.privileged and node.record_size() >= MAX_NODE_SIZE:
        raise XsError("ENOSPC", "node size quota")


def _parent_perms(view: View, path: str) -> tuple[Perms, ...]:
    if path == "/":
        return ()
    parent = view.get(paths.parent(path))
    return (parent.perms,) if parent is not None else ()


def _create(view: View, caller: Caller, path: str, value: bytes) -> Node:
    """Create ``path`` and its missing parents (Xen's construct_node/create_node)."""
    missing = [path]
    parent_path = paths.parent(path)
    parent = view.get(parent_path)
    while parent is None:
        if parent_path == "/":
            raise XsError("EIO", "no root node")
        missing.append(parent_path)
        parent_path = paths.parent(parent_path)
        parent = view.get(parent_path)
    missing.reverse()
    writes: list[tuple[str, Node]] = []
    owned = view.entries(caller.domid)
    top = parent
    for name in missing:
        if not caller.privileged and owned >= MAX_NODES_PER_DOMAIN:
            raise XsError("ENOSPC", "node quota")
        perms = top.perms
        if not caller.privileged:
            perms = (Perm(caller.domid, perms[0].flags),) + perms[1:]
            owned += 1
        top = top.with_child(paths.basename(name))
        writes.append((parent_path, top))
        new = Node(value if name == path else b"", perms)
        writes.append((name, new))
        parent_path, top = name, new
    # Deduplicate: each created node is written as a parent again with its child.
    final: dict[str, Node] = {}
    for name, node in writes:
        final[name] = node
    for node in final.values():
        _check_size(caller, node)
    for name, node in final.items():
        view.put(name, node)
    return final[path]


def read(view: View, caller: Caller, path: str) -> bytes:
    return get_node(view, caller, paths.canonicalize(path, caller.domid), READ).value


def write(view: View, caller: Caller, path: str, value: bytes) -> list[Event]:
    name = paths.canonicalize(path, caller.domid)
    try:
        node = get_node(view, caller, name, WRITE)
    except XsError as e:
        if e.name != "ENOENT":
            raise
        node = _create(view, caller, name, value)
    else:
        node = replace(node, value=value)
        _check_size(caller, node)
        view.put(name, node)
    return [Event(name, False, (node.perms, *_parent_perms(view, name)))]


def mkdir(view: View, caller: Caller, path: str) -> list[Event]:
    name = paths.canonicalize(path, caller.domid)
    try:
        get_node(view, caller, name, WRITE)
        return []
    except XsError as e:
        if e.name != "ENOENT":
            raise
    node = _create(view, caller, name, b"")
    return [Event(name, False, (node.perms, *_parent_perms(view, name)))]


def remove_tree(view: View, name: str) -> list[Event]:
    """Delete ``name`` and everything below it, children first; unlink it from its parent."""
    events: list[Event] = []

    def walk(path: str, node: Node, parent_perms: Perms) -> None:
        for c in node.children:
            sub = view.get(paths.child(path, c))
            if sub is not None:
                walk(paths.child(path, c), sub, node.perms)
        view.delete(path)
        events.append(Event(path, path != name, (node.perms, parent_perms)))

    parent_path = paths.parent(name)
    parent = view.get(parent_path)
    node = view.get(name)
    if parent is None or node is None:
        raise XsError("EINVAL", f"cannot remove {name!r}")
    walk(name, node, parent.perms)
    view.put(parent_path, parent.without_child(paths.basename(name)))
    return events


def rm(view: View, caller: Caller, path: str) -> list[Event]:
    name = paths.canonicalize(path, caller.domid)
    try:
        get_node(view, caller, name, WRITE)
    except XsError as e:
        if e.name == "ENOENT" and view.get(paths.parent(name)) is not None:
            return []
        raise
    if name == "/":
        raise XsError("EINVAL", "cannot remove /")
    return remove_tree(view, name)


def directory(view: View, caller: Caller, path: str) -> bytes:
    node = get_node(view, caller, paths.canonicalize(path, caller.domid), READ)
    payload = node.children_payload()
    if len(payload) > PAYLOAD_MAX:
        raise XsError("E2BIG", "use DIRECTORY_PART")
    return payload


def directory_part(view: View, caller: Caller, path: str, offset: int) -> bytes:
    """One chunk of the child list from byte ``offset`` (Xen's send_directory_part)."""
    node = get_node(view, caller, paths.canonicalize(path, caller.domid), READ)
    gen = str(node.generation).encode() + b"\0"
    children = node.children_payload()
    if offset < 0 or offset >= len(children):
        return gen + b"\0"
    maxlen = PAYLOAD_MAX - len(gen) - 1
    length = 0
    pos = offset
    while True:
        end = children.find(b"\0", pos)
        size = end - pos
        if length + size >= maxlen:
            break
        length += size + 1
        pos += size + 1
        if offset + length == len(children):
            break
    data = gen + children[offset : offset + length]
    if offset + length == len(children):
        data += b"\0"
    return data


def get_perms(view: View, caller: Caller, path: str) -> Perms:
    return get_node(view, caller, paths.canonicalize(path, caller.domid), READ).perms


def check_perm_count(caller: Caller, perms: Perms) -> None:
    if not caller.privileged and len(perms) > MAX_PERMS_PER_NODE:
        raise XsError("ENOSPC", "too many permission entries")


def set_perms(view: View, caller: Caller, path: str, perms: Perms) -> list[Event]:
    name = paths.canonicalize(path, caller.domid)
    node = get_node(view, caller, name, WRITE | OWNER)
    if not caller.privileged and perms[0].domid != node.owner:
        raise XsError("EPERM", "only the privileged domain may change the owner")
    old = node.perms
    node = replace(node, perms=perms)
    _check_size(caller, node)
    view.put(name, node)
    return [Event(name, False, (old, perms, *_parent_perms(view, name)))]
