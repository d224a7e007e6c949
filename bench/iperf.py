"""One iperf3 measurement between two hosts of a benchmark (shared by the benches)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RunClient = Callable[[list[str], float], subprocess.CompletedProcess[str]]


def iperf_once(server_argv: Sequence[str], server_env: Mapping[str, str],
               run_client: RunClient, server_ip: str, seconds: float,
               extra: Sequence[str]) -> dict[str, Any]:
    """Start a one-shot ``iperf3 -s`` (``server_argv`` prefixes it: the netns entry),
    run the client with ``run_client(argv, timeout)`` until the server listens, and
    return iperf3's JSON, or ``{"error": ...}``."""
    srv = subprocess.Popen([*server_argv, "iperf3", "-s", "-1", "-B", server_ip],
                           env=dict(server_env), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            r = run_client(["iperf3", "-c", server_ip, "-t", str(seconds), "-J", *extra],
                           seconds + 30)
            if "Connection refused" in r.stdout + r.stderr:
                time.sleep(0.1)
                continue
            try:
                return dict(json.loads(r.stdout))
            except ValueError:
                return {"error": f"rc {r.returncode}: {r.stdout[-200:]} {r.stderr[-200:]}"}
        raise RuntimeError("iperf3 server did not come up")
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
