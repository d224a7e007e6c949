"""Build glue: cffi extensions (ncd/_build/*_build.py) and xensim's shim libraries.

`pip install .` / `pip install -e .` compile every C part here, so nothing needs a
compiler at run time:

* every ``ncd/_build/<name>_build.py`` exposing ``ffi`` becomes a cffi extension;
* the shims in ``cext/xensim`` become ``ncd/sim/lib/libxengnttab.so.1``,
  ``libxenevtchn.so.1`` and ``libxenctrl.so.4.17`` (a subset) with the symbol
  versions of Debian's builds (see ``ncd/_build/shimlibs.py``).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncd._build import shimlibs  # noqa: E402


class BuildWithShims(build_ext):
    def run(self) -> None:
        super().run()
        outdir = "ncd" if self.inplace else os.path.join(self.build_lib, "ncd")
        shimlibs.build(Path(outdir) / "sim" / "lib")


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
