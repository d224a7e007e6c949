"""Build glue: cffi extensions (ncd/_build/*_build.py) and xensim's shim libraries.

`pip install .` / `pip install -e .` compile every C part here, so nothing needs a
compiler at run time:

* every ``ncd/_build/<name>_build.py`` exposing ``ffi`` becomes a cffi extension;
* the shims in ``cext/xensim`` become ``ncd/sim/lib/libxengnttab.so.1`` and
  ``ncd/sim/lib/libxenevtchn.so.1`` with the symbol versions of Debian's builds.
"""

from __future__ import annotations

import glob
import os
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

CFLAGS = ["-O2", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror", "-std=gnu11"]

# shim soname -> (sources, version script)
SHIMS: dict[str, tuple[list[str], str]] = {
    "libxengnttab.so.1": (
        ["cext/xensim/client.c", "cext/xensim/gnttab.c"],
        "cext/xensim/libxengnttab.map",
    ),
    "libxenevtchn.so.1": (
        ["cext/xensim/client.c", "cext/xensim/evtchn.c"],
        "cext/xensim/libxenevtchn.map",
    ),
}


class BuildWithShims(build_ext):
    def run(self) -> None:
        super().run()
        self.build_shims()

    def build_shims(self) -> None:
        if self.inplace:
            outdir = os.path.join("ncd", "sim", "lib")
        else:
            outdir = os.path.join(self.build_lib, "ncd", "sim", "lib")
        os.makedirs(outdir, exist_ok=True)
        for soname, (sources, mapfile) in SHIMS.items():
            if not all(os.path.exists(s) for s in sources):
                raise RuntimeError(f"missing shim sources for {soname}: {sources}")
            out = os.path.join(outdir, soname)
            cmd = [
                os.environ.get("CC", "gcc"),
                *CFLAGS,
                "-Icext/xensim",
                "-shared",
                f"-Wl,-soname,{soname}",
                f"-Wl,--version-script={mapfile}",
                "-o",
                out,
                *sources,
                "-lpthread",
            ]
            print("building shim:", " ".join(cmd))
            subprocess.check_call(cmd)


def cffi_modules() -> list[str]:
    return [f"{p}:ffi" for p in sorted(glob.glob("ncd/_build/*_build.py"))]


class BinaryDistribution(Distribution):
    """The shims are native code even when no cffi module is listed."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    cffi_modules=cffi_modules(),
    cmdclass={"build_ext": BuildWithShims},
    distclass=BinaryDistribution,
)
