"""``python -m lab``: build (or reuse) the images, boot Xen in QEMU, run the scenario.

Exit status 0 when every step that ran passed. The report (JSON) and every log land
in the work directory (``--workdir``, default a fresh ``/tmp/ncd-lab-*``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from lab import images
from lab.console import LabError
from lab.scenario import Lab, log

DEFAULT_STEPS = ["vchan", "facts", "kernel", "daemon", "switch", "driver-hop"]
# opt-in: `profile` (dom0 <-> guest through netback and ncd at several ring sizes, with a
# CPU profile of both domains; ~4 minutes) runs only when --steps names it
STEPS = [*DEFAULT_STEPS, "profile"]
TWO_GUEST_STEPS = {"switch", "driver-hop"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="image cache (default $NCD_LAB_CACHE or ~/.cache/ncd-lab)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="logs and report")
    p.add_argument("--mb", type=int, default=4, help="MB per transfer (default 4)")
    p.add_argument(
        "--fwd-mb",
        type=int,
        default=4,
        help="MB per TCP transfer in the switch and driver-hop scenarios",
    )
    p.add_argument(
        "--vsp-baseline",
        action="store_true",
        help="also time vchan-socket-proxy against itself (slow, flaky)",
    )
    p.add_argument(
        "--steps",
        default=",".join(DEFAULT_STEPS),
        help=f"comma-separated subset of {','.join(STEPS)}, run in the order given "
        f"(default {','.join(DEFAULT_STEPS)}: profile is opt-in)",
    )
    p.add_argument(
        "--profile-rings",
        default="131072,1048576",
        help="comma-separated ring_bytes the profile step runs ncd with (default 131072,1048576)",
    )
    p.add_argument(
        "--profile-tso-rtt-log",
        type=int,
        default=None,
        help="profile step: also run ncd at the first ring size with net.ipv4.tcp_tso_rtt_log "
        "set to this in dom0 and the guest (Linux's TSO sizing by min RTT; default 9)",
    )
    p.add_argument("--build-only", action="store_true", help="build the images and stop")
    p.add_argument("--rebuild", action="store_true", help="ignore cached images")
    p.add_argument(
        "--max-secs",
        type=float,
        default=1140,
        help="hard limit for the whole run; QEMU is killed after it",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        print(f"lab: unknown steps {sorted(unknown)}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        imgs = images.build(args.cache, force=args.rebuild)
    except (RuntimeError, OSError) as exc:
        print(f"lab: image build failed: {exc}", file=sys.stderr)
        return 1
    log(f"images ready after {time.monotonic() - t0:.0f}s: {imgs.dir}")
    if args.build_only:
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ncd-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lab = Lab(
        imgs,
        workdir,
        mb=args.mb,
        vsp_baseline=args.vsp_baseline,
        fwd_mb=args.fwd_mb,
        two_guests=bool(TWO_GUEST_STEPS & set(steps)),
        profile_rings=tuple(int(r) for r in args.profile_rings.split(",") if r),
        profile_tso_rtt_log=args.profile_tso_rtt_log,
    )
    lab.report.update(
        {"images": str(imgs.dir), "steps": steps, "kernel": imgs.manifest.get("kernel_version")}
    )
    expired = threading.Event()

    def watchdog() -> None:
        if not done.wait(args.max_secs - (time.monotonic() - t0)):
            expired.set()
            log(f"time limit {args.max_secs:.0f}s reached: stopping QEMU")
            if lab.qemu is not None:
                lab.qemu.stop()

    done = threading.Event()
    threading.Thread(target=watchdog, daemon=True).start()
    status = 0
    current = "boot"
    failed: list[str] = []
    try:
        lab.boot()
        current = "dom0"
        lab.check_dom0()
        current = "guest"
        lab.start_guest()
        for step in steps:
            current = step
            t = time.monotonic()
            if step == "vchan":
                lab.vchan_steps()
            elif step == "facts":
                lab.observe_xen()
            elif step == "kernel":
                lab.kernel_path()
            elif step == "daemon":
                lab.daemon_path()
            elif step == "profile":
                lab.profile_path()
            elif step == "switch":
                if not lab.run_scenario("switch", lab.switch_scenario):
                    failed.append(step)
            elif step == "driver-hop":
                if not lab.run_scenario("driver-hop", lab.driver_hop_scenario):
                    failed.append(step)
            lab.report.setdefault("step_secs", {})[step] = round(time.monotonic() - t, 1)
        if failed:
            current = ",".join(failed)
            raise LabError(f"scenario(s) failed: {', '.join(failed)}")
        current = "destroy"
        with_daemons = ({"daemon", "profile"} | TWO_GUEST_STEPS) & set(steps)
        lab.destroy_guest(expect_backend_cleanup=bool(with_daemons))
        current = "done"
    except (LabError, OSError, ValueError) as exc:
        status = 1
        lab.report["failed_step"] = current
        lab.report["error"] = str(exc)[-6000:]
        log(f"FAILED in step {current}: {exc}")
        if isinstance(exc, OSError | ValueError):
            traceback.print_exc()
        if expired.is_set():
            lab.report["error"] += f"\n(time limit {args.max_secs:.0f}s reached)"
        try:
            lab.collect_logs(workdir / "logs")
        except (LabError, OSError) as e2:
            log(f"log collection failed: {e2}")
        if lab.qemu is not None:
            print(
                f"--- serial log tail ({lab.qemu.serial_log}) ---\n{lab.qemu.serial_tail(4000)}",
                flush=True,
            )
    finally:
        done.set()
        lab.shutdown()
    lab.report["total_secs"] = round(time.monotonic() - t0, 1)
    lab.report["ok"] = status == 0
    (workdir / "report.json").write_text(json.dumps(lab.report, indent=1, sort_keys=True))
    log(
        f"{'PASSED' if status == 0 else 'FAILED'} in {lab.report['total_secs']}s; "
        f"report: {workdir / 'report.json'}"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
