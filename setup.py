"""Build glue: ncd's cffi extensions (every ``ncd/_build/<name>_build.py`` exposing ``ffi``).

`pip install .` / `pip install -e .` compile the C hot path here, so nothing needs a
compiler at run time. The simulator's shim libraries are not part of ncd: they are
built by xensim's own distribution (``xensim/setup.py``).
"""

from __future__ import annotations

import glob

from setuptools import setup


def cffi_modules() -> list[str]:
    return [f"{p}:ffi" for p in sorted(glob.glob("ncd/_build/*_build.py"))]


setup(cffi_modules=cffi_modules())
