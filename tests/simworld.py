"""Test helper: a running xensim world, and running commands as its domains."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from xensim.world import World


class SimWorld:
    """A world brought up for one test (or module) and torn down afterwards."""

    def __init__(self, directory: Path, domains: int = 2, broker_args: Sequence[str] = ()) -> None:
        self.world = World(directory)
        self.prefix = f"ncdt{os.getpid()}-d"
        self.world.up(domains, netns_prefix=self.prefix, broker_args=broker_args)

    @property
    def dir(self) -> Path:
        return self.world.dir

    def env(self, domid: int) -> dict[str, str]:
        return self.world.exec_env(domid)

    def argv(self, domid: int, cmd: Sequence[str]) -> list[str]:
        """argv that runs `cmd` as domain `domid` (its netns and its environment)."""
        return self.world.exec_argv(domid, cmd)

    def run(self, domid: int, cmd: Sequence[str], check: bool = True, timeout: float = 60,
            **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(domid, cmd), env=self.env(domid), text=True,
                              capture_output=True, check=check, timeout=timeout, **kw)

    def popen(self, domid: int, cmd: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(domid, cmd), env=self.env(domid), **kw)

    def down(self) -> None:
        self.world.down()
