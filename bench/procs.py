"""Ending the daemons and helpers a benchmark started: SIGTERM to all, then a bounded wait
for each (killed if it does not exit), so one stuck process cannot hang the run."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable


def stop(procs: Iterable[subprocess.Popen], wait_s: float) -> None:
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(wait_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
