"""Fast checks of the lab's own machinery (no QEMU): agent framing, chunked xenstore
results, command timeouts, module dependency parsing, QEMU command line, parsers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lab import agent, images, scenario
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


@pytest.mark.parametrize("line", ["", "plain kernel line", f"{agent.MARK} R !!notbase64",
                                  f"{agent.MARK} R " + "aGVsbG8=",  # not a JSON object
                                  f"{agent.MARK} X abc"])
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
    out = ("10 packets transmitted, 10 packets received, 0% packet loss\n"
           "round-trip min/avg/max = 4.512/15.020/40.100 ms\n")
    assert scenario.ping_summary(out) == {"sent": 10, "received": 10, "min_ms": 4.512,
                                          "avg_ms": 15.02, "max_ms": 40.1}
    js = '{"end": {"sum_received": {"bits_per_second": 123456789.0}}}'
    assert scenario.iperf_mbit(js) == 123.5
    assert scenario.iperf_mbit("iperf3: error") is None


def test_source_files_are_the_projects(tmp_path):
    files = images.source_files()
    assert "pyproject.toml" in files and "setup.py" in files
    assert any(f.startswith("ncd/") for f in files)
    assert not any(f.endswith((".so", ".o", ".pyc")) for f in files)
    assert all(Path(images.REPO, f).is_file() for f in files)
