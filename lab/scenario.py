"""The lab scenario on real Xen: boot, guest, vchan transfers, kernel path, daemon.

Every step records what it saw in ``report`` (a JSON-able dict); a failing check
raises :class:`LabError` with the command's output, and the driver in
``lab/__main__.py`` then collects every log it can.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import profile
from lab.console import Console, LabError, Result
from lab.images import Images
from lab.qemu import Qemu, QemuConfig

GUEST_NAME = "labguest"
GUEST2_NAME = "labguest2"
GUEST_CFG = """name = "{name}"
type = "pv"
kernel = "/boot/vmlinux"
ramdisk = "/boot/domu.cpio.gz"
extra = "console=hvc0 rdinit=/init loglevel=6"
memory = {mem}
vcpus = 1
vif = []
disk = []
on_poweroff = "destroy"
on_crash = "preserve"
"""
NCD_VCHAN = "python3 -m ncd.tools.ncd_vchan"
VSP = "vchan-socket-proxy"
KERNEL_NET = ("198.18.1.1", "198.18.1.2", 24)
NCD_NET = ("198.18.2.1", "198.18.2.2", 24)
NCD_MAC = "00:16:3e:5e:00:02"
KERNEL_MAC = "00:16:3e:5e:00:01"
IPERF_SECS = 5
# forwarding scenarios: guest1 <-> guest2 on dom0's switches sw0 (memcpy) and swg
# (grant copy); dom0 bridge <- guest1's `ncd driver` (switch "up") <- guest2


@dataclass(frozen=True)
class SwitchPlan:
    """One of dom0's switches in the switch scenario: guest 1's and guest 2's devid,
    addresses (guest 1, guest 2, prefix) and MACs on it."""

    name: str
    copy: str  # its forward_copy
    devids: tuple[int, int]
    net: tuple[str, str, int]
    macs: tuple[str, str]


SWITCHES = (
    SwitchPlan(
        "sw0",
        "memcpy",
        (1, 0),
        ("198.18.3.1", "198.18.3.2", 24),
        ("00:16:3e:5e:01:01", "00:16:3e:5e:01:02"),
    ),
    SwitchPlan(
        "swg",
        "grant",
        (4, 2),
        ("198.18.6.1", "198.18.6.2", 24),
        ("00:16:3e:5e:03:01", "00:16:3e:5e:03:02"),
    ),
)
# appended to dom0's /etc/ncd/ncd.toml (the package's, every default) before any daemon
# starts: both switches declared with their copy mode, whatever the default is
DOM0_CONFIG = "".join(
    f'\n[switch.{sw.name}]  # the switch scenario\nforward_copy = "{sw.copy}"\n' for sw in SWITCHES
)
FWD_IPERF_PORT = 5319  # tcpxfer uses 5310-5313
FWD_IPERF_SECS = 4
HOP_NET = ("198.18.4.1", "198.18.4.3", 24)  # dom0's bridge ncbr0, guest 2
HOP_BRIDGE = "ncbr0"
HOP_MACS = ("00:16:3e:5e:02:01", "00:16:3e:5e:02:02")
FWD_PING_COUNT = 5
# the profile step (opt-in): guest 1's ncd vif in xenbr0 beside the kernel path's addresses
PROFILE_DEVID = 5
PROFILE_MAC = "00:16:3e:5e:00:05"
PROFILE_ADDR = "198.18.1.5"
PROFILE_PORT = 5205
PROFILE_SECS = 10  # iperf3 run
PROFILE_WINDOW = (3.0, 5.0)  # seconds into the run, seconds long


def log(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


@dataclass
class Lab:
    images: Images
    workdir: Path
    mb: int = 4
    vsp_baseline: bool = False
    qemu_config: QemuConfig = field(default_factory=QemuConfig)
    report: dict[str, Any] = field(default_factory=dict)
    qemu: Qemu | None = None
    con: Console | None = None
    domid: int | None = None
    domid2: int | None = None
    two_guests: bool = False
    fwd_mb: int = 4
    profile_rings: tuple[int, ...] = (131072, 1048576)  # ring_bytes the profile step tries
    profile_tso_rtt_log: int | None = None  # and the first ring again with this sysctl
    # daemons running: domid -> (role, pid); vifs attached: (backend, frontend, devid)
    daemons: dict[int, tuple[str, int]] = field(default_factory=dict)
    vifs: set[tuple[int, int, int]] = field(default_factory=set)

    # ------------------------------------------------------------ plumbing
    @property
    def c(self) -> Console:
        if self.con is None:
            raise LabError("lab not booted")
        return self.con

    @property
    def guest_id(self) -> int:
        if self.domid is None:
            raise LabError("no guest")
        return self.domid

    @property
    def guest2_id(self) -> int:
        if self.domid2 is None:
            raise LabError("no second guest")
        return self.domid2

    def on(self, dom: int, cmd: str, timeout: float = 60, what: str = "") -> Result:
        """Run ``cmd`` in domain ``dom`` (0: dom0, else a guest); must succeed."""
        if dom == 0:
            return self.dom0(cmd, timeout, what)
        return self.c.guest(dom, cmd, timeout).check(what)

    def try_on(self, dom: int, cmd: str, timeout: float = 60) -> Result:
        return self.c.run(cmd, timeout) if dom == 0 else self.c.guest(dom, cmd, timeout)

    def submit_on(self, dom: int, cmd: str, timeout: float) -> str:
        if dom == 0:
            return self.c.submit(cmd, timeout)
        return self.c.submit(self.c.guest_cmd(dom, cmd, timeout), timeout + 20)

    def dom0(self, cmd: str, timeout: float = 60, what: str = "") -> Result:
        return self.c.run(cmd, timeout).check(what)

    def guest(self, cmd: str, timeout: float = 60, what: str = "") -> Result:
        return self.c.guest(self.guest_id, cmd, timeout).check(what)

    def run_in(self, where: str, cmd: str, timeout: float) -> str:
        """Submit ``cmd`` in 'dom0' or 'guest' without waiting; returns the request id."""
        if where == "dom0":
            return self.c.submit(cmd, timeout)
        return self.c.submit(self.c.guest_cmd(self.guest_id, cmd, timeout), timeout + 20)

    # ------------------------------------------------------------ boot
    def boot(self, tries: int = 2, hello_timeout: float = 240) -> None:
        for attempt in range(1, tries + 1):
            wd = self.workdir / f"boot{attempt}"
            self.qemu = Qemu(self.images, wd, self.qemu_config)
            log(f"boot attempt {attempt}: QEMU (TCG), logs in {wd}")
            sock = self.qemu.start()
            self.con = Console(sock, wd / "transcript.log")
            if self.con.wait_hello(hello_timeout):
                secs = round(self.qemu.elapsed(), 1)
                log(f"dom0 agent up after {secs}s")
                self.report["boot"] = {"attempt": attempt, "dom0_agent_secs": secs}
                return
            log(f"boot attempt {attempt} failed; serial log tail:\n{self.qemu.serial_tail(3000)}")
            self.shutdown()
        raise LabError(f"dom0 did not come up in {tries} attempts (logs in {self.workdir})")

    def shutdown(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
        if self.qemu is not None:
            self.report.setdefault("qemu_rss_mb", self.qemu.rss_mb())
            self.qemu.stop()

    # ------------------------------------------------------------ dom0 + guest
    def check_dom0(self) -> None:
        r = self.dom0(
            "xl info | grep -E '^(xen_version|total_memory|nr_cpus)'; xl list", what="xl info"
        )
        self.report["xl_info"] = r.out
        self.dom0(f"printf %s {shlex.quote(DOM0_CONFIG)} >> /etc/ncd/ncd.toml", 30, "dom0 ncd.toml")
        # ncd's cffi modules must load Xen's own libraries, not xensim's shims.
        code = (
            "import ncd.xen._lib, ncd._hotpath, uvloop, pyroute2, prometheus_client;"
            "print(open('/proc/self/maps').read())"
        )
        maps = self.dom0(f"python3 -c {shlex.quote(code)}", what="ncd imports").out
        libs = sorted(
            {
                ln.split()[-1]
                for ln in maps.splitlines()
                if "libxen" in ln and ln.split()[-1].startswith("/")
            }
        )
        self.report["dom0_xen_libs"] = libs
        if any("sim" in lib for lib in libs) or not any("libxengnttab" in lib for lib in libs):
            raise LabError(f"ncd did not load Xen's own libraries: {libs}")

    def create_guest(self, name: str, mem_mb: int) -> int:
        cfg = GUEST_CFG.format(name=name, mem=mem_mb)
        self.dom0(f"printf %s {shlex.quote(cfg)} > /etc/xen/{name}.cfg")
        self.dom0(f"xl create /etc/xen/{name}.cfg", 180, f"xl create {name}")
        return int(self.dom0(f"xl domid {name}").out.strip())

    def start_guest(self, mem_mb: int = 320) -> None:
        """Guest 1 (and, for the forwarding scenarios, guest 2: created right after it,
        both boot at once)."""
        t0 = time.monotonic()
        self.domid = self.create_guest(GUEST_NAME, mem_mb)
        if self.two_guests:
            self.domid2 = self.create_guest(GUEST2_NAME, mem_mb)
        self.dom0(f"python3 /lab/agent.py guest-wait {self.domid} 240", 260, "guest agent")
        secs = round(time.monotonic() - t0, 1)
        log(f"guest {GUEST_NAME} (domid {self.domid}) agent up {secs}s after xl create")
        self.report["guest"] = {"domid": self.domid, "agent_secs_after_create": secs}
        if self.domid2 is not None:
            self.dom0(f"python3 /lab/agent.py guest-wait {self.domid2} 240", 260, "guest 2 agent")
            secs2 = round(time.monotonic() - t0, 1)
            log(f"guest {GUEST2_NAME} (domid {self.domid2}) agent up {secs2}s after xl create")
            self.report["guest2"] = {"domid": self.domid2, "agent_secs_after_create": secs2}
        maps = self.guest(
            'python3 -c "import ncd.xen._lib, ncd._hotpath;'
            "print(open('/proc/self/maps').read())\"",
            120,
            "guest ncd imports",
        ).out
        libs = sorted({ln.split()[-1] for ln in maps.splitlines() if "libxen" in ln})
        self.report["guest_xen_libs"] = libs

    # ------------------------------------------------------------ observations
    def observe_xen(self) -> None:
        """Facts xensim must match: permissions, errors, limits as real Xen shows them."""
        d = self.guest_id
        facts: dict[str, Any] = {}
        r = self.guest(f"python3 /lab/xsprobe.py {d}", 120, "xenstore probes")
        facts["guest_xenstore"] = [
            json.loads(ln) for ln in r.out.splitlines() if ln.startswith("{")
        ]
        probes = {
            "dom0: xenstore-ls -p guest home": f"xenstore-ls -p /local/domain/{d} | head -60",
            "grant device limits (same in guest)": "grep . /sys/module/xen_gntalloc/parameters/* "
            "/sys/module/xen_gntdev/parameters/*",
            "xl info caps": "xl info | grep -iE 'xen_caps|virt_caps|xen_version'",
            "xenstored quotas": "xenstore-control quota 2>&1 || true",
        }
        for name, cmd in probes.items():
            r = self.c.run(cmd, 60)
            facts[name] = f"rc={r.rc}\n{r.out.strip()}\n{r.err.strip()}".strip()
        self.report["xen_facts"] = facts

    # ------------------------------------------------------------ vchan
    def vchan_transfer(
        self, *, sender: str, server: str, server_tool: str, client_tool: str, tag: str, mb: int
    ) -> dict[str, Any]:
        """``mb`` MB from ``sender`` to the other side; ``server`` owns the vchan."""
        d = self.guest_id
        receiver = "guest" if sender == "dom0" else "dom0"
        client = "guest" if server == "dom0" else "dom0"
        server_home = 0 if server == "dom0" else d
        path = f"/local/domain/{server_home}/data/lab-vchan-{tag}"
        peer = {"dom0": d, "guest": 0}
        tools = {server: (server_tool, "server"), client: (client_tool, "client")}
        size = mb << 20
        tx, rx = f"/tmp/tx-{tag}", f"/tmp/rx-{tag}"
        sha_tx = self.run_where(
            sender, f"head -c {size} /dev/urandom > {tx} && sha256sum {tx} | cut -d' ' -f1"
        ).out.strip()

        def tool_cmd(where: str) -> str:
            tool, mode = tools[where]
            base = NCD_VCHAN if tool == "ncd" else f"{VSP} -m"
            if tool == "ncd":
                return f"{base} {mode} {peer[where]} {path}"
            return f"{base} {mode} {peer[where]} {path} -"

        timed = (
            "t0=$(cut -d' ' -f1 /proc/uptime); {cmd}; rc=$?; "
            "t1=$(cut -d' ' -f1 /proc/uptime); echo \"secs $t0 $t1\" >&2; "
        )
        send_cmd = timed.format(cmd=f"{tool_cmd(sender)} < {tx} > /dev/null") + "exit $rc"
        hold = f"/tmp/hold-{tag}"
        recv_cmd = (
            f"rm -f {hold}; mkfifo {hold}; sleep 900 > {hold} 2>/dev/null & h=$!; "
            + timed.format(cmd=f"{tool_cmd(receiver)} < {hold} > {rx}")
            + f"kill $h 2>/dev/null; rm -f {hold}; "
            f"echo $(sha256sum {rx} | cut -d' ' -f1) $(wc -c < {rx}); exit $rc"
        )
        cmds = {sender: send_cmd, receiver: recv_cmd}
        timeout = 120 + 60 * mb
        ids = {server: self.run_in(server, cmds[server], timeout)}
        self.dom0(
            f"i=0; until xenstore-read {path}/event-channel >/dev/null 2>&1; do "
            f"i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done",
            90,
            f"vchan server {tag} publishing {path}",
        )
        ids[client] = self.run_in(client, cmds[client], timeout)
        sender_tool = tools[sender][0]
        if sender_tool == "vsp":
            # vchan-socket-proxy does not close the vchan at the end of its input: wait
            # until everything arrived, then stop it (the receiver then sees the close).
            self.run_where(
                receiver,
                f"i=0; until [ -f {rx} ] && [ $(wc -c < {rx}) -ge {size} ];"
                f" do i=$((i+1)); [ $i -gt {timeout * 5} ] && exit 1; "
                "sleep 0.2; done",
                timeout + 10,
            )
            self.run_where(sender, "pkill -f '^vchan-socket-proxy '; true")
        res = {w: self.c.wait(i, cmds[w], timeout + 20) for w, i in ids.items()}
        rec: dict[str, Any] = {
            "tag": tag,
            "sender": sender,
            "server": server,
            "server_tool": server_tool,
            "client_tool": client_tool,
            "bytes": size,
            "sha256_sent": sha_tx,
            "rc": {w: r.rc for w, r in res.items()},
        }
        fields = res[receiver].out.split()
        rec["sha256_received"], rec["bytes_received"] = (fields + ["", "0"])[:2]
        for w, r in res.items():
            m = re.search(r"secs ([\d.]+) ([\d.]+)", r.err)
            if m:
                rec[f"{w}_secs"] = round(float(m.group(2)) - float(m.group(1)), 2)
        rcs_ok = res[receiver].rc == 0 and (res[sender].rc == 0 or sender_tool == "vsp")
        ok = rcs_ok and rec["sha256_received"] == sha_tx and int(rec["bytes_received"]) == size
        rec["ok"] = ok
        secs = rec.get(f"{client}_secs")
        if secs:
            rec["client_mb_per_s"] = round(mb / secs, 2)
        log(
            f"vchan {tag}: {mb} MB {sender}->{receiver}, {server_tool} server in {server}, "
            f"{client_tool} client in {client}: {'OK' if ok else 'FAILED'}, "
            f"{server} {rec.get(server + '_secs')}s, {client} {secs}s"
        )
        if not ok:
            rec["stderr"] = {w: r.err[-2000:] for w, r in res.items()}
        self.run_where(sender, f"rm -f {tx}")
        self.run_where(receiver, f"rm -f {rx}")
        return rec

    def run_where(self, where: str, cmd: str, timeout: float = 120) -> Result:
        return self.dom0(cmd, timeout) if where == "dom0" else self.guest(cmd, timeout)

    def vchan_steps(self) -> None:
        # (sender, server side, server tool, client tool, MB): ncd <-> ncd in both roles and
        # directions, then interop with Debian's libxenvchan (vchan-socket-proxy, "vsp")
        # (and, on request, a vsp <-> vsp baseline). Interop runs move less: vsp's server
        # mode is slow under TCG.
        big, small = self.mb, max(1, self.mb // 4)
        plan = [
            ("dom0", "dom0", "ncd", "ncd", big),
            ("guest", "dom0", "ncd", "ncd", big),
            ("dom0", "guest", "ncd", "ncd", big),
            ("guest", "guest", "ncd", "ncd", big),
            ("dom0", "dom0", "ncd", "vsp", small),
            ("guest", "dom0", "vsp", "ncd", small),
            ("dom0", "guest", "vsp", "ncd", small),
            ("guest", "guest", "ncd", "vsp", small),
        ]
        if self.vsp_baseline:
            # vsp <-> vsp: slow (30 s .. >3 min per MB) and flaky under TCG; see docs/lab.md
            plan += [("guest", "dom0", "vsp", "vsp", small), ("dom0", "dom0", "vsp", "vsp", small)]
        results = []
        for i, (sender, server, stool, ctool, mb) in enumerate(plan):
            results.append(
                self.vchan_transfer(
                    sender=sender,
                    server=server,
                    server_tool=stool,
                    client_tool=ctool,
                    tag=str(i),
                    mb=mb,
                )
            )
        self.report["vchan"] = results
        bad = [r for r in results if not r["ok"]]
        if bad:
            raise LabError(
                f"{len(bad)} vchan transfer(s) failed: " + json.dumps(bad, indent=1)[:4000]
            )

    # ------------------------------------------------------------ kernel netback path
    def netfront_up(self) -> str:
        """Bridge ``xenbr0`` (``KERNEL_NET``'s dom0 address) and a kernel vif for guest 1
        (``xl network-attach``, stock hotplug script); returns the guest's netfront NIC,
        addressed and up."""
        a0, a1, plen = KERNEL_NET
        self.dom0(
            "modprobe xen-netback && modprobe bridge && "
            "(brctl addbr xenbr0 2>/dev/null || true) && "
            f"ip addr replace {a0}/{plen} dev xenbr0 && ip link set xenbr0 up",
            60,
            "bridge xenbr0",
        )
        before = set(self.guest("ls /sys/class/net").out.split())
        self.dom0(
            f"xl network-attach {GUEST_NAME} bridge=xenbr0 mac={KERNEL_MAC}",
            120,
            "xl network-attach",
        )
        nic = ""
        for _ in range(100):
            now = set(self.guest("ls /sys/class/net").out.split())
            new = sorted(now - before - {"lo"})
            if new:
                nic = new[0]
                break
            time.sleep(1)
        if not nic:
            raise LabError("netfront interface did not appear in the guest")
        self.guest(
            f"ip addr add {a1}/{plen} dev {nic} && ip link set {nic} up",
            60,
            "guest netfront address",
        )
        return nic

    def kernel_path(self) -> None:
        a0, a1, plen = KERNEL_NET
        nic = self.netfront_up()
        ping_g = self.dom0(f"ping -c 10 -i 0.2 -W 5 {a1}", 90, "ping dom0->guest (vif)").out
        ping_0 = self.guest(f"ping -c 10 -i 0.2 -W 5 {a0}", 90, "ping guest->dom0 (vif)").out
        self.guest("iperf3 -s -D -p 5201 --logfile /tmp/iperf3-s.log", 60, "iperf3 -s")
        time.sleep(2)
        up = self.dom0(
            f"iperf3 -c {a1} -p 5201 -t {IPERF_SECS} -J", 120, "iperf3 dom0->guest (vif)"
        ).out
        down = self.dom0(
            f"iperf3 -c {a1} -p 5201 -t {IPERF_SECS} -R -J", 120, "iperf3 guest->dom0 (vif)"
        ).out
        self.guest("killall iperf3 || true")
        self.report["kernel_path"] = {
            "guest_nic": nic,
            "ping_dom0_to_guest": ping_summary(ping_g),
            "ping_guest_to_dom0": ping_summary(ping_0),
            "iperf3_dom0_to_guest_mbit": iperf_mbit(up),
            "iperf3_guest_to_dom0_mbit": iperf_mbit(down),
        }
        log(f"kernel path: {self.report['kernel_path']}")
        self.dom0(f"xl network-detach {GUEST_NAME} 0", 120, "xl network-detach")

    # ------------------------------------------------------------ profile (opt-in step)
    def profile_path(self) -> None:
        """dom0 <-> guest 1 with iperf3 each way through kernel netback, then through ncd
        at each ring size in ``profile_rings`` (the guest's frontend restarted with
        ``--ring-bytes``), then netback again; both paths through bridge ``xenbr0`` with
        the same addresses; per run a CPU/thread/interrupt window of both domains
        (lab/profile.py), xentop and the vif's counters. Numbers in ``report["profile"]``
        and one line per run."""
        d = self.guest_id
        plen = KERNEL_NET[2]
        rows: list[dict[str, Any]] = []
        self.report["profile"] = {"rows": rows}
        rows += self.profile_netback()
        for be, fe, devid in sorted(self.vifs):  # the daemon step's vif (rate-limited)
            if fe == d:
                self.detach(fe, devid, be)
        self.ensure_daemon(0, "backend")
        tap, ftap = f"ncvif{d}.{PROFILE_DEVID}", f"nc{PROFILE_DEVID}"
        variants: list[tuple[int, int | None]] = [(r, None) for r in self.profile_rings]
        if self.profile_tso_rtt_log is not None:
            variants.append((self.profile_rings[0], self.profile_tso_rtt_log))
        for ring, tso_log in variants:
            label = f"ncd {ring >> 10} KiB"
            if tso_log is not None:
                label += f", tcp_tso_rtt_log {tso_log}"
                old = self.sysctl_tso_rtt_log(tso_log)
            self.ensure_daemon(d, "frontend", f"--ring-bytes {ring}", restart=True)
            self.attach(d, PROFILE_DEVID, f"--mac {PROFILE_MAC} --bridge xenbr0")
            self.wait_vif(tap, ftap)
            self.guest(f"ip addr add {PROFILE_ADDR}/{plen} dev {ftap} && ip link set {ftap} up")
            self.report["profile"][f"features_ring_{ring}"] = self.try_on(
                0,
                f"xenstore-ls -f /local/domain/0/backend/ncvif/{d}/{PROFILE_DEVID} "
                f"/local/domain/{d}/device/ncvif/{PROFILE_DEVID} | grep -E 'feature|ring'",
            ).out
            self.guest(f"iperf3 -s -D -p {PROFILE_PORT}", 60, "iperf3 -s")
            time.sleep(2)
            for direction in ("dom0->guest", "guest->dom0"):
                rows.append(self.profile_run(label, direction, PROFILE_ADDR, ring, ftap))
            self.guest("killall iperf3 || true")
            if tso_log is not None:
                self.sysctl_tso_rtt_log(old)
            self.detach(d, PROFILE_DEVID)
            self.dom0(
                f"i=0; while ip link show {tap} >/dev/null 2>&1; do i=$((i+1)); "
                "[ $i -gt 100 ] && exit 1; sleep 0.2; done",
                60,
                "TAP gone after detach",
            )
        rows += self.profile_netback()  # again: the host's load drifts during the step
        for line in profile_table(rows):
            log(line)

    def profile_netback(self) -> list[dict[str, Any]]:
        """The profile's kernel netback runs (a vif attached for them, detached after)."""
        nic = self.netfront_up()
        self.guest(f"iperf3 -s -D -p {PROFILE_PORT}", 60, "iperf3 -s")
        time.sleep(2)
        rows = [
            self.profile_run("netback", direction, KERNEL_NET[1], None, nic)
            for direction in ("dom0->guest", "guest->dom0")
        ]
        self.guest("killall iperf3 || true")
        self.dom0(f"xl network-detach {GUEST_NAME} {KERNEL_MAC}", 120, "xl network-detach")
        return rows

    def sysctl_tso_rtt_log(self, value: int) -> int:
        """Set ``net.ipv4.tcp_tso_rtt_log`` in dom0 and guest 1; returns dom0's old value.
        Linux (5.18+) adds ``64 KiB >> (min_rtt_us >> tcp_tso_rtt_log)`` to the TSO size
        a TCP socket builds (default 9: flows under 512 us get full 64 KiB frames)."""
        knob = "/proc/sys/net/ipv4/tcp_tso_rtt_log"
        old = int(self.dom0(f"cat {knob}", 30, "tcp_tso_rtt_log").out.split()[0])
        for dom in (0, self.guest_id):
            self.on(dom, f"echo {value} > {knob}", 30, f"tcp_tso_rtt_log {value}")
        return old

    def profile_run(
        self, path: str, direction: str, addr: str, ring: int | None, guest_nic: str
    ) -> dict[str, Any]:
        """One iperf3 run (``PROFILE_SECS``) with a window of ``PROFILE_WINDOW`` inside it
        in both domains and xentop over the same seconds; ncd's counters (``ring`` given)
        over the whole run, from both daemons."""
        d = self.guest_id
        delay, secs = PROFILE_WINDOW
        stats = "ncctl stats --json"
        before = (self.try_on(0, stats).out, self.try_on(d, stats).out) if ring else None
        # the guest's window first (its command takes the longest to arrive); nothing
        # polls either domain while the windows are open
        self.guest(profile.window_cmd(delay, secs, "/tmp/prof.txt"), 60, "profile window")
        rid = self.c.submit(
            f"iperf3 -c {addr} -p {PROFILE_PORT} -t {PROFILE_SECS} -J"
            + (" -R" if direction == "guest->dom0" else ""),
            PROFILE_SECS + 60,
        )
        self.dom0(profile.window_cmd(delay, secs, "/tmp/prof.txt"), 30, "profile window")
        top = self.c.submit(f"sleep {delay:g}; xentop -b -d {secs:g} -i 2", delay + secs + 30)
        mbit = iperf_mbit(self.c.wait(rid, "iperf3", PROFILE_SECS + 60).out)
        xt = self.c.wait(top, "xentop", delay + secs + 30)
        read = profile.window_read_cmds("/tmp/prof.txt")
        row: dict[str, Any] = {
            "path": path,
            "direction": direction,
            "mbit": mbit,
            "dom0": profile.window_summary("".join(self.try_on(0, c, 90).out for c in read)),
            "guest": profile.window_summary("".join(self.try_on(d, c, 90).out for c in read)),
            "xentop_cpu_pct": profile.xentop_cpu(xt.out) if xt.ok else {"error": xt.err[-300:]},
            "guest_nic": guest_nic,
        }
        if before is not None:
            after = (self.try_on(0, stats).out, self.try_on(d, stats).out)
            row["ncd_dom0"] = vif_deltas(before[0], after[0], d, PROFILE_DEVID)
            row["ncd_guest"] = vif_deltas(before[1], after[1], d, PROFILE_DEVID)
        log(f"profile {path} {direction}: {profile_line(row)}")
        return row

    # ------------------------------------------------------------ ncd daemon (step 2)
    def daemon_path(self) -> None:
        d = self.guest_id
        a0, a1, plen = NCD_NET
        rep: dict[str, Any] = {}
        self.report["ncd_daemon"] = rep
        self.ensure_daemon(0, "backend")
        self.ensure_daemon(d, "frontend")
        self.attach(d, 0, f"--mac {NCD_MAC}")
        self.wait_vif(f"ncvif{d}.0", "nc0")
        self.dom0(f"ip addr add {a0}/{plen} dev ncvif{d}.0 && ip link set ncvif{d}.0 up")
        self.guest(f"ip addr add {a1}/{plen} dev nc0 && ip link set nc0 up")
        rep["ping_dom0_to_guest"] = ping_summary(
            self.dom0(f"ping -c 10 -i 0.2 -W 5 {a1}", 90, "ping dom0->guest (ncd)").out
        )
        rep["ping_guest_to_dom0"] = ping_summary(
            self.guest(f"ping -c 10 -i 0.2 -W 5 {a0}", 90, "ping guest->dom0 (ncd)").out
        )
        rep["ping_1472B_dom0_to_guest"] = ping_summary(
            self.c.run(f"ping -c 5 -i 0.2 -W 5 -s 1472 {a1}", 90).out
        )
        rep["tcp"] = [self.tcp_transfer("dom0", a0), self.tcp_transfer("guest", a1)]
        self.guest("iperf3 -s -D -p 5202 --logfile /tmp/iperf3-ncd.log", 60, "iperf3 -s")
        time.sleep(2)
        rep["iperf3_dom0_to_guest_mbit"] = iperf_mbit(
            self.c.run(f"iperf3 -c {a1} -p 5202 -t {IPERF_SECS} -J", 120).out
        )
        rep["iperf3_guest_to_dom0_mbit"] = iperf_mbit(
            self.c.run(f"iperf3 -c {a1} -p 5202 -t {IPERF_SECS} -R -J", 120).out
        )
        self.guest("killall iperf3 || true")
        rep["ncctl_list"] = self.dom0("ncctl list", 60, "ncctl list").out
        rep["ncctl_stats"] = self.c.run("ncctl stats", 60).out
        metrics = self.dom0(
            'python3 -c "import urllib.request;print(urllib.request.urlopen('
            "'http://127.0.0.1:9477/metrics', timeout=10).read().decode())\"",
            60,
            "metrics",
        ).out
        rep["metrics"] = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith("ncd_") and not ln.startswith("ncd_build")
        ][:60]
        bad_tcp = [t for t in rep["tcp"] if not t["ok"]]
        if bad_tcp:
            raise LabError(
                f"TCP over ncd failed: {bad_tcp}\nstats: {rep['ncctl_stats']}\n"
                + "\n".join(rep["metrics"])
            )
        self.detach(d, 0)
        self.dom0(
            f"i=0; while ip link show ncvif{d}.0 >/dev/null 2>&1; do i=$((i+1)); "
            "[ $i -gt 100 ] && exit 1; sleep 0.2; done",
            60,
            "TAP gone after detach",
        )
        # re-attached the way an xl user types it: the guest by name, an xl vifspec
        k0, _, kplen = KERNEL_NET
        self.dom0(
            f"(brctl addbr xenbr0 2>/dev/null || true) && "
            f"ip addr replace {k0}/{kplen} dev xenbr0 && ip link set xenbr0 up",
            60,
            "bridge xenbr0",
        )
        self.dom0(
            f"ncctl attach {GUEST_NAME} 'mac={NCD_MAC},bridge=xenbr0,rate=100Mb/s'",
            60,
            "ncctl re-attach (xl vifspec)",
        )
        self.vifs.add((0, d, 0))
        self.wait_vif(f"ncvif{d}.0", "nc0")
        rep["reattach_rate_key"] = self.dom0(
            f"xenstore-read /local/domain/0/backend/ncvif/{d}/0/rate", 30, "rate key"
        ).out.strip()
        if rep["reattach_rate_key"] != "625000,50000":
            raise LabError(f"rate=100Mb/s wrote rate={rep['reattach_rate_key']!r}")
        self.guest(
            f"ip addr add 198.18.1.3/{kplen} dev nc0", 60, "guest address in xenbr0's subnet"
        )
        rep["ping_reattached_guest_to_xenbr0"] = ping_summary(
            self.guest(f"ping -c 5 -i 0.2 -W 5 {k0}", 90, "ping guest->xenbr0 (xl vifspec)").out
        )
        self.guest(f"ip addr del 198.18.1.3/{kplen} dev nc0 || true")
        rep["reattached"] = True
        log(f"ncd daemon path: {rep}")

    # ------------------------------------------------------------ daemons and vifs
    def ensure_daemon(self, dom: int, role: str, args: str = "", restart: bool = False) -> None:
        """Start ``ncd ROLE ARGS`` in ``dom`` unless that role already runs there (another
        role, or the same with ``restart``, is stopped first: one daemon per domain)."""
        cur = self.daemons.get(dom)
        if cur and cur[0] == role and not restart:
            return
        if cur:
            self.stop_daemon(dom)
        log_file = f"/var/log/ncd-{role}.log"
        r = self.on(
            dom,
            f"setsid ncd {role} {args} > {log_file} 2>&1 < /dev/null & echo $!",
            30,
            f"start ncd {role} in domain {dom}",
        )
        self.daemons[dom] = (role, int(r.out.split()[-1]))

    def stop_daemon(self, dom: int) -> None:
        """SIGTERM the daemon in ``dom`` and wait until it exited. A guest's PID 1 is the
        agent, which does not reap orphans: an exited daemon stays a zombie (state Z)."""
        role, pid = self.daemons.pop(dom)
        self.on(
            dom,
            f"kill {pid}; i=0; while [ -e /proc/{pid} ] && "
            f"[ \"$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -c1)\" != Z ]; "
            "do i=$((i+1)); [ $i -gt 150 ] && exit 1; sleep 0.2; done",
            60,
            f"ncd {role} in domain {dom} exits on SIGTERM",
        )

    def attach(
        self, fe: int, devid: int, opts: str, backend: int = 0, what: str = "ncctl attach"
    ) -> None:
        be = f" --backend {backend}" if backend else ""
        self.dom0(f"ncctl attach {fe} --devid {devid} {opts}{be}", 60, what)
        self.vifs.add((backend, fe, devid))

    def detach(self, fe: int, devid: int, backend: int = 0) -> None:
        be = f" --backend {backend}" if backend else ""
        self.dom0(f"ncctl detach {fe} {devid}{be}", 90, f"ncctl detach {fe} {devid}{be}")
        self.vifs.discard((backend, fe, devid))

    def wait_links(self, links: list[tuple[int, str]], timeout: float = 120) -> None:
        """Wait until every (domain, interface) exists."""
        deadline = time.monotonic() + timeout
        missing = links
        while time.monotonic() < deadline:
            missing = [(d, n) for d, n in links if not self.try_on(d, f"ip link show {n}", 30).ok]
            if not missing:
                return
            time.sleep(2)
        raise LabError(f"interfaces did not appear: {missing}")

    def ping(self, src: int, addr: str, count: int = FWD_PING_COUNT) -> dict[str, float]:
        r = self.try_on(src, f"ping -c {count} -i 0.2 -W 5 {addr}", 30 + 6 * count)
        return ping_summary(r.out)

    # ------------------------------------------------------------ forwarding scenarios
    def run_scenario(self, name: str, body: Any) -> bool:
        """Run ``body() -> (ok, details)``; print ``lab: scenario NAME: OK|FAILED ...``."""
        t0 = time.monotonic()
        try:
            ok, details = body()
            error = ""
        except LabError as exc:
            ok, details, error = False, {}, str(exc)
        secs = round(time.monotonic() - t0, 1)
        rec = {"ok": ok, "secs": secs, **details}
        if error:
            rec["error"] = error[-4000:]
        self.report.setdefault("scenarios", {})[name] = rec
        print(scenario_line(name, ok, secs, details, error), flush=True)
        return ok

    def switch_scenario(self) -> tuple[bool, dict[str, Any]]:
        """guest1 <-> guest2 through dom0's in-daemon switches (no TAP in dom0): sw0
        (``forward_copy = "memcpy"``) and swg (``"grant"``), both declared in dom0's
        config (``DOM0_CONFIG``), each guest a port of both; ping, TCP with sha256 and
        iperf3 each way through each, then ``ncctl stats --json`` must show each switch's
        copy mode at work (grant-copy calls on swg only)."""
        g1, g2 = self.guest_id, self.guest2_id
        rep: dict[str, Any] = {}
        self.ensure_daemon(0, "backend")
        self.ensure_daemon(g1, "frontend")
        self.ensure_daemon(g2, "frontend")
        # guest 1 may still have devid 0 (the daemon step's TAP vif)
        for sw in SWITCHES:
            self.attach(g1, sw.devids[0], f"--switch {sw.name} --mac {sw.macs[0]}")
            self.attach(g2, sw.devids[1], f"--switch {sw.name} --mac {sw.macs[1]}")
        self.wait_links(
            [(g, f"nc{sw.devids[i]}") for sw in SWITCHES for i, g in enumerate((g1, g2))]
        )
        for sw in SWITCHES:
            for i, g in enumerate((g1, g2)):
                nic = f"nc{sw.devids[i]}"
                self.on(g, f"ip addr add {sw.net[i]}/{sw.net[2]} dev {nic} && ip link set {nic} up")
        rep["ncctl_list"] = self.try_on(0, "ncctl list").out
        taps = set(self.try_on(0, "ls /sys/class/net").out.split())
        stray = [f"ncvif{g}.{sw.devids[i]}" for sw in SWITCHES for i, g in enumerate((g1, g2))]
        if taps & set(stray):
            raise LabError(f"a switch port got a TAP in dom0: {sorted(taps & set(stray))}")
        self.on(g2, f"iperf3 -s -D -p {FWD_IPERF_PORT}", 60, "iperf3 -s in guest 2")
        pings, rep["tcp"], rep["iperf3"] = [], [], []
        for k, sw in enumerate(SWITCHES):
            tag = "" if sw.copy == "memcpy" else f"_{sw.copy}"
            rep[f"ping_1_to_2{tag}"] = self.ping(g1, sw.net[1])
            rep[f"ping_2_to_1{tag}"] = self.ping(g2, sw.net[0])
            pings += [rep[f"ping_1_to_2{tag}"], rep[f"ping_2_to_1{tag}"]]
            for src, dst, addr, port in ((g1, g2, sw.net[1], 5310), (g2, g1, sw.net[0], 5311)):
                rec = self.tcp_between(src, dst, addr, self.fwd_mb, port + 2 * k)
                rep["tcp"].append({**rec, "via": f"{sw.name} {sw.copy}"})
            for src, dst, flag in ((g1, g2, ""), (g2, g1, " -R")):
                out = self.try_on(
                    g1, f"iperf3 -c {sw.net[1]} -p {FWD_IPERF_PORT} -t {FWD_IPERF_SECS}{flag}", 90
                ).out
                rep["iperf3"].append(
                    {"from": src, "to": dst, "copy": sw.copy, "mbit": iperf_text_mbit(out)}
                )
        self.try_on(g2, "killall iperf3 || true")
        rep["ncctl_stats"] = self.try_on(0, "ncctl stats").out[-3000:]
        rep["copy_modes"] = copy_modes(self.try_on(0, "ncctl stats --json").out, self.fwd_mb)
        rep["summary"] = [copy_comparison(rep["iperf3"])]
        ok = fwd_ok(pings, rep["tcp"]) and rep["copy_modes"]["ok"]
        for sw in SWITCHES:
            self.detach(g1, sw.devids[0])
            self.detach(g2, sw.devids[1])
        return ok, rep

    def driver_hop_scenario(self) -> tuple[bool, dict[str, Any]]:
        """dom0 (bridge ncbr0) <- guest 1 (`ncd driver --uplink-switch up`) <- guest 2."""
        g1, g2 = self.guest_id, self.guest2_id
        a0, a2, plen = HOP_NET
        rep: dict[str, Any] = {}
        self.ensure_daemon(0, "backend")
        # guest 1 becomes a driver domain: its other vifs go first (one daemon per domain)
        for be, fe, devid in sorted(self.vifs):
            if fe == g1 or be == g1:
                self.detach(fe, devid, be)
        self.ensure_daemon(g1, "driver", "--uplink-switch up")
        self.ensure_daemon(g2, "frontend")
        self.dom0(
            f"(brctl addbr {HOP_BRIDGE} 2>/dev/null || true) && "
            f"ip addr add {a0}/{plen} dev {HOP_BRIDGE} && ip link set {HOP_BRIDGE} up",
            60,
            f"bridge {HOP_BRIDGE}",
        )
        self.attach(g1, 2, f"--mac {HOP_MACS[0]} --bridge {HOP_BRIDGE} --trunk")
        self.attach(g2, 1, f"--mac {HOP_MACS[1]} --switch up", backend=g1)
        rep["xenstore_backend_perms"] = self.try_on(
            0, f"xenstore-ls -p /local/domain/{g1}/backend 2>&1 | head -40"
        ).out
        self.wait_links([(0, f"ncvif{g1}.2"), (g2, "nc1")])
        self.on(g2, f"ip addr add {a2}/{plen} dev nc1 && ip link set nc1 up")
        rep["ping_2_to_dom0"] = self.ping(g2, a0)
        rep["ping_dom0_to_2"] = self.ping(0, a2)
        rep["tcp"] = [
            self.tcp_between(g2, 0, a0, self.fwd_mb, 5320),
            self.tcp_between(0, g2, a2, self.fwd_mb, 5321),
        ]
        rep["ncctl_list_dom0"] = self.try_on(0, "ncctl list").out
        rep["ncctl_list_driver"] = self.try_on(g1, "ncctl list 2>&1").out[-3000:]
        rep["ncctl_stats_driver"] = self.try_on(g1, "ncctl stats 2>&1").out[-3000:]
        rep["driver_log"] = self.try_on(g1, "tail -n 40 /var/log/ncd-driver.log").out[-4000:]
        ok = fwd_ok([rep["ping_2_to_dom0"], rep["ping_dom0_to_2"]], rep["tcp"])
        rep["driver_release"] = self.driver_release(g1, g2, 1)
        return ok and rep["driver_release"]["ok"], rep

    def tcp_between(self, src: int, dst: int, addr: str, mb: int, port: int) -> dict[str, Any]:
        """``mb`` MB over TCP from domain ``src`` to ``dst`` (at ``addr``); sha256 both ends."""
        size = mb << 20
        self.on(src, f"head -c {size} /dev/urandom > /tmp/tcp-tx-{port}", 120)
        rid = self.submit_on(dst, f"python3 /lab/tcpxfer.py recv {port}", 300)
        time.sleep(4)
        send = self.try_on(
            src, f"python3 /lab/tcpxfer.py send {addr} {port} /tmp/tcp-tx-{port}", 280
        )
        got = self.c.wait(rid, "tcpxfer recv", 320)
        self.try_on(src, f"rm -f /tmp/tcp-tx-{port}")
        rec = tcp_record(src, dst, size, send.ok, send.out, got.ok, got.out)
        if not rec["ok"]:
            rec["stderr"] = (send.err + got.err)[-1500:]
        log(f"TCP domain {src}->{dst}: {rec}")
        return rec

    def wait_vif(self, backend_tap: str, frontend_tap: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            be = self.c.run(f"ip link show {backend_tap}", 30).ok
            fe = self.c.guest(self.guest_id, f"ip link show {frontend_tap}", 30).ok
            if be and fe:
                return
            time.sleep(2)
        raise LabError(f"vif taps {backend_tap}/{frontend_tap} did not appear")

    def tcp_transfer(self, receiver: str, addr: str, port: int = 5300) -> dict[str, Any]:
        """``mb`` MB over TCP to ``receiver`` (lab/tcpxfer.py); sha256 on both ends."""
        sender = "guest" if receiver == "dom0" else "dom0"
        size = self.mb << 20
        self.run_where(sender, f"head -c {size} /dev/urandom > /tmp/tcp-tx")
        rid = self.run_in(receiver, f"python3 /lab/tcpxfer.py recv {port}", 300)
        time.sleep(4)
        send = self.c.run(
            self.c.guest_cmd(
                self.guest_id, f"python3 /lab/tcpxfer.py send {addr} {port} /tmp/tcp-tx", 280
            )
            if sender == "guest"
            else f"python3 /lab/tcpxfer.py send {addr} {port} /tmp/tcp-tx",
            300,
        )
        got = self.c.wait(rid, "tcpxfer recv", 320)
        tx = (send.out.split() + ["", "0", "0"])[:3]
        rx = (got.out.split() + ["", "0", "0"])[:3]
        rec = {
            "from": sender,
            "to": receiver,
            "bytes": size,
            "bytes_received": int(rx[1]),
            "ok": send.ok and got.ok and rx[0] == tx[0] and int(rx[1]) == size,
            "secs": float(rx[2]),
        }
        if rec["ok"] and rec["secs"]:
            rec["mbit"] = round(size * 8 / rec["secs"] / 1e6, 1)
        else:
            rec["stderr"] = (send.err + got.err)[-1500:]
        log(f"TCP {sender}->{receiver} over ncd: {rec}")
        return rec

    # ------------------------------------------------------------ teardown
    def destroy_guest(self, expect_backend_cleanup: bool = False) -> None:
        d = self.guest_id
        if self.domid2 is not None:
            # guest 2 first: its vifs may be backed by guest 1's driver
            self.dom0(f"xl destroy {GUEST2_NAME}", 120, "xl destroy guest 2")
            self.domid2 = None
        self.dom0(f"xl destroy {GUEST_NAME}", 120, "xl destroy")
        if expect_backend_cleanup:
            # every TAP of this guest (ncvif<d>.<devid>) and its backend entries must go
            self.dom0(
                f"i=0; while ls /sys/class/net | grep -q '^ncvif{d}[.]' || "
                f"xenstore-read /local/domain/0/backend/ncvif/{d} >/dev/null 2>&1; do "
                "i=$((i+1)); [ $i -gt 150 ] && exit 1; sleep 0.2; done",
                60,
                "backend cleanup after xl destroy",
            )
        self.domid = None

    def driver_release(self, drv: int, gone: int, devid: int, secs: int = 30) -> dict[str, Any]:
        """The end of the driver-hop scenario: ``xl destroy`` of the guest the driver
        domain backs. Reads under the gone guest's home are then EACCES for the driver
        (docs/lab.md); its daemon must keep running, remove the backend entries it owns
        (``backend/ncvif/<gone>/<devid>``; the directory above is dom0's) within ``secs``
        and log no traceback. Guest 2 is gone afterwards: driver-hop is the last step
        that uses it."""
        self.dom0(f"xl destroy {GUEST2_NAME}", 120, "xl destroy guest 2")
        self.domid2 = None
        self.vifs = {v for v in self.vifs if v[1] != gone}
        t0 = time.monotonic()
        entry = f"/local/domain/{drv}/backend/ncvif/{gone}/{devid}"
        r = self.c.run(
            f"i=0; while xenstore-read {entry} >/dev/null 2>&1; do "
            f"i=$((i+1)); [ $i -gt {secs * 5} ] && exit 1; sleep 0.2; done",
            secs + 30,
        )
        pid = self.daemons[drv][1]
        alive = self.try_on(
            drv, f"[ -e /proc/{pid} ] && [ \"$(sed 's/.*) //' /proc/{pid}/stat | cut -c1)\" != Z ]"
        )
        clean = self.try_on(drv, "! grep -q Traceback /var/log/ncd-driver.log")
        rec = {
            "ok": r.ok and alive.ok and clean.ok,
            "backend_entries_removed": r.ok,
            "daemon_running": alive.ok,
            "log_without_traceback": clean.ok,
            "secs": round(time.monotonic() - t0, 1),
            "driver_log": self.try_on(drv, "tail -n 25 /var/log/ncd-driver.log").out,
        }
        log(f"driver domain {drv} after xl destroy of domain {gone}: {rec}")
        return rec

    def collect_logs(self, dest: Path) -> None:
        """Everything worth reading after a run (best effort; dom0 may be gone)."""
        if self.con is None or self.qemu is None or not self.qemu.alive():
            return
        dest.mkdir(parents=True, exist_ok=True)
        cmds = {
            "xl-dmesg.txt": "xl dmesg",
            "dom0-dmesg.txt": "dmesg",
            "xl-list.txt": "xl list; xl list -l",
            "xenstore-ls.txt": "xenstore-ls -fp",
            "guest-console.txt": "cat /var/log/xen/console/guest-*.log",
            "xl-logs.txt": "tail -n 200 /var/log/xen/*.log",
            "ncd-backend.txt": "cat /var/log/ncd-backend.log",
            "ps.txt": "ps",
        }
        for name, cmd in cmds.items():
            r = self.c.run(cmd, 60)
            (dest / name).write_text(r.out + (("\n--- stderr ---\n" + r.err) if r.err else ""))
        for tag, dom in (("guest", self.domid), ("guest2", self.domid2)):
            if dom is None:
                continue
            for name, cmd in {
                f"{tag}-ncd-frontend.txt": "cat /var/log/ncd-frontend.log",
                f"{tag}-ncd-driver.txt": "cat /var/log/ncd-driver.log",
                f"{tag}-dmesg.txt": "dmesg | tail -n 300",
            }.items():
                r = self.c.guest(dom, cmd, 60)
                (dest / name).write_text(r.out + r.err)


def ping_summary(out: str) -> dict[str, float]:
    res: dict[str, float] = {}
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    if m:
        res["sent"], res["received"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"min/avg/max[^=]*= ([\d.]+)/([\d.]+)/([\d.]+)", out)
    if m:
        res["min_ms"], res["avg_ms"], res["max_ms"] = (float(x) for x in m.groups())
    return res


def iperf_mbit(out: str) -> float | None:
    try:
        data = json.loads(out)
        end = data["end"]
        summary = end.get("sum_received") or end.get("sum")
        return round(summary["bits_per_second"] / 1e6, 1)
    except (ValueError, KeyError, TypeError):
        return None


def tcp_record(
    src: int, dst: int, size: int, send_ok: bool, send_out: str, recv_ok: bool, recv_out: str
) -> dict[str, Any]:
    """One TCP transfer's result from tcpxfer's ``SHA256 BYTES SECS`` lines."""
    tx = (send_out.split() + ["", "0", "0"])[:3]
    rx = (recv_out.split() + ["", "0", "0"])[:3]
    try:
        got, secs = int(rx[1]), float(rx[2])
    except ValueError:
        got, secs = 0, 0.0
    rec: dict[str, Any] = {
        "from": src,
        "to": dst,
        "bytes": size,
        "bytes_received": got,
        "ok": bool(send_ok and recv_ok and rx[0] and rx[0] == tx[0] and got == size),
        "secs": secs,
    }
    if rec["ok"] and secs:
        rec["mbit"] = round(size * 8 / secs / 1e6, 1)
    return rec


def fwd_ok(pings: list[dict[str, float]], tcps: list[dict[str, Any]]) -> bool:
    """A forwarding scenario passes when every ping got an answer and every transfer
    arrived whole with the sender's sha256 (a lost first echo while ARP resolves is fine)."""
    return (
        bool(pings)
        and all(p.get("received", 0) >= 1 for p in pings)
        and bool(tcps)
        and all(t.get("ok") for t in tcps)
    )


def scenario_line(
    name: str, ok: bool, secs: float, details: dict[str, Any], error: str = ""
) -> str:
    """``lab: scenario NAME: OK|FAILED (Ns) ping ... tcp ...`` (one line)."""
    parts = [f"lab: scenario {name}: {'OK' if ok else 'FAILED'} ({secs:g}s)"]
    for key, val in details.items():
        if key.startswith("ping") and isinstance(val, dict):
            parts.append(
                f"{key} {val.get('received', 0):g}/{val.get('sent', 0):g}"
                + (f" avg {val['avg_ms']:g}ms" if "avg_ms" in val else "")
            )
    for t in details.get("tcp", []):
        state = (
            f"{t.get('mbit', '?')} Mbit/s"
            if t.get("ok")
            else f"FAILED {t.get('bytes_received', 0)}/{t.get('bytes', 0)} B"
        )
        via = f" via {t['via']}" if t.get("via") else ""
        parts.append(
            f"tcp {t.get('from')}->{t.get('to')}{via} {t.get('bytes', 0) >> 20} MB sha256 {state}"
        )
    parts += details.get("summary", [])
    rel = details.get("driver_release")
    if rel:
        missed = [
            what
            for key, what in (
                ("backend_entries_removed", "entries kept"),
                ("daemon_running", "daemon stopped"),
                ("log_without_traceback", "traceback"),
            )
            if not rel[key]
        ]
        parts.append(
            f"driver release {'FAILED (' + ', '.join(missed) + ')' if missed else 'OK'}"
            f" {rel['secs']:g}s after xl destroy"
        )
    if error:
        parts.append("error: " + " ".join(error.split())[:300])
    return ", ".join(parts)


def vif_deltas(before: str, after: str, domid: int, devid: int) -> dict[str, Any]:
    """Counter deltas of vif (``domid``, ``devid``) between two ``ncctl stats --json``."""

    def find(text: str) -> dict[str, Any] | None:
        try:
            vifs = json.loads(text).get("vifs", [])
        except (ValueError, AttributeError):
            return None
        for v in vifs:
            if isinstance(v, dict) and v.get("devid") == devid and v.get("domid") == domid:
                return v
        return None

    a, b = find(before), find(after)
    if b is None:
        return {"error": f"vif {domid}/{devid} not in ncctl stats"}
    return profile.counter_deltas(a or {}, b)


def profile_line(row: dict[str, Any]) -> str:
    """One profile run in a line: throughput, CPU of both domains, the busiest threads,
    event-channel interrupts, and (ncd) notifications and ring-full waits per frame."""
    parts = [f"{row.get('mbit')} Mbit/s"]
    for dom in ("dom0", "guest"):
        w = row.get(dom) or {}
        cpu = w.get("cpu_pct")
        if not cpu:
            parts.append(f"{dom} {w.get('error', '?')}")
            continue
        threads = ", ".join(f"{t['thread']} {t['cpu_pct']:g}%" for t in w.get("threads", [])[:4])
        irqs = sum(v for k, v in w.get("irqs_per_s", {}).items() if "evtchn" in k or "-q" in k)
        parts.append(
            f"{dom} busy {cpu['busy']:g}% of {w['cpus']} vCPU (usr {cpu['user']:g} "
            f"sys {cpu['system']:g} si {cpu['softirq']:g} steal {cpu['steal']:g}) "
            f"[{threads}] {irqs} vif irq/s"
        )
    xt = row.get("xentop_cpu_pct") or {}
    if xt and "error" not in xt:
        parts.append("xentop " + " ".join(f"{k} {v:g}%" for k, v in sorted(xt.items())))
    for side in ("ncd_dom0", "ncd_guest"):
        c = row.get(side)
        if c and "error" not in c:
            parts.append(
                f"{side}: notify {c.get('notify_sent_per_frame', 0):g}/"
                f"{c.get('notify_recv_per_frame', 0):g} per frame, "
                f"ring full {c.get('ring_full_waits', 0)}, "
                f"B/frame tx {c.get('bytes_per_frame_tx', 0)} rx {c.get('bytes_per_frame_rx', 0)}"
            )
    return "; ".join(parts)


def profile_table(rows: list[dict[str, Any]]) -> list[str]:
    """The profile's Markdown table (as lines): per run throughput, its ratio to netback
    in the same direction (the mean of netback's runs, one before ncd's and one after),
    and per domain the CPU busy share and CPU-ms per MB moved (busy share x vCPUs / MB
    per second: what a MB costs the domain, less sensitive to how loaded the host was
    than the throughput)."""
    runs: dict[str, list[float]] = {}
    for r in rows:
        if r["path"] == "netback" and r.get("mbit"):
            runs.setdefault(r["direction"], []).append(r["mbit"])
    base = {k: sum(v) / len(v) for k, v in runs.items()}  # netback's mean per direction
    out = [
        "| path | direction | Mbit/s | / netback | dom0 busy | dom0 CPU-ms/MB "
        "| guest busy | guest steal | guest CPU-ms/MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref, mbit = base.get(r["direction"]), r.get("mbit")
        ratio = f"{mbit / ref:.2f}" if ref and mbit else "-"
        cells = []
        for dom in ("dom0", "guest"):
            w = r.get(dom) or {}
            cpu = w.get("cpu_pct") or {}
            busy = cpu.get("busy")
            cells.append(f"{busy if busy is not None else '?'}%")
            if dom == "guest":
                cells.append(f"{cpu.get('steal', '?')}%")
            cells.append(
                f"{busy / 100 * w['cpus'] * 1000 / (mbit / 8):.0f}"
                if busy is not None and mbit
                else "?"
            )
        out.append(f"| {r['path']} | {r['direction']} | {mbit} | {ratio} | {' | '.join(cells)} |")
    return out


def iperf_text_mbit(out: str) -> float | None:
    """The receiver's Mbit/s from iperf3's text output (its JSON is too big for the
    guest agent's xenstore results)."""
    for line in out.splitlines():
        m = re.search(r"([\d.]+) ([KMG])bits/sec.*receiver", line)
        if m:
            scale = {"K": 1e-3, "M": 1.0, "G": 1e3}[m.group(2)]
            return round(float(m.group(1)) * scale, 1)
    return None


def copy_modes(stats_json: str, mb: int) -> dict[str, Any]:
    """Each of ``SWITCHES`` as dom0's ``ncctl stats --json`` shows it: its copy mode,
    grant-copy calls, bytes forwarded between the guests. OK when every switch runs the
    mode it was declared with, moved at least ``mb`` MB each way, and grant-copy calls
    happened on the grant switch only."""
    try:
        switches = {s.get("name"): s for s in json.loads(stats_json).get("switches", [])}
    except (ValueError, AttributeError):
        return {"ok": False, "error": "ncctl stats --json: no JSON", "raw": stats_json[-500:]}
    rec: dict[str, Any] = {"ok": True}
    for sw in SWITCHES:
        got = switches.get(sw.name) or {}
        ways = sorted(int(f.get("bytes", 0)) for f in got.get("forwarded") or [])
        calls = int(got.get("grant_copy_calls", 0))
        ok = (
            got.get("forward_copy") == sw.copy
            and len(ways) >= 2
            and ways[-2] >= mb << 20
            and (calls > 0) == (sw.copy == "grant")
        )
        rec[sw.name] = {
            "forward_copy": got.get("forward_copy"),
            "grant_copy_calls": calls,
            "grant_copy_segs": int(got.get("grant_copy_segs", 0)),
            "forwarded_bytes": ways,
            "ok": ok,
        }
        rec["ok"] = rec["ok"] and ok
    return rec


def copy_comparison(iperfs: list[dict[str, Any]]) -> str:
    """``grant/memcpy iperf3 1->2 A / B Mbit/s (0.9x), 2->1 ...`` for the scenario line."""
    parts = []
    for src, dst in ((1, 2), (2, 1)):
        by = {r["copy"]: r.get("mbit") for r in iperfs if (r["from"], r["to"]) == (src, dst)}
        by = by or {}
        m, g = by.get("memcpy"), by.get("grant")
        ratio = f" ({g / m:.2f}x)" if m and g else ""
        parts.append(f"{src}->{dst} memcpy {m} / grant {g} Mbit/s{ratio}")
    return "iperf3 " + ", ".join(parts)
