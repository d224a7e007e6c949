"""The product ships only product: ncd's wheel holds no simulator, xensim needs no ncd."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.needs import require_writable

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    return mods


def test_xensim_imports_nothing_from_ncd() -> None:
    files = sorted((ROOT / "xensim").rglob("*.py"))
    assert files
    bad = {}
    for f in files:
        mods = sorted(m for m in _imported_modules(f) if m.partition(".")[0] == "ncd")
        if mods:
            bad[str(f.relative_to(ROOT))] = mods
    assert bad == {}


def test_ncd_imports_no_simulator() -> None:
    # the daemon, ncctl and the bindings run on a real dom0 where xensim is absent;
    # only the demo (which runs ncd *on* xensim) may import it
    bad = {}
    for f in sorted((ROOT / "ncd").rglob("*.py")):
        if f.name == "demo.py":
            continue
        sim = sorted(m for m in _imported_modules(f) if m.partition(".")[0] == "xensim")
        if sim:
            bad[str(f.relative_to(ROOT))] = sim
    assert bad == {}


@pytest.mark.slow
def test_ncd_wheel_has_no_simulator(tmp_path: Path) -> None:
    require_writable()  # setuptools builds in the checkout (build/, *.egg-info)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("ncd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("ncd/daemon/") for n in names)
    leaked = [n for n in names if "xensim" in n or "sim/" in n or Path(n).name.startswith("libxen")]
    assert leaked == []
