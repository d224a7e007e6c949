"""A private Open vSwitch for tests: its own ovsdb-server and database in a directory of
the test's, ovs-vswitchd in a given network namespace (where the TAPs it bridges are),
never the system's; bridges on the userspace datapath (this kernel may have no
openvswitch module)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.conftest import have

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


def have_ovs() -> bool:
    return have("ovs-vsctl") and have("ovsdb-server") and have("ovs-vswitchd") and SCHEMA.exists()


class Ovs:
    """ovsdb-server (in this namespace; a Unix socket reaches every namespace) and
    ovs-vswitchd (in ``netns``) on a database of their own under ``d``."""

    def __init__(self, d: Path, netns: str) -> None:
        d.mkdir()
        self.dir = d
        self.db = f"unix:{d}/db.sock"
        self.env = {
            "OVS_RUNDIR": str(d),
            "OVS_LOGDIR": str(d),
            "OVS_DBDIR": str(d),
            "OVS_SYSCONFDIR": str(d),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        subprocess.run(["ovsdb-tool", "create", str(d / "conf.db"), str(SCHEMA)], check=True)
        self._spawn(
            [],
            [
                "ovsdb-server",
                str(d / "conf.db"),
                f"--remote=p{self.db}",
                f"--unixctl={d}/ovsdb-server.ctl",
                f"--log-file={d}/ovsdb-server.log",
                "--no-chdir",
            ],
        )
        self.vsctl("--retry", "--no-wait", "init")
        self._spawn(
            ["ip", "netns", "exec", netns],
            [
                "ovs-vswitchd",
                self.db,
                f"--unixctl={d}/ovs-vswitchd.ctl",
                f"--log-file={d}/ovs-vswitchd.log",
                "--no-chdir",
            ],
        )

    def _spawn(self, prefix: list[str], cmd: list[str]) -> None:
        with open(self.dir / f"{cmd[0]}.out", "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    [*prefix, *cmd], env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL
                )
            )

    def vsctl(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(
            ["ovs-vsctl", f"--db={self.db}", "--timeout=30", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"ovs-vsctl {' '.join(args)}: {r.stderr}")
        return r.stdout.strip()

    def ports(self) -> set[str]:
        """Every Port row's name (bridges' own internal ports included)."""
        out = self.vsctl("--bare", "--columns=name", "list", "Port")
        return set(out.split())

    def close(self) -> None:
        for br in self.vsctl("list-br", check=False).split():
            self.vsctl("--if-exists", "del-br", br, check=False)
        for p in reversed(self.procs):  # ovs-vswitchd first, then its database
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
