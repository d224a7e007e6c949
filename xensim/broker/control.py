"""Python client for the broker: domain lifecycle and statistics (dom0 only).

ctl = BrokerControl(world)
ctl.create_domain(1)
ctl.stats()[1]["grants"]
ctl.destroy_domain(1)     # SIGKILLs domain 1's processes, frees everything
"""

from __future__ import annotations

import array
import errno
import json
import os
import socket
import time
from pathlib import Path

from xensim import paths
from xensim.broker.proto import MAGIC, MAX_MSG, Kind, Op, pack_req, unpack_rsp


class BrokerError(OSError):
    """A request the broker refused; errno as the broker sent it."""


class BrokerControl:
    """A control connection on dom0's hypervisor socket."""

    def __init__(self, world: Path | str, timeout: float = 30.0) -> None:
        self.world = Path(world)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(paths.hypervisor_socket(self.world, 0)))
            self._call(Op.HELLO, (MAGIC, Kind.CONTROL))
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> BrokerControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: int, args: tuple[int, ...] = ()) -> tuple[tuple[int, ...], bytes]:
        self._sock.send(pack_req(op, args))
        msg = self._sock.recv(MAX_MSG)
        if not msg:
            raise BrokerError(errno.ECONNRESET, "broker closed the connection")
        err, _nfds, _count, vals, payload = unpack_rsp(msg)
        if err:
            raise BrokerError(err, f"{Op(op).name}{args}: {os.strerror(err)}")
        return vals, payload

    def create_domain(self, domid: int) -> Path:
        """Create domain `domid`; returns its hypervisor socket path."""
        self._call(Op.CREATE_DOMAIN, (domid,))
        return paths.hypervisor_socket(self.world, domid)

    def destroy_domain(self, domid: int) -> int:
        """Kill the domain's processes, wait for their handles to go, free the rest.

        Returns the number of processes that were SIGKILLed.
        """
        vals, _ = self._call(Op.DESTROY_DOMAIN, (domid,))
        return vals[0]

    def list_domains(self) -> list[int]:
        _, payload = self._call(Op.LIST_DOMAINS)
        return list(array.array("I", payload))

    def stats(self) -> dict[int, dict[str, int]]:
        """Per domain: grants, shared_pages, mappings, mapped_pages, ports, connections."""
        _, payload = self._call(Op.STATS)
        return {int(k): v for k, v in json.loads(payload).items()}


def wait_for_broker(world: Path | str, timeout: float = 10.0) -> None:
    """Block until the broker of `world` accepts control connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            BrokerControl(world, timeout=2.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
