"""TOML config: defaults, file, flags override, bad keys named."""

from __future__ import annotations

import argparse

import pytest

from ncd import config
from ncd.config import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "ncd.toml"
    p.write_text(text)
    return p


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("NCD_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    cfg = load_config()
    assert cfg.metrics.port == 9477 and cfg.metrics.address == "127.0.0.1"
    assert cfg.metrics.enabled
    assert cfg.daemon.control_socket == "/run/ncd/ncd.sock"
    assert cfg.frontend_ifname(3) == "nc3"
    monkeypatch.setenv("NCD_RUNTIME_DIR", str(tmp_path))
    assert load_config().daemon.control_socket == str(tmp_path / "ncd.sock")


def test_default_file_is_read_when_present(monkeypatch, tmp_path):
    p = write(tmp_path, "[metrics]\nport = 9999\n")
    monkeypatch.setattr(config, "DEFAULT_PATH", p)
    assert load_config().metrics.port == 9999


def test_file_then_flags(tmp_path):
    p = write(
        tmp_path,
        """
[daemon]
log_level = "debug"
[metrics]
port = 9500
enabled = true
[backend]
bridge = "xenbr0"
[channel]
ring_bytes = 65536
reconnect_delay = 2
""",
    )
    cfg = load_config(p, {"metrics.port": 9600, "metrics.enabled": False})
    assert cfg.daemon.log_level == "debug"
    assert cfg.metrics.port == 9600 and cfg.metrics.enabled is False
    assert cfg.backend.bridge == "xenbr0"
    assert cfg.channel.ring_bytes == 65536 and cfg.channel.reconnect_delay == 2.0


def test_argparse_integration(tmp_path):
    p = write(tmp_path, '[metrics]\nport = 9500\n[frontend]\nifname = "eth{devid}"\n')
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, "frontend")
    cfg = config.from_args(parser.parse_args(["--config", str(p), "--no-metrics"]))
    assert cfg.metrics.port == 9500 and not cfg.metrics.enabled
    assert cfg.frontend_ifname(2) == "eth2"
    cfg = config.from_args(
        parser.parse_args(["--config", str(p), "--metrics-port", "1234", "--ifname", "x{devid}"])
    )
    assert cfg.metrics.port == 1234 and cfg.metrics.enabled and cfg.frontend_ifname(0) == "x0"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[metrics]\nprot = 1\n", "unknown key metrics.prot"),
        ("[metric]\nport = 1\n", r"unknown section \[metric\]"),
        ('[metrics]\nport = "9477"\n', "metrics.port: expected an integer"),
        ("[metrics]\nenabled = 1\n", "metrics.enabled: expected true or false"),
        ("[metrics]\nport = 70000\n", "metrics.port: 70000 is not a TCP port"),
        ('[metrics]\naddress = "localhost:1"\n', "metrics.address: .* is not an IP address"),
        ('[daemon]\nlog_level = "loud"\n', "daemon.log_level: 'loud' is not one of"),
        ('[daemon]\ncontrol_socket = "rel.sock"\n', "daemon.control_socket: must be an absolute"),
        ('[backend]\nbridge = "a very long bridge name"\n', "backend.bridge: not an interface"),
        ('[frontend]\nifname = "nc"\n', "frontend.ifname: bad template"),
        ('[frontend]\nifname = "nc{foo}"\n', "frontend.ifname: bad template"),
        ("[channel]\nring_bytes = 5000\n", "channel.ring_bytes: 5000 is not a power of two"),
        ("[channel]\nring_bytes = 2097152\n", "channel.ring_bytes"),
        ("[channel]\nreconnect_delay = 0\n", "channel.reconnect_delay"),
        ("[channel]\nspin_us = -1\n", "channel.spin_us: -1 is not in 0..10000"),
        ("[channel]\nspin_us = 20000\n", "channel.spin_us: 20000 is not in 0..10000"),
        ("metrics = 3\n", "metrics: expected a table"),
        ("[metrics\n", "ncd.toml: "),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=needle):
        load_config(p)


def test_bad_flag_named_as_command_line(tmp_path):
    with pytest.raises(ConfigError, match="command line: unknown key metrics.bogus"):
        load_config(write(tmp_path, ""), {"metrics.bogus": 1})
    with pytest.raises(ConfigError, match="metrics.port: 99999 is not a TCP port"):
        load_config(write(tmp_path, ""), {"metrics.port": 99999})


def test_explicit_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="absent.toml: no such file"):
        load_config(tmp_path / "absent.toml")
