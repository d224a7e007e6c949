"""The README's layout table names every top-level directory and every ncd module, so a
newcomer finds each concept where the table says."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Layout"):]


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (an unpacked sdist): walk the tree
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return out.stdout.split()


def test_every_top_level_directory_is_in_the_layout_table() -> None:
    table = _table()
    tops = {p.split("/")[0] for p in _tracked() if "/" in p and not p.startswith(".git")}
    tops.discard(".ci")  # named as .ci/run
    missing = sorted(t for t in tops if f"`{t}/" not in table)
    assert missing == [] and "`.ci/run`" in table


def test_every_ncd_module_is_in_the_layout_table() -> None:
    table = _table()
    names = set(re.findall(r"`([^`]+)`", table))
    missing = []
    for py in sorted((ROOT / "ncd").rglob("*.py")):
        rel = py.relative_to(ROOT)
        if py.name == "__init__.py" or "_build" in rel.parts:
            continue
        pkg = str(rel.parent)
        # named by path, by file name in its package's row, or by its package directory
        ok = (str(rel) in names or py.name in names or f"{pkg}/" in names
              and pkg in ("ncd/xen", "ncd/tools"))
        if not ok:
            missing.append(str(rel))
    assert missing == []
