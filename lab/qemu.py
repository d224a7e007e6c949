"""One QEMU (TCG) running Xen 4.17 with a PV dom0: command line, start, stop.

* COM1 (Xen's console: hypervisor, dom0 kernel and init messages) goes to a file;
* COM2 is a Unix socket carrying the dom0 agent's framed commands (lab/agent.py);
  dom0's kernel sees it as ttyS1.

KVM on this kind of machine cannot run Xen, so this is TCG with ``-cpu qemu64``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.images import Images

XEN_ARGS = (
    "console=com1 com1=115200,8n1 dom0_mem={dom0_mem}M,max:{dom0_mem}M "
    "dom0_max_vcpus=2 bootscrub=0 loglvl=all guest_loglvl=all noreboot"
)
DOM0_ARGS = "console=hvc0 earlyprintk=xen rdinit=/init loglevel=6 ncdlab.agent=/dev/ttyS1"


@dataclass
class QemuConfig:
    memory_mb: int = 1792  # dom0 768 MB + two 320 MB guests + Xen
    dom0_mem_mb: int = 768
    smp: int = 2
    extra_xen_args: str = ""
    extra_dom0_args: str = ""


@dataclass
class Qemu:
    images: Images
    workdir: Path
    config: QemuConfig = field(default_factory=QemuConfig)
    proc: subprocess.Popen[bytes] | None = None
    agent_sock: socket.socket | None = None
    started_at: float = 0.0

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    def command(self) -> list[str]:
        c = self.config
        xen_args = XEN_ARGS.format(dom0_mem=c.dom0_mem_mb) + (
            " " + c.extra_xen_args if c.extra_xen_args else ""
        )
        dom0_args = DOM0_ARGS + (" " + c.extra_dom0_args if c.extra_dom0_args else "")
        if "," in dom0_args:
            raise ValueError("QEMU splits -initrd modules on commas: none in dom0's args")
        sock = self.workdir / "agent.sock"
        return [
            "qemu-system-x86_64",
            "-accel",
            "tcg,thread=multi",
            "-machine",
            "pc",
            "-cpu",
            "qemu64",
            "-m",
            str(c.memory_mb),
            "-smp",
            str(c.smp),
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-chardev",
            f"file,id=com1,path={self.serial_log}",
            "-serial",
            "chardev:com1",
            "-chardev",
            f"socket,id=com2,path={sock},server=on,wait=on",
            "-serial",
            "chardev:com2",
            "-kernel",
            str(self.images.xen),
            "-append",
            xen_args,
            "-initrd",
            f"{self.images.vmlinuz} {dom0_args},{self.images.dom0_initrd}",
        ]

    def start(self) -> socket.socket:
        """Start QEMU; returns the connected agent socket (COM2)."""
        if shutil.which("qemu-system-x86_64") is None:
            raise RuntimeError("qemu-system-x86_64 missing: run lab/run (installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        sock_path = self.workdir / "agent.sock"
        if sock_path.exists():
            sock_path.unlink()
        self.started_at = time.monotonic()
        with self.qemu_log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited at once: {self.qemu_log.read_text()[-2000:]}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(sock_path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("QEMU did not open its agent socket") from None
                time.sleep(0.1)
        self.agent_sock = s
        return s

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> int | None:
        if not self.alive() or self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.agent_sock is not None:
            self.agent_sock.close()
            self.agent_sock = None
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.proc = None
        sock_path = self.workdir / "agent.sock"
        if sock_path.exists():
            sock_path.unlink()

    def serial_tail(self, chars: int = 6000) -> str:
        try:
            return self.serial_log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
