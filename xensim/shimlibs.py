"""Compile xensim's shim libraries (libxengnttab.so.1, libxenevtchn.so.1, libxenctrl.so.4.17).

Used by xensim/setup.py at install time; ``python -m xensim.shimlibs`` builds them in
place (``xensim/lib``) for development.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# the repository root: the shim sources live in cext/xensim beside ncd's own C
ROOT = Path(__file__).resolve().parents[1]
CFLAGS = ["-O2", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror", "-std=gnu11"]

# shim soname -> (sources, version script), relative to the project root
SHIMS: dict[str, tuple[list[str], str]] = {
    "libxengnttab.so.1": (
        ["cext/xensim/client.c", "cext/xensim/gnttab.c"],
        "cext/xensim/libxengnttab.map",
    ),
    "libxenevtchn.so.1": (
        ["cext/xensim/client.c", "cext/xensim/evtchn.c"],
        "cext/xensim/libxenevtchn.map",
    ),
    # only xc_interface_open/close and xc_domain_getinfo (what vchan-socket-proxy needs)
    "libxenctrl.so.4.17": (
        ["cext/xensim/client.c", "cext/xensim/xenctrl.c"],
        "cext/xensim/libxenctrl.map",
    ),
}


def build(outdir: Path, extra_cflags: list[str] | None = None) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    built = []
    for soname, (sources, mapfile) in SHIMS.items():
        out = outdir / soname
        cmd = [
            os.environ.get("CC", "gcc"),
            *CFLAGS,
            *(extra_cflags or []),
            f"-I{ROOT / 'cext/xensim'}",
            "-shared",
            f"-Wl,-soname,{soname}",
            f"-Wl,--version-script={ROOT / mapfile}",
            "-o",
            str(out),
            *(str(ROOT / s) for s in sources),
            "-lpthread",
        ]
        print("building shim:", " ".join(cmd), file=sys.stderr)
        subprocess.check_call(cmd)
        built.append(out)
    return built


if __name__ == "__main__":
    build(Path(__file__).resolve().parent / "lib", sys.argv[1:])
