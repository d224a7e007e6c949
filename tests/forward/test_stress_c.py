"""The port-removal stress harness (tests/forward/c/switch_stress.c) in C, built twice:
with ThreadSanitizer (the switch's own structures: ports, slots, the active list, the
handshake, counters, tables; ring contents are suppressed, see c/tsan.supp) and with
ASan/UBSan (a copy into or out of a freed ring aborts). Guests flood the switch from two
threads while the main thread adds, uses, removes ports and frees their rings at once."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
C = Path(__file__).with_name("c")
SOURCES = [C / "switch_stress.c", ROOT / "cext/switch/switch.c", ROOT / "cext/pump/frame.c",
           *sorted((ROOT / "cext/forward").glob("*.c")),
           *sorted((ROOT / "cext/vchan").glob("*.c")), *sorted((ROOT / "cext/tracker").glob("*.c"))]
INCLUDES = [f"-I{ROOT / 'cext' / d}" for d in ("switch", "pump", "vchan", "tracker", "forward")]
FLAGS = {
    # the vchan layer's fences are not modelled by TSan (-Wno-tsan); see c/tsan.supp
    "tsan": ["-fsanitize=thread", "-Wno-tsan"],
    "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
             "-fno-omit-frame-pointer"],
}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.parametrize("kind", ["tsan", "asan"])
def test_port_removal_stress_in_c(kind: str, tmp_path: Path) -> None:
    exe = tmp_path / f"switch_stress_{kind}"
    build = subprocess.run(
        ["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *FLAGS[kind],
         *INCLUDES, *map(str, SOURCES), "-lxengnttab", "-lxenevtchn", "-lpthread",
         "-o", str(exe)], capture_output=True, text=True, check=False)
    if build.returncode and "cannot find -l" in build.stderr:
        pytest.skip(build.stderr.strip().splitlines()[-1])
    assert build.returncode == 0, build.stderr
    env = dict(os.environ,
               TSAN_OPTIONS=f"suppressions={C / 'tsan.supp'} halt_on_error=1 exitcode=66",
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    run = subprocess.run([str(exe), "300"], capture_output=True, text=True, env=env,
                         timeout=600, check=False)
    report = [ln for ln in run.stderr.splitlines() if "SUMMARY" in ln or "WARNING" in ln]
    assert run.returncode == 0, "\n".join(report) or run.stderr[-3000:]
    assert not report, report
    assert run.stdout.startswith("ok rounds=300"), run.stdout
