"""Build glue for xensim: the shim libraries are compiled at install time.

The shims (``cext/xensim`` in the repository) become ``xensim/lib/libxengnttab.so.1``,
``libxenevtchn.so.1`` and ``libxenctrl.so.4.17`` with the symbol versions of Debian's
builds (see ``shimlibs.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import shimlibs  # noqa: E402


class BuildShims(build_ext):
    def run(self) -> None:
        super().run()
        out = HERE if self.inplace else Path(self.build_lib) / "xensim"
        shimlibs.build(out / "lib")


class BinaryDistribution(Distribution):
    """The shims are native code although there is no Python extension."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_ext": BuildShims}, distclass=BinaryDistribution)
