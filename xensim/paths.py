"""Where a simulated world keeps its sockets, logs and per-domain runtime dirs.

One world lives in one directory (default ``/run/ncd-sim``)::

    WORLD/world.json                 state written by ``ncd-sim up``
    WORLD/broker.log, xenstored.log  daemon logs
    WORLD/dom<N>/hypervisor.sock     the broker, as seen from domain N
    WORLD/dom<N>/xenstored.sock      xenstored, as seen from domain N
    WORLD/dom<N>/run/                domain N's runtime directory

Domains share the filesystem but not the network namespace, so every socket is
a filesystem Unix socket; *which* socket a client connects to tells the server
which domain is asking.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_WORLD = Path("/run/ncd-sim")
NETNS_PREFIX = "ncd-dom"

# Environment understood by the shims and by ncd itself.
ENV_WORLD = "XENSIM_DIR"
ENV_DOMID = "XENSIM_DOMID"
ENV_HV_SOCKET = "XENSIM_HV_SOCKET"  # read by the shim libraries
ENV_XENSTORED = "XENSTORED_PATH"  # read by Xen's libxenstore
ENV_RUNTIME = "NCD_RUNTIME_DIR"


def world_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_WORLD)
    return Path(env) if env else DEFAULT_WORLD


def domain_dir(world: Path, domid: int) -> Path:
    return world / f"dom{domid}"


def hypervisor_socket(world: Path, domid: int) -> Path:
    return domain_dir(world, domid) / "hypervisor.sock"


def xenstored_socket(world: Path, domid: int) -> Path:
    return domain_dir(world, domid) / "xenstored.sock"


def runtime_dir(world: Path, domid: int) -> Path:
    return domain_dir(world, domid) / "run"


def netns_name(domid: int, prefix: str = NETNS_PREFIX) -> str:
    return f"{prefix}{domid}"


def shim_lib_dir() -> Path:
    """Directory holding the built libxengnttab.so.1 / libxenevtchn.so.1 shims."""
    return Path(__file__).resolve().parent / "lib"


def domain_env(world: Path, domid: int) -> dict[str, str]:
    """Environment that makes Xen-linked programs act as domain `domid` of `world`."""
    ld = str(shim_lib_dir())
    old = os.environ.get("LD_LIBRARY_PATH")
    return {
        ENV_WORLD: str(world),
        ENV_DOMID: str(domid),
        ENV_HV_SOCKET: str(hypervisor_socket(world, domid)),
        ENV_XENSTORED: str(xenstored_socket(world, domid)),
        ENV_RUNTIME: str(runtime_dir(world, domid)),
        "LD_LIBRARY_PATH": f"{ld}:{old}" if old else ld,
    }
