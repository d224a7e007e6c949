"""ncctl stats / list for switch ports: the forwarded table per switch, ``switch:NAME``."""

from __future__ import annotations

from tests.daemon.test_ncctl import Daemon, run

STATS = {
    "vifs": [{"domid": 1, "devid": 0, "state": "Connected", "frames_tx": 1, "frames_rx": 2,
              "bytes_tx": 3, "bytes_rx": 4, "drops": {"spoofed_source": 5, "ring_full": 1}}],
    "handshake_failures": {},
    "switches": [{"name": "sw0", "ports": 2, "forward_copy": "memcpy",
                  "port_stops": {"bad_peer": 1},
                  "forwarded": [{"origin": 1, "destination": 2, "frames": 7, "bytes": 700},
                                {"origin": 2, "destination": 1, "frames": 8, "bytes": 800}]}],
}
LIST = {"vifs": [{"domid": 1, "devid": 0, "state": "Connected", "ifname": "switch:sw0",
                  "mac": "00:16:3e:00:00:01", "mtu": 1500, "bridge": None, "switch": "sw0"}]}


def test_stats_and_list_with_a_switch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "ncd.sock"
    with Daemon(sock, {"list": LIST, "stats": STATS}):
        rc, out, err = run(["stats"], socket=sock)
        assert (rc, err) == (0, "")
        lines = out.splitlines()
        assert lines[1].split()[7] == "6"  # drops of the port, all reasons
        assert lines[2] == "switch sw0: 2 ports, forward_copy memcpy, ports stopped: bad_peer 1"
        assert lines[3].split() == ["ORIGIN", "DESTINATION", "FRAMES", "BYTES"]
        assert lines[4].split() == ["1", "2", "7", "700"]
        assert lines[5].split() == ["2", "1", "8", "800"]
        rc, out, _ = run(["list"], socket=sock)
        assert out.splitlines()[1].split()[3] == "switch:sw0"
