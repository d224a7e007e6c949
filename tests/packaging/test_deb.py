"""The Debian package: /etc/ncd/ncd.toml against ncd/config.py, versions, and a real
build of the .deb (scripts/build-deb.sh) checked for contents, Depends and conffiles."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from ncd import __version__, config

ROOT = Path(__file__).resolve().parents[2]
CONFFILE = ROOT / "debian" / "ncd.toml"
KEY_LINE = re.compile(r"^# ?([a-z_]+ = .*?|\[switch\.NAME\])(?:\s+#.*)?$")


def _defaults() -> dict[str, dict[str, object]]:
    """Every section and key ncd/config.py knows, with its default (the control socket
    as the installed units see it: NCD_RUNTIME_DIR=/run/ncd)."""
    out: dict[str, dict[str, object]] = {}
    for name, stype in config._SECTION_TYPES.items():
        out[name] = dataclasses.asdict(stype())
    out["daemon"]["control_socket"] = "/run/ncd/ncd.sock"
    # [switch.NAME] tables: the conffile documents one, NAME, with the defaults
    out["switch"] = {"NAME": dataclasses.asdict(config.SwitchSection())}
    return out


def _uncommented(text: str) -> str:
    """The conffile with every ``# key = value`` line made live."""
    lines = []
    for line in text.splitlines():
        m = KEY_LINE.match(line)
        lines.append(m.group(1) if m else line)
    return "\n".join(lines) + "\n"


def test_conffile_lists_every_config_key_with_its_default() -> None:
    text = CONFFILE.read_text()
    assert _defaults().keys() == {*config._SECTION_TYPES, "switch"}
    assert {f.name for f in dataclasses.fields(config.Config)} == {*config._SECTION_TYPES,
                                                                    "switches", "vifs"}
    assert tomllib.loads(_uncommented(text)) == _defaults()


def test_conffile_as_shipped_loads_to_the_defaults(monkeypatch) -> None:
    # every key commented out: the file must parse and change nothing
    monkeypatch.setenv("NCD_RUNTIME_DIR", "/run/ncd")
    assert config.load_config(CONFFILE) == config.Config()
    assert all(v == {} for v in tomllib.loads(CONFFILE.read_text()).values())


def test_versions_agree() -> None:
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"ncd \(([^)]+)\) ", changelog)
    assert m, changelog
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert m.group(1) == pyproject == __version__


# ---------------------------------------------------------------- the .deb


def _build_tools_missing() -> str | None:
    for tool in ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dpkg-deb", "git"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/setup.sh installs the build tools)"
    r = subprocess.run(["dpkg-checkbuilddeps", str(ROOT / "debian" / "control")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"build dependencies missing: {r.stderr.strip()} (scripts/setup.sh installs them)"
    return None


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    missing = _build_tools_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("deb")
    lint = [] if shutil.which("lintian") else ["--no-lintian"]
    r = subprocess.run([str(ROOT / "scripts" / "build-deb.sh"), "--outdir", str(out), *lint],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    path = out / f"ncd_{__version__}_{arch}.deb"
    assert path.is_file(), sorted(p.name for p in out.iterdir())
    return path


def _dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.slow
def test_deb_contents(deb: Path, tmp_path: Path) -> None:
    names = {line.split()[-1].removeprefix(".") for line in _dpkg_deb("-c", str(deb)).splitlines()}
    for f in ("/usr/bin/ncd", "/usr/bin/ncctl", "/usr/bin/ncd-vchan", "/etc/ncd/ncd.toml",
              "/lib/systemd/system/ncd-backend.service",
              "/lib/systemd/system/ncd-frontend.service",
              "/usr/share/doc/ncd/README.md", "/usr/share/doc/ncd/copyright",
              "/usr/share/man/man8/ncd.8.gz", "/usr/share/man/man8/ncctl.8.gz",
              "/usr/share/man/man1/ncd-vchan.1.gz"):
        assert f in names, f
    site = "/usr/lib/python3/dist-packages/ncd/"
    assert any(n.startswith(site + "_hotpath.") and n.endswith(".so") for n in names)
    assert any(n.startswith(site + "xen/_xenlib.") and n.endswith(".so") for n in names)
    # the simulator is a development tool: never in the package
    leaked = [n for n in names
              if "xensim" in n or "/sim/" in n or Path(n).name.startswith("libxen")]
    assert leaked == []
    # the files are the repository's
    _dpkg_deb("-x", str(deb), str(tmp_path))
    for unit in ("ncd-backend.service", "ncd-frontend.service"):
        shipped = (tmp_path / "lib/systemd/system" / unit).read_bytes()
        assert shipped == (ROOT / "systemd" / unit).read_bytes(), unit
    assert (tmp_path / "etc/ncd/ncd.toml").read_bytes() == CONFFILE.read_bytes()
    head = (tmp_path / "usr/bin/ncd").read_text().splitlines()[0]
    assert head == "#!/usr/bin/python3"


@pytest.mark.slow
def test_deb_control_depends_and_conffiles(deb: Path, tmp_path: Path) -> None:
    depends = {d.split()[0].split(":")[0]
               for d in _dpkg_deb("-f", str(deb), "Depends").replace("|", ",").split(",")}
    for pkg in ("python3", "python3-cffi-backend", "python3-uvloop", "python3-pyroute2",
                "python3-prometheus-client", "libxenstore4", "libxengnttab1", "libxenevtchn1"):
        assert pkg in depends, (pkg, sorted(depends))
    assert not {d for d in depends if "xensim" in d or d.startswith("python3-pip")}
    _dpkg_deb("-e", str(deb), str(tmp_path / "DEBIAN"))
    assert (tmp_path / "DEBIAN/conffiles").read_text().split() == ["/etc/ncd/ncd.toml"]
    # ncd-backend and ncd-frontend are enabled on install (each starts only in its kind
    # of domain: the units' conditions); ncd-driver is installed disabled (no
    # enable on a new install: only on an upgrade of a unit the administrator enabled)
    postinst = (tmp_path / "DEBIAN/postinst").read_text()
    for unit in ("ncd-backend.service", "ncd-frontend.service"):
        assert f"deb-systemd-helper enable '{unit}'" in postinst, postinst
        assert f"if deb-systemd-helper debian-installed '{unit}'; then" not in postinst
    assert "if deb-systemd-helper debian-installed 'ncd-driver.service'; then" in postinst
