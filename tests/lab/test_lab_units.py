"""Fast checks of the lab's own machinery (no QEMU): agent framing, chunked xenstore
results, command timeouts, module dependency parsing, QEMU command line, parsers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lab import agent, images, profile, scenario
from lab.images import Images
from lab.qemu import Qemu, QemuConfig


def test_request_and_result_frames_roundtrip():
    line = agent.request_line("7", "echo 'a,b'; exit 3", 12.5).decode()
    assert line.startswith("Q ") and line.endswith("\n")
    assert agent.decode(line[2:]) == {"id": "7", "cmd": "echo 'a,b'; exit 3", "timeout": 12.5}
    res = {"id": "7", "rc": 3, "out": "a,b\n", "err": "", "secs": 0.1, "timed_out": False}
    noisy = "[   17.6] random: crng init done " + agent.MARK + " R " + agent.encode(res)
    assert agent.parse_frame(noisy) == ("R", res)
    assert agent.parse_frame(f"{agent.MARK} HELLO") == ("HELLO", None)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "plain kernel line",
        f"{agent.MARK} R !!notbase64",
        f"{agent.MARK} R " + "aGVsbG8=",  # not a JSON object
        f"{agent.MARK} X abc",
    ],
)
def test_parse_frame_ignores_noise(line):
    assert agent.parse_frame(line) is None


def test_run_command_output_and_rc():
    res = agent.run_command("echo out; echo err >&2; exit 5", 10, 1024)
    assert (res["rc"], res["out"], res["err"], res["timed_out"]) == (5, "out\n", "err\n", False)


def test_run_command_timeout_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    res = agent.run_command(f"sleep 30 & echo $! > {pidfile}; wait", 0.5, 1024)
    assert res["timed_out"] and res["rc"] == agent.TIMEOUT_RC
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("background child survived the timeout")


def test_run_command_keeps_the_tail():
    res = agent.run_command("head -c 5000 /dev/zero | tr '\\0' a; echo END", 10, 100)
    assert len(res["out"]) == 100 and res["out"].endswith("aEND\n")


class FakeXS:
    def __init__(self):
        self.data: dict[str, bytes] = {}

    def write(self, path, value):
        assert len(value) <= 2048, "over the C xenstored's entry-size quota"
        self.data[path] = value

    def read(self, path):
        return self.data.get(path)


def test_chunked_result_through_xenstore_nodes():
    xs = FakeXS()
    res = {"rc": 0, "out": "x" * 20000, "err": "e", "secs": 1.0, "timed_out": False}
    assert agent.get_result(xs, "res/1") is None  # not complete yet
    agent.put_result(xs, "res/1", res)
    assert int(xs.data["res/1/n"]) > 10
    assert agent.get_result(xs, "res/1") == res


def test_module_depends_from_modinfo(tmp_path):
    ko = tmp_path / "bridge.ko"
    ko.write_bytes(b"\x7fELF...\x00license=GPL\x00depends=stp,llc\x00intree=Y\x00")
    assert images.module_depends(ko) == ["stp", "llc"]
    ko.write_bytes(b"\x7fELF\x00depends=\x00name=tun\x00")
    assert images.module_depends(ko) == []


def test_qemu_command_line(tmp_path):
    imgs = Images(tmp_path, tmp_path / "xen", tmp_path / "vmlinuz", tmp_path / "d.cpio.gz", {})
    cmd = Qemu(imgs, tmp_path, QemuConfig()).command()
    assert cmd[cmd.index("-cpu") + 1] == "qemu64"
    assert "tcg" in cmd[cmd.index("-accel") + 1]
    kernel, initrd = cmd[cmd.index("-initrd") + 1].split(",")
    assert kernel.startswith(f"{tmp_path}/vmlinuz ") and "ncdlab.agent=/dev/ttyS1" in kernel
    assert initrd == str(tmp_path / "d.cpio.gz")
    with pytest.raises(ValueError):
        Qemu(imgs, tmp_path, QemuConfig(extra_dom0_args="a=1,2")).command()


def test_ping_and_iperf_parsers():
    out = (
        "10 packets transmitted, 10 packets received, 0% packet loss\n"
        "round-trip min/avg/max = 4.512/15.020/40.100 ms\n"
    )
    assert scenario.ping_summary(out) == {
        "sent": 10,
        "received": 10,
        "min_ms": 4.512,
        "avg_ms": 15.02,
        "max_ms": 40.1,
    }
    js = '{"end": {"sum_received": {"bits_per_second": 123456789.0}}}'
    assert scenario.iperf_mbit(js) == 123.5
    assert scenario.iperf_mbit("iperf3: error") is None


def test_source_files_are_the_projects(tmp_path):
    files = images.source_files()
    assert "pyproject.toml" in files and "setup.py" in files
    assert any(f.startswith("ncd/") for f in files)
    assert not any(f.endswith((".so", ".o", ".pyc")) for f in files)
    assert all(Path(images.REPO, f).is_file() for f in files)


def test_tcp_record_from_tcpxfer_lines():
    ok = scenario.tcp_record(1, 2, 4 << 20, True, "abc 4194304 2.0\n", True, "abc 4194304 2.1\n")
    assert (
        ok["ok"]
        and ok["bytes_received"] == 4 << 20
        and ok["mbit"] == round((4 << 20) * 8 / 2.1 / 1e6, 1)
    )
    short = scenario.tcp_record(1, 2, 4 << 20, True, "abc 4194304 2.0", True, "abd 4096 1.0")
    assert not short["ok"] and short["bytes_received"] == 4096 and "mbit" not in short
    # a receiver that printed nothing (timed out) or garbage
    for out in ("", "Traceback x y"):
        rec = scenario.tcp_record(0, 2, 1 << 20, True, "abc 1048576 1.0", False, out)
        assert not rec["ok"] and rec["bytes_received"] == 0
    # both sides empty: equal empty hashes are not a success
    assert not scenario.tcp_record(0, 2, 0, True, "", True, "")["ok"]


def test_fwd_ok_needs_every_ping_answered_and_every_transfer_whole():
    good_ping = {"sent": 5.0, "received": 4.0}
    tcp = [{"ok": True}, {"ok": True}]
    assert scenario.fwd_ok([good_ping, good_ping], tcp)
    assert not scenario.fwd_ok([good_ping, {"sent": 5.0, "received": 0.0}], tcp)
    assert not scenario.fwd_ok([good_ping, {}], tcp)  # ping printed no summary
    assert not scenario.fwd_ok([good_ping], [{"ok": True}, {"ok": False}])
    assert not scenario.fwd_ok([], tcp) and not scenario.fwd_ok([good_ping], [])


def test_scenario_line():
    details = {
        "ping_1_to_2": {"sent": 5.0, "received": 5.0, "avg_ms": 21.5},
        "ping_2_to_1": {"sent": 5.0, "received": 4.0},
        "tcp": [
            {"from": 1, "to": 2, "bytes": 4 << 20, "ok": True, "mbit": 17.2},
            {"from": 2, "to": 1, "bytes": 4 << 20, "ok": False, "bytes_received": 4096},
        ],
        "ncctl_list": "ignored",
    }
    line = scenario.scenario_line("switch", False, 61.25, details)
    assert line == (
        "lab: scenario switch: FAILED (61.25s), ping_1_to_2 5/5 avg 21.5ms, "
        "ping_2_to_1 4/5, tcp 1->2 4 MB sha256 17.2 Mbit/s, "
        "tcp 2->1 4 MB sha256 FAILED 4096/4194304 B"
    )
    rel = {
        "ok": False,
        "backend_entries_removed": True,
        "daemon_running": False,
        "log_without_traceback": False,
        "secs": 30.5,
    }
    line = scenario.scenario_line("driver-hop", False, 40, {"driver_release": rel})
    assert line == (
        "lab: scenario driver-hop: FAILED (40s), driver release FAILED "
        "(daemon stopped, traceback) 30.5s after xl destroy"
    )
    rel.update(ok=True, daemon_running=True, log_without_traceback=True, secs=1.2)
    line = scenario.scenario_line("driver-hop", True, 40, {"driver_release": rel})
    assert line.endswith(": OK (40s), driver release OK 1.2s after xl destroy")
    err = scenario.scenario_line("driver-hop", False, 3, {}, "ncctl attach failed:\n  EACCES")
    assert err == "lab: scenario driver-hop: FAILED (3s), error: ncctl attach failed: EACCES"
    assert "\n" not in err
    assert scenario.scenario_line("switch", True, 1, {}).startswith("lab: scenario switch: OK")


def test_tcpxfer_sender_waits_for_a_late_receiver(tmp_path):
    import socket
    import threading

    from lab import tcpxfer

    with socket.socket() as probe:  # a free port nobody listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    got: dict[str, bytes] = {}

    def late_receiver() -> None:
        time.sleep(1.0)
        with socket.create_server(("127.0.0.1", port)) as srv:
            conn, _ = srv.accept()
            with conn:
                got["data"] = conn.recv(16)

    t = threading.Thread(target=late_receiver)
    t.start()
    t0 = time.monotonic()
    with tcpxfer.connect("127.0.0.1", port, timeout=10, wait=20) as s:
        s.sendall(b"hello")
    t.join(10)
    assert got["data"] == b"hello" and 0.9 < time.monotonic() - t0 < 15
    with pytest.raises(ConnectionRefusedError):  # nobody ever listens: gives up
        tcpxfer.connect("127.0.0.1", port, timeout=5, wait=0.6)


def _snapshot(uptime, cpu, pump, pump_cs, irq, rx_pkts):
    return "\n".join(
        [
            f"{profile.MARK} uptime",
            f"{uptime} 1.0",
            f"{profile.MARK} stat",
            "cpu  " + " ".join(str(v) for v in cpu) + " 0 0",
            "cpu0 1 2 3 4 5 6 7 8 0 0",
            f"{profile.MARK} tasks",
            "300 300 5 5 ncd",
            f"300 305 {pump} 7 ncd-pump",
            "9 9 1 1 my (odd) comm",
            f"{profile.MARK} ctxt",
            f"305 v {pump_cs}",
            "305 nonv 3",
            f"{profile.MARK} irq",
            "           CPU0       ",
            f" 70:       {irq}  xen-dyn    -event     evtchn:ncd",
            "NMI:          0   Non-maskable interrupts",
            f"{profile.MARK} netdev",
            "Inter-|   Receive                  |  Transmit",
            " face |bytes packets errs drop fifo frame compressed multicast|bytes packets",
            f"   nc0: {rx_pkts * 1000} {rx_pkts} 0 0 0 0 0 0 5000 5 0 0 0 0 0 0",
            "    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0",
            f"{profile.MARK} end",
        ]
    )


def test_profile_window_summary():
    a = _snapshot(100.0, [100, 0, 100, 800, 0, 0, 0, 0], 10, 40, 1000, 10)
    # 2 s later on one vCPU (200 ticks): 50 user, 30 system, 20 softirq, 80 idle, 20 steal
    b = _snapshot(102.0, [150, 0, 130, 880, 0, 0, 20, 20], 110, 240, 5000, 2010)
    text = "noise\n" + a + "\n" + b + "\n"
    snaps = profile.parse_snapshots(text)
    assert len(snaps) == 2 and snaps[0].threads[9].comm == "my (odd) comm"
    w = profile.window_summary(text)
    assert w["cpus"] == 1 and w["secs"] == 2.0
    assert w["cpu_pct"] == {
        "user": 25.0,
        "nice": 0.0,
        "system": 15.0,
        "idle": 40.0,
        "iowait": 0.0,
        "irq": 0.0,
        "softirq": 10.0,
        "steal": 10.0,
        "busy": 50.0,
    }
    pump = w["threads"][0]
    assert (pump["proc"], pump["thread"], pump["cpu_pct"]) == ("ncd", "ncd-pump", 50.0)
    assert (pump["sleeps_per_s"], pump["preempted_per_s"]) == (100, 0)
    assert w["irqs_per_s"] == {"70 xen-dyn -event evtchn:ncd": 2000}
    assert w["net"] == {
        "nc0": {"rx_pps": 1000, "tx_pps": 0, "rx_bytes_per_pkt": 1000, "tx_bytes_per_pkt": 0}
    }
    assert "error" in profile.window_summary(a)  # one snapshot: the window did not close


def test_profile_window_cmd_returns_at_once_and_leaves_two_snapshots(tmp_path):
    out = tmp_path / "prof.txt"
    t0 = time.monotonic()
    res = agent.run_command(profile.window_cmd(0.5, 0.5, str(out)), 10, 1024)
    assert res["rc"] == 0 and time.monotonic() - t0 < 1
    parts = [agent.run_command(c, 30, 1 << 22) for c in profile.window_read_cmds(str(out), 20)]
    assert all(p["rc"] == 0 and p["out"].count(f"{profile.MARK} end") == 1 for p in parts)
    w = profile.window_summary(parts[0]["out"] + parts[1]["out"])
    me = [t for t in w["threads"] if t["tid"] == os.getpid()]  # the snapshot saw this test
    assert not w["threads"] or all(t["proc"] for t in w["threads"])
    assert profile.parse_snapshots(parts[0]["out"])[0].threads[os.getpid()].comm
    del me
    assert w["cpus"] >= 1 and w["secs"] > 0 and "busy" in w["cpu_pct"]


def test_xentop_and_counter_deltas():
    xt = (
        "      NAME  STATE   CPU(sec) CPU(%)     MEM(k)\n"
        "  Domain-0 -----r        100   99.0     786432\n"
        "      NAME  STATE   CPU(sec) CPU(%)     MEM(k)\n"
        "  Domain-0 -----r        105   51.5     786432\n"
        "  labguest --b---         20   97.2     327680\n"
    )
    assert profile.xentop_cpu(xt) == {"Domain-0": 51.5, "labguest": 97.2}
    d = profile.counter_deltas(
        {"frames_tx": 10, "bytes_tx": 100, "notifications_sent": 1},
        {
            "frames_tx": 110,
            "frames_rx": 100,
            "bytes_tx": 6_400_100,
            "bytes_rx": 6600,
            "notifications_sent": 51,
            "notifications_received": 21,
            "ring_full_waits": 4,
        },
    )
    assert d["bytes_per_frame_tx"] == 64000 and d["bytes_per_frame_rx"] == 66
    assert (d["notify_sent_per_frame"], d["notify_recv_per_frame"]) == (0.25, 0.105)
    assert d["ring_full_per_1000_frames"] == 20.0


def test_copy_modes_and_iperf_text():
    mb = 4 << 20
    sw = [
        {
            "name": "sw0",
            "forward_copy": "memcpy",
            "grant_copy_calls": 0,
            "forwarded": [
                {"origin": 1, "destination": 2, "bytes": mb + 10},
                {"origin": 2, "destination": 1, "bytes": mb + 20},
            ],
        },
        {
            "name": "swg",
            "forward_copy": "grant",
            "grant_copy_calls": 70,
            "forwarded": [
                {"origin": 1, "destination": 2, "bytes": mb + 1},
                {"origin": 2, "destination": 1, "bytes": mb + 2},
            ],
        },
    ]
    assert scenario.copy_modes(json.dumps({"switches": sw}), 4)["ok"]
    sw[1]["grant_copy_calls"] = 0  # grant mode that never grant-copied
    assert not scenario.copy_modes(json.dumps({"switches": sw}), 4)["ok"]
    sw[1]["grant_copy_calls"] = 70
    sw[0]["forwarded"] = sw[0]["forwarded"][:1]  # one direction only
    assert not scenario.copy_modes(json.dumps({"switches": sw}), 4)["ok"]
    assert not scenario.copy_modes("not json", 4)["ok"]
    out = (
        "[  5]   0.00-4.00   sec  25.1 MBytes  52.6 Mbits/sec   12             sender\n"
        "[  5]   0.00-4.04   sec  24.9 MBytes  1.05 Gbits/sec                  receiver\n"
    )
    assert scenario.iperf_text_mbit(out) == 1050.0 and scenario.iperf_text_mbit("") is None
    iperfs = [
        {"from": 1, "to": 2, "copy": "memcpy", "mbit": 100.0},
        {"from": 1, "to": 2, "copy": "grant", "mbit": 80.0},
        {"from": 2, "to": 1, "copy": "memcpy", "mbit": 90.0},
    ]
    assert scenario.copy_comparison(iperfs) == (
        "iperf3 1->2 memcpy 100.0 / grant 80.0 Mbit/s (0.80x), 2->1 memcpy 90.0 / grant None Mbit/s"
    )


def test_profile_table_ratios_and_cost_per_mb():
    rows = [
        {
            "path": "netback",
            "direction": "dom0->guest",
            "mbit": 800.0,
            "dom0": {"cpus": 2, "cpu_pct": {"busy": 50.0, "steal": 0.0}},
            "guest": {"cpus": 1, "cpu_pct": {"busy": 90.0, "steal": 5.0}},
        },
        {
            "path": "ncd 128 KiB",
            "direction": "dom0->guest",
            "mbit": 200.0,
            "dom0": {"error": "1 complete snapshot(s) in the window"},
            "guest": {"cpus": 1, "cpu_pct": {"busy": 100.0, "steal": 1.0}},
        },
    ]
    table = scenario.profile_table(rows)
    assert table[2] == "| netback | dom0->guest | 800.0 | 1.00 | 50.0% | 10 | 90.0% | 5.0% | 9 |"
    assert table[3] == "| ncd 128 KiB | dom0->guest | 200.0 | 0.25 | ?% | ? | 100.0% | 1.0% | 40 |"
