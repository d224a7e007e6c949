"""The daemon's configuration: ``/etc/ncd/ncd.toml`` (or ``--config``), flags override.

File format (every key optional; unknown sections/keys are errors naming the key)::

    [daemon]
    log_level = "info"                  # debug | info | warning | error
    control_socket = "/run/ncd/ncd.sock" # default: $NCD_RUNTIME_DIR/ncd.sock else /run/ncd/ncd.sock

    [metrics]
    enabled = true
    address = "127.0.0.1"
    port = 9477

    [backend]
    bridge = "xenbr0"                   # default bridge for vifs that name none ("" = none)
    ovs_db = ""                         # Open vSwitch database of OVS bridges (ovs-vsctl
                                        # --db, e.g. "unix:/run/ovs/db.sock"; "" = its
                                        # default, /var/run/openvswitch/db.sock)

    [frontend]
    ifname = "nc{devid}"                # TAP name template in the guest

    [channel]
    ring_bytes = 131072                 # each way, power of two, 4096 .. 1048576
    reconnect_delay = 1.0               # seconds before retrying a closed device
    reconnect_delay_max = 30.0          # exponential backoff cap
    max_queues = 2                      # queues (channels) per vif, 1..16: the backend
                                        # offers this many (multi-queue-max-queues), the
                                        # frontend takes min(this, the backend's, its
                                        # CPUs); 1 = single queue. Switch ports and
                                        # rate-limited vifs use one (docs/protocol.md)
    spin_us = 0                         # before sleeping, a pump spins up to this long
                                        # for the next frame, only while the peer keeps
                                        # it busy (a stream; an answer due within it),
                                        # never on one CPU. 0 (the default) = sleep at
                                        # once. 150 pays where every domain's vCPUs have
                                        # CPUs of their own; where domains share CPUs it
                                        # costs (docs/performance.md). 0 .. 10000

    [driver]                            # `ncd driver` only (a driver domain)
    uplink_switch = "up"                # the devices it fronts become ports of this
                                        # switch instead of TAPs ("" = TAPs, the default)

    [switch.NAME]                       # an in-daemon learning switch (NAME: 1..15 of
                                        # [A-Za-z0-9_-]); vifs join it with
                                        # `ncctl attach --switch NAME`. A switch an attach
                                        # names but no section declares is created with
                                        # these defaults on first use and removed with its
                                        # last port; a declared one lives as long as the
                                        # daemon.
    tap = "ncsw0"                       # a TAP port to the local kernel ("" = none)
    bridge = "br0"                      # put that TAP into this bridge (needs tap)
    forward_copy = "memcpy"             # "memcpy" (copy between mapped rings; the faster
                                        # on xensim) or "grant" (hypervisor grant copies
                                        # from the origin's grant: the forwarder never
                                        # touches the payload)
    ageing = 300                        # seconds a learned MAC stays valid

    [[vif]]                             # a declared vif (backend and driver roles): attached
                                        # by this daemon to the domain called `domain`
                                        # whenever one exists (at start, and at every
                                        # @introduceDomain), as xl does with a domain
                                        # config's vif = [...]; its entries go with the
                                        # domain (@releaseDomain)
    domain = "guest1"                   # the domain's name (/local/domain/<id>/name)
    spec = "bridge=xenbr0,rate=100Mb/s" # an xl vifspec (ncd.vifspec) without backend=
                                        # (the backend is this daemon's domain); devid
                                        # defaults as in xl (the next after the highest
                                        # given, per domain), mac to a fixed one made from
                                        # the name and devid
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import parse, vifspec
from .control import default_socket_path
from .parse import BadEntry
from .queues import QUEUES_MAX

DEFAULT_PATH = Path("/etc/ncd/ncd.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")
RING_MIN, RING_MAX = 4096, 1 << 20
SPIN_MAX_US = 10_000  # cext/pump/pump.h NCD_PUMP_SPIN_MAX_USEC


class ConfigError(ValueError):
    """A bad configuration; the message names the file (or flag) and the key."""


def default_control_socket() -> str:
    return str(default_socket_path())


@dataclass(frozen=True)
class DaemonSection:
    log_level: str = "info"
    control_socket: str = field(default_factory=default_control_socket)


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 9477


@dataclass(frozen=True)
class BackendSection:
    bridge: str = ""
    ovs_db: str = ""


@dataclass(frozen=True)
class FrontendSection:
    ifname: str = "nc{devid}"


@dataclass(frozen=True)
class ChannelSection:
    ring_bytes: int = 131072
    reconnect_delay: float = 1.0
    reconnect_delay_max: float = 30.0
    max_queues: int = 2
    spin_us: int = 0


FORWARD_COPY = ("memcpy", "grant")
AGEING_MAX = 1_000_000.0


@dataclass(frozen=True)
class DriverSection:
    uplink_switch: str = ""


@dataclass(frozen=True)
class SwitchSection:
    """One ``[switch.NAME]`` table (the defaults are those of an undeclared switch)."""

    tap: str = ""
    bridge: str = ""
    forward_copy: str = "memcpy"
    ageing: float = 300.0


@dataclass(frozen=True)
class DeclaredVif:
    """One ``[[vif]]`` table: a vif for whichever domain is called ``domain``."""

    domain: str
    spec: str
    options: vifspec.VifOptions  # parsed spec, devid filled in
    mac: str  # the spec's, else :func:`ncd.vifspec.stable_mac`

    @property
    def devid(self) -> int:
        assert self.options.devid is not None
        return self.options.devid


@dataclass(frozen=True)
class Config:
    daemon: DaemonSection = field(default_factory=DaemonSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    backend: BackendSection = field(default_factory=BackendSection)
    frontend: FrontendSection = field(default_factory=FrontendSection)
    channel: ChannelSection = field(default_factory=ChannelSection)
    driver: DriverSection = field(default_factory=DriverSection)
    switches: Mapping[str, SwitchSection] = field(default_factory=dict)  # [switch.NAME]
    vifs: tuple[DeclaredVif, ...] = ()  # [[vif]]

    def frontend_ifname(self, devid: int) -> str:
        return self.frontend.ifname.format(devid=devid)

    def switch(self, name: str) -> SwitchSection:
        """The settings of switch ``name``: its section, else the defaults."""
        return self.switches.get(name) or SwitchSection()


_SECTION_TYPES = {
    "daemon": DaemonSection,
    "metrics": MetricsSection,
    "backend": BackendSection,
    "frontend": FrontendSection,
    "channel": ChannelSection,
    "driver": DriverSection,
}


def _check_type(where: str, key: str, value: Any, default: Any) -> Any:
    want = type(default)
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {value!r}")
        return value
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
        return value
    if want is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def _validate(where: str, cfg: Config) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {why}")

    if cfg.daemon.log_level not in LOG_LEVELS:
        raise bad("daemon.log_level", f"{cfg.daemon.log_level!r} is not one of {LOG_LEVELS}")
    if not cfg.daemon.control_socket.startswith("/"):
        raise bad("daemon.control_socket", "must be an absolute path")
    if len(os.fsencode(cfg.daemon.control_socket)) > 107:
        raise bad("daemon.control_socket", "longer than a Unix socket path may be (107)")
    try:
        ipaddress.ip_address(cfg.metrics.address)
    except ValueError:
        raise bad("metrics.address", f"{cfg.metrics.address!r} is not an IP address") from None
    if not 0 <= cfg.metrics.port <= 65535:
        raise bad("metrics.port", f"{cfg.metrics.port} is not a TCP port")
    if cfg.backend.bridge:
        try:
            parse.bridge("backend.bridge", cfg.backend.bridge)
        except BadEntry as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if cfg.backend.ovs_db and not cfg.backend.ovs_db.startswith(("unix:", "tcp:", "ssl:")):
        raise bad("backend.ovs_db", f"{cfg.backend.ovs_db!r} is not unix:FILE, tcp:... or ssl:...")
    try:
        name = cfg.frontend.ifname.format(devid=65535)
        if "{devid}" not in cfg.frontend.ifname:
            raise ValueError("must contain {devid}")
        parse.ifname("frontend.ifname", name)
    except (KeyError, IndexError, ValueError) as exc:
        raise bad("frontend.ifname", f"bad template {cfg.frontend.ifname!r}: {exc}") from None
    rb = cfg.channel.ring_bytes
    if not RING_MIN <= rb <= RING_MAX or rb & (rb - 1):
        raise bad("channel.ring_bytes", f"{rb} is not a power of two in {RING_MIN}..{RING_MAX}")
    if not 0 <= cfg.channel.spin_us <= SPIN_MAX_US:
        raise bad("channel.spin_us", f"{cfg.channel.spin_us} is not in 0..{SPIN_MAX_US}")
    if not 1 <= cfg.channel.max_queues <= QUEUES_MAX:
        raise bad("channel.max_queues", f"{cfg.channel.max_queues} is not in 1..{QUEUES_MAX}")
    if not 0 < cfg.channel.reconnect_delay <= cfg.channel.reconnect_delay_max <= 3600:
        raise bad(
            "channel.reconnect_delay",
            "need 0 < reconnect_delay <= reconnect_delay_max <= 3600",
        )
    if cfg.driver.uplink_switch:
        try:
            parse.switch_name("driver.uplink_switch", cfg.driver.uplink_switch)
        except BadEntry as exc:
            raise ConfigError(f"{where}: {exc} (1..15 of A-Z a-z 0-9 _ -)") from None
    for name, sw in cfg.switches.items():
        _validate_switch(where, f"switch.{name}", sw)


def _validate_switch(where: str, key: str, sw: SwitchSection) -> None:
    def bad(sub: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: {key}.{sub}: {why}")

    if sw.forward_copy not in FORWARD_COPY:
        raise bad("forward_copy", f"{sw.forward_copy!r} is not one of {FORWARD_COPY}")
    if not 1 <= sw.ageing <= AGEING_MAX:
        raise bad("ageing", f"{sw.ageing:g} is not a number of seconds in 1..{AGEING_MAX:g}")
    for sub, value in (("tap", sw.tap), ("bridge", sw.bridge)):
        if value:
            try:
                parse.ifname(f"{key}.{sub}", value)
            except BadEntry as exc:
                raise ConfigError(f"{where}: {exc}") from None
    if sw.bridge and not sw.tap:
        raise bad("bridge", "needs a tap (the bridge takes the switch's TAP as a port)")


def _section(where: str, sname: str, current: Any, body: Any) -> Any:
    """``current`` (a section dataclass) with the keys of ``body``, each type-checked."""
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: {sname}: expected a table")
    known = {f.name for f in fields(current)}
    changes = {}
    for key, value in body.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {sname}.{key}")
        changes[key] = _check_type(where, f"{sname}.{key}", value, getattr(current, key))
    return replace(current, **changes)


def _switches(where: str, cfg: Config, body: Any) -> dict[str, SwitchSection]:
    """``[switch.NAME]`` tables merged into cfg's."""
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: switch: expected [switch.NAME] tables")
    out = dict(cfg.switches)
    for name, table in body.items():
        try:
            parse.switch_name(f"switch.{name}", name)
        except BadEntry as exc:
            raise ConfigError(f"{where}: {exc} (1..15 of A-Z a-z 0-9 _ -)") from None
        out[name] = _section(where, f"switch.{name}", cfg.switch(name), table)
    return out


