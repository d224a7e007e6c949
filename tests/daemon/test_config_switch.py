"""[switch.NAME] and [driver] in the daemon's config: defaults, validation naming the
key, and the driver's --uplink-switch flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncd.config import ConfigError, SwitchSection, from_args, load_config
from ncd.daemon.main import build_parser


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "ncd.toml"
    p.write_text(text)
    return load_config(p)


def test_switch_tables_and_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[switch.sw0]\ntap = "ncsw0"\nbridge = "br0"\nforward_copy = "grant"\n'
                         "ageing = 10\n[switch.up]\n")
    assert cfg.switches["sw0"] == SwitchSection("ncsw0", "br0", "grant", 10.0)
    assert cfg.switches["up"] == SwitchSection()
    assert cfg.switch("undeclared") == SwitchSection(forward_copy="memcpy", ageing=300.0)
    assert cfg.driver.uplink_switch == ""


@pytest.mark.parametrize("text,key", [
    ('[switch.sw0]\nforward_copy = "zerocopy"', "switch.sw0.forward_copy"),
    ("[switch.sw0]\nageing = 0", "switch.sw0.ageing"),
    ('[switch.sw0]\nageing = "long"', "switch.sw0.ageing"),
    ('[switch.sw0]\nbridge = "br0"', "switch.sw0.bridge"),
    ('[switch.sw0]\ntap = "a/b"', "switch.sw0.tap"),
    ("[switch.sw0]\nmtu = 9000", "switch.sw0.mtu"),
    ('[switch."a b"]\n', "switch.a b"),
    ("switch = 1", "switch"),
    ('[driver]\nuplink_switch = "no.dots"', "driver.uplink_switch"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, text)


def test_driver_flags() -> None:
    args = build_parser().parse_args(["driver", "--uplink-switch", "up", "--bridge", "br0"])
    cfg = from_args(args)
    assert cfg.driver.uplink_switch == "up" and cfg.backend.bridge == "br0"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["frontend", "--uplink-switch", "up"])
