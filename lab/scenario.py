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

from lab.console import Console, LabError, Result
from lab.images import Images
from lab.qemu import Qemu, QemuConfig

GUEST_NAME = "labguest"
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
        r = self.dom0("xl info | grep -E '^(xen_version|total_memory|nr_cpus)'; xl list",
                      what="xl info")
        self.report["xl_info"] = r.out
        # ncd's cffi modules must load Xen's own libraries, not xensim's shims.
        code = ("import ncd.xen._lib, ncd._hotpath, uvloop, pyroute2, prometheus_client;"
                "print(open('/proc/self/maps').read())")
        maps = self.dom0(f"python3 -c {shlex.quote(code)}", what="ncd imports").out
        libs = sorted({ln.split()[-1] for ln in maps.splitlines()
                       if "libxen" in ln and ln.split()[-1].startswith("/")})
        self.report["dom0_xen_libs"] = libs
        if any("sim" in lib for lib in libs) or not any("libxengnttab" in lib for lib in libs):
            raise LabError(f"ncd did not load Xen's own libraries: {libs}")

    def start_guest(self, mem_mb: int = 320) -> None:
        cfg = GUEST_CFG.format(name=GUEST_NAME, mem=mem_mb)
        self.dom0(f"printf %s {shlex.quote(cfg)} > /etc/xen/{GUEST_NAME}.cfg")
        t0 = time.monotonic()
        self.dom0(f"xl create /etc/xen/{GUEST_NAME}.cfg", 180, "xl create")
        self.domid = int(self.dom0(f"xl domid {GUEST_NAME}").out.strip())
        self.dom0(f"python3 /lab/agent.py guest-wait {self.domid} 240", 260, "guest agent")
        secs = round(time.monotonic() - t0, 1)
        log(f"guest {GUEST_NAME} (domid {self.domid}) agent up {secs}s after xl create")
        self.report["guest"] = {"domid": self.domid, "agent_secs_after_create": secs}
        maps = self.guest("python3 -c \"import ncd.xen._lib, ncd._hotpath;"
                          "print(open('/proc/self/maps').read())\"", 120, "guest ncd imports").out
        libs = sorted({ln.split()[-1] for ln in maps.splitlines() if "libxen" in ln})
        self.report["guest_xen_libs"] = libs

    # ------------------------------------------------------------ observations
    def observe_xen(self) -> None:
        """Facts xensim must match: permissions, errors, limits as real Xen shows them."""
        d = self.guest_id
        facts: dict[str, Any] = {}
        r = self.guest(f"python3 /lab/xsprobe.py {d}", 120, "xenstore probes")
        facts["guest_xenstore"] = [json.loads(ln) for ln in r.out.splitlines()
                                   if ln.startswith("{")]
        probes = {
            "dom0: xenstore-ls -p guest home": f"xenstore-ls -p /local/domain/{d} | head -60",
            "grant device limits (same in guest)":
                "grep . /sys/module/xen_gntalloc/parameters/* "
                "/sys/module/xen_gntdev/parameters/*",
            "xl info caps": "xl info | grep -iE 'xen_caps|virt_caps|xen_version'",
            "xenstored quotas": "xenstore-control quota 2>&1 || true",
        }
        for name, cmd in probes.items():
            r = self.c.run(cmd, 60)
            facts[name] = f"rc={r.rc}\n{r.out.strip()}\n{r.err.strip()}".strip()
        self.report["xen_facts"] = facts

    # ------------------------------------------------------------ vchan
    def vchan_transfer(self, *, sender: str, server: str, server_tool: str,
                       client_tool: str, tag: str, mb: int) -> dict[str, Any]:
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
        sha_tx = self.run_where(sender, f"head -c {size} /dev/urandom > {tx} && "
                                        f"sha256sum {tx} | cut -d' ' -f1").out.strip()

        def tool_cmd(where: str) -> str:
            tool, mode = tools[where]
            base = NCD_VCHAN if tool == "ncd" else f"{VSP} -m"
            if tool == "ncd":
                return f"{base} {mode} {peer[where]} {path}"
            return f"{base} {mode} {peer[where]} {path} -"

        timed = ("t0=$(cut -d' ' -f1 /proc/uptime); {cmd}; rc=$?; "
                 "t1=$(cut -d' ' -f1 /proc/uptime); echo \"secs $t0 $t1\" >&2; ")
        send_cmd = timed.format(cmd=f"{tool_cmd(sender)} < {tx} > /dev/null") + "exit $rc"
        hold = f"/tmp/hold-{tag}"
        recv_cmd = (f"rm -f {hold}; mkfifo {hold}; sleep 900 > {hold} 2>/dev/null & h=$!; "
                    + timed.format(cmd=f"{tool_cmd(receiver)} < {hold} > {rx}")
                    + f"kill $h 2>/dev/null; rm -f {hold}; "
                      f"echo $(sha256sum {rx} | cut -d' ' -f1) $(wc -c < {rx}); exit $rc")
        cmds = {sender: send_cmd, receiver: recv_cmd}
        timeout = 120 + 60 * mb
        ids = {server: self.run_in(server, cmds[server], timeout)}
        self.dom0(f"i=0; until xenstore-read {path}/event-channel >/dev/null 2>&1; do "
                  f"i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done",
                  90, f"vchan server {tag} publishing {path}")
        ids[client] = self.run_in(client, cmds[client], timeout)
        sender_tool = tools[sender][0]
        if sender_tool == "vsp":
            # vchan-socket-proxy does not close the vchan at the end of its input: wait
            # until everything arrived, then stop it (the receiver then sees the close).
            self.run_where(receiver, f"i=0; until [ -f {rx} ] && [ $(wc -c < {rx}) -ge {size} ];"
                                     f" do i=$((i+1)); [ $i -gt {timeout * 5} ] && exit 1; "
                                     "sleep 0.2; done", timeout + 10)
            self.run_where(sender, "pkill -f '^vchan-socket-proxy '; true")
        res = {w: self.c.wait(i, cmds[w], timeout + 20) for w, i in ids.items()}
        rec: dict[str, Any] = {"tag": tag, "sender": sender, "server": server,
                               "server_tool": server_tool, "client_tool": client_tool,
                               "bytes": size, "sha256_sent": sha_tx,
                               "rc": {w: r.rc for w, r in res.items()}}
        fields = res[receiver].out.split()
        rec["sha256_received"], rec["bytes_received"] = (fields + ["", "0"])[:2]
        for w, r in res.items():
            m = re.search(r"secs ([\d.]+) ([\d.]+)", r.err)
            if m:
                rec[f"{w}_secs"] = round(float(m.group(2)) - float(m.group(1)), 2)
        rcs_ok = res[receiver].rc == 0 and (res[sender].rc == 0 or sender_tool == "vsp")
        ok = (rcs_ok and rec["sha256_received"] == sha_tx
              and int(rec["bytes_received"]) == size)
        rec["ok"] = ok
        secs = rec.get(f"{client}_secs")
        if secs:
            rec["client_mb_per_s"] = round(mb / secs, 2)
        log(f"vchan {tag}: {mb} MB {sender}->{receiver}, {server_tool} server in {server}, "
            f"{client_tool} client in {client}: {'OK' if ok else 'FAILED'}, "
            f"{server} {rec.get(server + '_secs')}s, {client} {secs}s")
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
            ("dom0", "dom0", "ncd", "ncd", big), ("guest", "dom0", "ncd", "ncd", big),
            ("dom0", "guest", "ncd", "ncd", big), ("guest", "guest", "ncd", "ncd", big),
            ("dom0", "dom0", "ncd", "vsp", small), ("guest", "dom0", "vsp", "ncd", small),
            ("dom0", "guest", "vsp", "ncd", small), ("guest", "guest", "ncd", "vsp", small),
        ]
        if self.vsp_baseline:
            # vsp <-> vsp: slow (30 s .. >3 min per MB) and flaky under TCG; see docs/lab.md
            plan += [("guest", "dom0", "vsp", "vsp", small), ("dom0", "dom0", "vsp", "vsp", small)]
        results = []
        for i, (sender, server, stool, ctool, mb) in enumerate(plan):
            results.append(self.vchan_transfer(sender=sender, server=server, server_tool=stool,
                                               client_tool=ctool, tag=str(i), mb=mb))
        self.report["vchan"] = results
        bad = [r for r in results if not r["ok"]]
        if bad:
            raise LabError(f"{len(bad)} vchan transfer(s) failed: "
                           + json.dumps(bad, indent=1)[:4000])

    # ------------------------------------------------------------ kernel netback path
    def kernel_path(self) -> None:
        a0, a1, plen = KERNEL_NET
        self.dom0("modprobe xen-netback && modprobe bridge && "
                  "(brctl addbr xenbr0 2>/dev/null || true) && "
                  f"ip addr add {a0}/{plen} dev xenbr0 && ip link set xenbr0 up", 60,
                  "bridge xenbr0")
        before = set(self.guest("ls /sys/class/net").out.split())
        self.dom0(f"xl network-attach {GUEST_NAME} bridge=xenbr0 mac={KERNEL_MAC}", 120,
                  "xl network-attach")
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
        self.guest(f"ip addr add {a1}/{plen} dev {nic} && ip link set {nic} up", 60,
                   "guest netfront address")
        ping_g = self.dom0(f"ping -c 10 -i 0.2 -W 5 {a1}", 90, "ping dom0->guest (vif)").out
        ping_0 = self.guest(f"ping -c 10 -i 0.2 -W 5 {a0}", 90, "ping guest->dom0 (vif)").out
        self.guest("iperf3 -s -D -p 5201 --logfile /tmp/iperf3-s.log", 60, "iperf3 -s")
        time.sleep(2)
        up = self.dom0(f"iperf3 -c {a1} -p 5201 -t {IPERF_SECS} -J", 120,
                       "iperf3 dom0->guest (vif)").out
        down = self.dom0(f"iperf3 -c {a1} -p 5201 -t {IPERF_SECS} -R -J", 120,
                         "iperf3 guest->dom0 (vif)").out
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

    # ------------------------------------------------------------ ncd daemon (step 2)
    def daemon_path(self) -> None:
        d = self.guest_id
        a0, a1, plen = NCD_NET
        rep: dict[str, Any] = {}
        self.report["ncd_daemon"] = rep
        self.dom0("setsid ncd backend > /var/log/ncd-backend.log 2>&1 < /dev/null &",
                  30, "start ncd backend")
        self.guest("setsid ncd frontend > /var/log/ncd-frontend.log 2>&1 < /dev/null &",
                   30, "start ncd frontend")
        self.dom0(f"ncctl attach {d} --devid 0 --mac {NCD_MAC}", 60, "ncctl attach")
        self.wait_vif(f"ncvif{d}.0", "nc0")
        self.dom0(f"ip addr add {a0}/{plen} dev ncvif{d}.0 && ip link set ncvif{d}.0 up")
        self.guest(f"ip addr add {a1}/{plen} dev nc0 && ip link set nc0 up")
        rep["ping_dom0_to_guest"] = ping_summary(
            self.dom0(f"ping -c 10 -i 0.2 -W 5 {a1}", 90, "ping dom0->guest (ncd)").out)
        rep["ping_guest_to_dom0"] = ping_summary(
            self.guest(f"ping -c 10 -i 0.2 -W 5 {a0}", 90, "ping guest->dom0 (ncd)").out)
        rep["ping_1472B_dom0_to_guest"] = ping_summary(
            self.c.run(f"ping -c 5 -i 0.2 -W 5 -s 1472 {a1}", 90).out)
        rep["tcp"] = [self.tcp_transfer("dom0", a0), self.tcp_transfer("guest", a1)]
        self.guest("iperf3 -s -D -p 5202 --logfile /tmp/iperf3-ncd.log", 60, "iperf3 -s")
        time.sleep(2)
        rep["iperf3_dom0_to_guest_mbit"] = iperf_mbit(self.c.run(
            f"iperf3 -c {a1} -p 5202 -t {IPERF_SECS} -J", 120).out)
        rep["iperf3_guest_to_dom0_mbit"] = iperf_mbit(self.c.run(
            f"iperf3 -c {a1} -p 5202 -t {IPERF_SECS} -R -J", 120).out)
        self.guest("killall iperf3 || true")
        rep["ncctl_list"] = self.dom0("ncctl list", 60, "ncctl list").out
        rep["ncctl_stats"] = self.c.run("ncctl stats", 60).out
        metrics = self.dom0("python3 -c \"import urllib.request;print(urllib.request.urlopen("
                            "'http://127.0.0.1:9477/metrics', timeout=10).read().decode())\"",
                            60, "metrics").out
        rep["metrics"] = [ln for ln in metrics.splitlines()
                          if ln.startswith("ncd_") and not ln.startswith("ncd_build")][:60]
        bad_tcp = [t for t in rep["tcp"] if not t["ok"]]
        if bad_tcp:
            raise LabError(f"TCP over ncd failed: {bad_tcp}\nstats: {rep['ncctl_stats']}\n"
                           + "\n".join(rep["metrics"]))
        self.dom0(f"ncctl detach {d} 0", 60, "ncctl detach")
        self.dom0(f"i=0; while ip link show ncvif{d}.0 >/dev/null 2>&1; do i=$((i+1)); "
                  "[ $i -gt 100 ] && exit 1; sleep 0.2; done", 60, "TAP gone after detach")
        self.dom0(f"ncctl attach {d} --devid 0 --mac {NCD_MAC}", 60, "ncctl re-attach")
        self.wait_vif(f"ncvif{d}.0", "nc0")
        rep["reattached"] = True
        log(f"ncd daemon path: {rep}")

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
        send = self.c.run(self.c.guest_cmd(self.guest_id, f"python3 /lab/tcpxfer.py send "
                                           f"{addr} {port} /tmp/tcp-tx", 280)
                          if sender == "guest" else
                          f"python3 /lab/tcpxfer.py send {addr} {port} /tmp/tcp-tx", 300)
        got = self.c.wait(rid, "tcpxfer recv", 320)
        tx = (send.out.split() + ["", "0", "0"])[:3]
        rx = (got.out.split() + ["", "0", "0"])[:3]
        rec = {"from": sender, "to": receiver, "bytes": size, "bytes_received": int(rx[1]),
               "ok": send.ok and got.ok and rx[0] == tx[0] and int(rx[1]) == size,
               "secs": float(rx[2])}
        if rec["ok"] and rec["secs"]:
            rec["mbit"] = round(size * 8 / rec["secs"] / 1e6, 1)
        else:
            rec["stderr"] = (send.err + got.err)[-1500:]
        log(f"TCP {sender}->{receiver} over ncd: {rec}")
        return rec

    # ------------------------------------------------------------ teardown
    def destroy_guest(self, expect_backend_cleanup: bool = False) -> None:
        d = self.guest_id
        self.dom0(f"xl destroy {GUEST_NAME}", 120, "xl destroy")
        if expect_backend_cleanup:
            self.dom0(f"i=0; while ip link show ncvif{d}.0 >/dev/null 2>&1 || "
                      f"xenstore-read /local/domain/0/backend/ncvif/{d} >/dev/null 2>&1; do "
                      "i=$((i+1)); [ $i -gt 150 ] && exit 1; sleep 0.2; done", 60,
                      "backend cleanup after xl destroy")
        self.domid = None

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
        if self.domid is not None:
            for name, cmd in {"guest-ncd-frontend.txt": "cat /var/log/ncd-frontend.log",
                              "guest-dmesg.txt": "dmesg | tail -n 300"}.items():
                r = self.c.guest(self.domid, cmd, 60)
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
