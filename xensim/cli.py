"""`ncd-sim`: bring a simulated Xen host up and down, run commands as its domains."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from xensim import paths
from xensim.world import World, WorldError

DEMO_GROUP = "xensim.demo"


def _world(args: argparse.Namespace) -> World:
    return World(paths.world_dir(args.dir))


def cmd_up(args: argparse.Namespace) -> int:
    world = _world(args)
    world.up(args.domains, netns_prefix=args.netns_prefix)
    doms = ", ".join(f"dom{d} (netns {world.netns(d)})" for d in world.domids())
    print(f"xensim up at {world.dir}: {doms}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    world = _world(args)
    world.down(keep_logs=args.keep_logs)
    print(f"xensim down at {world.dir}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    world = _world(args)
    _require_up(world)
    print(world.create_domain(args.name))
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    world = _world(args)
    _require_up(world)
    world.destroy(args.domid)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    world = _world(args)
    world.netns(args.domid)  # validates the domid
    for key, value in paths.domain_env(world.dir, args.domid).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    world = _world(args)
    _require_up(world)
    ns = world.netns(args.domid)
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise WorldError("exec needs a command: ncd-sim exec DOMID -- CMD ...")
    env = world.exec_env(args.domid)
    ip = shutil.which("ip")
    if ip is None:
        raise WorldError("`ip` (iproute2) not found")
    sys.stdout.flush()
    # `ip netns exec` enters the namespace and execs the command: the command
    # replaces this process, so signals reach it and its exit code is ours.
    os.execve(ip, ["ip", "netns", "exec", ns, *cmd], env)
    return 127  # not reached


def cmd_status(args: argparse.Namespace) -> int:
    world = _world(args)
    _require_up(world)
    stats = world.broker().stats()
    if args.json:
        print(json.dumps({"dir": str(world.dir), "domains": stats}, indent=1))
        return 0
    print(f"xensim at {world.dir}")
    for domid in world.domids():
        s = stats.get(domid, stats.get(str(domid), {}))
        print(f"  dom{domid:<3} netns {world.netns(domid):<12} {s}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo is the program under test's (ncd's), registered as an entry point:
    # the simulator knows no program by name and imports none.
    demos = {ep.name: ep for ep in entry_points(group=DEMO_GROUP)}
    if not demos:
        raise WorldError(
            f"no demo installed (entry point group {DEMO_GROUP!r}): "
            "install ncd into this environment (scripts/setup.sh)"
        )
    name = args.name or sorted(demos)[0]
    if name not in demos:
        raise WorldError(f"no demo named {name!r}; installed: {', '.join(sorted(demos))}")
    return int(demos[name].load()(paths.world_dir(args.dir)))


def _require_up(world: World) -> None:
    if not world.is_up():
        raise WorldError(f"no running world at {world.dir} (start one with `ncd-sim up`)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncd-sim", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the world does")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument(
            "--dir", help=f"world directory (default ${paths.ENV_WORLD} or {paths.DEFAULT_WORLD})"
        )
        return sp

    up = add("up", "start broker + xenstored, create dom0 and domU 1..N")
    up.add_argument(
        "--domains", type=int, default=1, metavar="N", help="domUs to create (default 1)"
    )
    up.add_argument(
        "--netns-prefix",
        default=paths.NETNS_PREFIX,
        metavar="P",
        help=f"name domain N's network namespace P<N> (default {paths.NETNS_PREFIX}); "
        "two worlds side by side need different --dir and --netns-prefix",
    )
    up.set_defaults(func=cmd_up)
    down = add("down", "tear the world down, nothing left behind")
    down.add_argument(
        "--keep-logs", action="store_true", help="keep the world directory's logs"
    )
    down.set_defaults(func=cmd_down)
    cr = add("create", "create one more domU, print its domid")
    cr.add_argument(
        "--name",
        help="the domain's name, written to /local/domain/<domid>/name as xl does "
        "(default domU<domid>; a name another domain has is refused)",
    )
    cr.set_defaults(func=cmd_create)
    de = add("destroy", "destroy a domU (kill its processes, free its resources)")
    de.add_argument("domid", type=int, help="the domain to destroy")
    de.set_defaults(func=cmd_destroy)
    env = add("env", "print the environment exports for a domain")
    env.add_argument("domid", type=int, help="the domain to act as")
    env.set_defaults(func=cmd_env)
    ex = add("exec", "run a command as a domain (its netns, its environment)")
    ex.add_argument("domid", type=int, help="the domain to act as")
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    ex.set_defaults(func=cmd_exec)
    st = add("status", "show domains and the hypervisor's resource counts")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_status)
    demo = add("demo", "up, run the daemons, ping across, show state, down")
    demo.add_argument(
        "--name",
        help=f"which installed demo to run (entry points {DEMO_GROUP!r}; default: the first)",
    )
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="ncd-sim: %(message)s",
    )
    try:
        return int(args.func(args))
    except (WorldError, FileExistsError, TimeoutError) as e:
        print(f"ncd-sim: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"ncd-sim: {e} (xensim needs root for network namespaces)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
