"""Multi-queue negotiation (docs/protocol.md, "Multi-queue"): how many channels a vif has.

As netif does (``xen/include/public/io/netif.h``, "Multiple transmit and receive
queues"): the backend writes ``multi-queue-max-queues`` in its own directory, the most
queues it takes; the frontend chooses ``min(its own limit, that, its CPUs)`` and, for
two or more, writes ``multi-queue-num-queues`` in its directory, then one vchan per
queue at ``queue-0`` .. ``queue-<N-1>``. A single queue is today's layout exactly: no
``multi-queue-num-queues`` key, the vchan at ``queue-0``, so either end without the
keys gets one queue. Which queue a frame takes is the sender's choice (netif: "a
function of the transmitting system", not negotiated); ncd's is the kernel's, by flow
hash (:mod:`ncd.tap`).

The peer's values are untrusted. The frontend, like netfront, reads a bad
``multi-queue-max-queues`` (not a number, 0, absurdly large) as "one queue" with one
log line; the backend, like netback, refuses a ``multi-queue-num-queues`` that is not
a number in 1..its maximum (the setup fails, naming the key) rather than guess.
"""

from __future__ import annotations

import os
import re

from ncd import parse
from ncd.layout import StoreOps, list_optional, read_optional

KEY_MAX_QUEUES = "multi-queue-max-queues"  # the backend's, in its directory
KEY_NUM_QUEUES = "multi-queue-num-queues"  # the frontend's, in its directory
QUEUES_MAX = 16  # the most queues ncd configures on its side (config [channel] max_queues)
PEER_MAX_QUEUES = 65535  # a backend may offer more than we take; beyond this it is garbage
_QUEUE_DIR = re.compile(r"queue-([0-9]{1,5})")  # layout.queue_dir's last component


def cpus() -> int:
    """CPUs this process may run on (netfront's default limit: one queue per CPU)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except OSError:  # pragma: no cover - Linux always has it
        return max(1, os.cpu_count() or 1)


def advertise(max_queues: int) -> dict[str, str]:
    """The backend's key (``max_queues`` 1: it takes a single queue, and says so)."""
    if not 1 <= max_queues <= QUEUES_MAX:
        raise ValueError(f"max_queues {max_queues} outside 1..{QUEUES_MAX}")
    return {KEY_MAX_QUEUES: str(max_queues)}


def frontend_count(
    peer_raw: bytes | None, own_max: int, ncpus: int, key: str = KEY_MAX_QUEUES
) -> tuple[int, str | None]:
    """Queues the frontend uses, from the backend's ``multi-queue-max-queues`` (raw,
    untrusted; None when absent), and the one line to log when that value was bad
    (then: one queue)."""
    if peer_raw is None:
        return 1, None
    try:
        peer = parse.uint(key, peer_raw, 1, PEER_MAX_QUEUES, max_digits=5)
    except parse.BadEntry as exc:
        return 1, f"{exc}: using one queue"
    return max(1, min(own_max, peer, ncpus)), None


def backend_count(peer_raw: bytes | None, our_max: int, key: str = KEY_NUM_QUEUES) -> int:
    """Queues the backend connects, from the frontend's ``multi-queue-num-queues`` (raw,
    untrusted; None when absent: one). Raises BadEntry naming the key for anything but
    a number in 1..``our_max`` (netback's "guest requested N queues, exceeding the
    maximum")."""
    if peer_raw is None:
        return 1
    return parse.uint(
        key, peer_raw, 1, our_max, max_digits=5, what=f"a number of queues (1..{our_max})"
    )


def read_backend_max(store: StoreOps, backend_dir: str) -> bytes | None:
    return read_optional(store, f"{backend_dir}/{KEY_MAX_QUEUES}")


def read_frontend_num(store: StoreOps, frontend_dir: str) -> bytes | None:
    return read_optional(store, f"{frontend_dir}/{KEY_NUM_QUEUES}")


def publish_num(store: StoreOps, frontend_dir: str, n: int) -> None:
    """The frontend's key for ``n`` queues: written for two or more, removed for one (a
    single queue is the layout without the key, as netfront writes it); the vchan
    directories of queues beyond ``n`` (a daemon killed while it had more) go too, so
    that what the backend reads is exactly this connection's."""
    path = f"{frontend_dir}/{KEY_NUM_QUEUES}"
    if n > 1:
        store.write(path, str(n))
    else:
        store.rm(path, missing_ok=True)
    for name in list_optional(store, frontend_dir):
        m = _QUEUE_DIR.fullmatch(name)
        if m and int(m.group(1)) >= n:
            store.rm(f"{frontend_dir}/{name}", missing_ok=True)