def _declared_vifs(where: str, body: Any) -> tuple[DeclaredVif, ...]:
    """``[[vif]]`` tables; devids as libxl numbers a domain's vif list: the ones given
    stay, the others follow the highest given, in order."""
    if not isinstance(body, list) or not all(isinstance(t, Mapping) for t in body):
        raise ConfigError(f"{where}: vif: expected [[vif]] tables")
    parsed: list[tuple[str, str, vifspec.VifOptions]] = []
    for i, table in enumerate(body):
        key = f"vif[{i}]"
        unknown = sorted(set(table) - {"domain", "spec"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {key}.{unknown[0]}")
        for sub in ("domain", "spec"):
            if not isinstance(table.get(sub), str):
                raise ConfigError(f"{where}: {key}.{sub}: expected a string")
        domain, spec = table["domain"], table["spec"]
        try:
            parse.text(f"{key}.domain", domain)
            if not domain or domain.isdigit():
                raise BadEntry(f"{key}.domain: {domain!r} is not a domain name")
            opts = vifspec.parse_vifspec([spec])
        except BadEntry as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
        if opts.backend is not None:
            raise ConfigError(
                f"{where}: {key}.spec: backend: a declared vif's backend is "
                "the daemon that declares it"
            )
        parsed.append((domain, spec, opts))
    out = []
    for domain in dict.fromkeys(d for d, _, _ in parsed):
        mine = [(s, o) for d, s, o in parsed if d == domain]
        given = [o.devid for _, o in mine if o.devid is not None]
        dup = {d for d in given if given.count(d) > 1}
        if dup:
            raise ConfigError(f"{where}: vif: domain {domain!r} has devid {min(dup)} twice")
        last = max(given, default=-1)
        for spec, opts in mine:
            if opts.devid is None:
                last += 1
                opts = replace(opts, devid=last)
            assert opts.devid is not None
            mac = opts.mac or vifspec.stable_mac(domain, opts.devid)
            out.append(DeclaredVif(domain, spec, opts, mac))
    return tuple(out)


def _apply(where: str, cfg: Config, data: Mapping[str, Any]) -> Config:
    """Merge ``{"section": {"key": value}}`` into cfg, rejecting unknown keys."""
    sections: dict[str, Any] = {}
    for sname, body in data.items():
        if sname == "switch":
            sections["switches"] = _switches(where, cfg, body)
            continue
        if sname == "vif":
            sections["vifs"] = cfg.vifs + _declared_vifs(where, body)
            continue
        stype = _SECTION_TYPES.get(sname)
        if stype is None:
            raise ConfigError(f"{where}: unknown section [{sname}]")
        sections[sname] = _section(where, sname, getattr(cfg, sname), body)
    return replace(cfg, **sections)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the TOML file, then ``overrides`` (``{"metrics.port": 1}``).

    ``path`` None reads /etc/ncd/ncd.toml if it exists; an explicit path must exist.
    """
    cfg = Config()
    if path is None:
        file = DEFAULT_PATH if DEFAULT_PATH.exists() else None
    else:
        file = Path(path)
    if file is not None:
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{file}: {exc.strerror}") from None
        cfg = _apply(str(file), cfg, data)
    if overrides:
        nested: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            sname, _, key = dotted.partition(".")
            nested.setdefault(sname, {})[key] = value
        cfg = _apply("command line", cfg, nested)
    _validate(str(file) if file else "configuration", cfg)
    return cfg


# ---------------------------------------------------------------- flags


_FLAGS: list[tuple[str, str, type, str]] = [
    ("--log-level", "daemon.log_level", str, "debug, info, warning or error"),
    ("--control-socket", "daemon.control_socket", str, "control socket path"),
    ("--metrics-address", "metrics.address", str, "Prometheus endpoint address"),
    ("--metrics-port", "metrics.port", int, "Prometheus endpoint port"),
    ("--ring-bytes", "channel.ring_bytes", int, "vchan ring size each way"),
    ("--max-queues", "channel.max_queues", int,
     f"queues (channels) per vif, 1..{QUEUES_MAX} (config [channel] max_queues)"),
    ("--spin-us", "channel.spin_us", int,
     f"microseconds a busy pump spins before sleeping, 0..{SPIN_MAX_US}; 0 = never "
     "(config [channel] spin_us)"),
]


def add_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """The daemon flags that override the file (role: 'backend', 'frontend' or 'driver')."""
    parser.add_argument("--config", metavar="PATH", help=f"config file (default {DEFAULT_PATH})")
    for flag, key, typ, text in _FLAGS:
        parser.add_argument(flag, dest=key, type=typ, default=None, help=text)
    parser.add_argument(
        "--no-metrics",
        dest="metrics.enabled",
        action="store_const",
        const=False,
        default=None,
        help="disable the Prometheus endpoint",
    )
    if role in ("backend", "driver"):
        parser.add_argument(
            "--bridge",
            dest="backend.bridge",
            default=None,
            help="default bridge for the TAPs of vifs that name none",
        )
    if role in ("frontend", "driver"):
        parser.add_argument(
            "--ifname",
            dest="frontend.ifname",
            default=None,
            help="TAP name template of fronted devices, e.g. nc{devid}",
        )
    if role == "driver":
        parser.add_argument(
            "--uplink-switch",
            dest="driver.uplink_switch",
            default=None,
            metavar="NAME",
            help="the devices this domain fronts become (trunk) ports of switch NAME "
            "instead of TAPs (config [driver] uplink_switch)",
        )


def from_args(args: argparse.Namespace) -> Config:
    """The Config for parsed args: file from --config, then every flag that was given."""
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    return load_config(getattr(args, "config", None), overrides)
