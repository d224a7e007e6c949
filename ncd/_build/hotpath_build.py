"""cffi builder of ``ncd._hotpath``: the vchan ring I/O (cext/vchan), the foreign-page
tracker (cext/tracker) and the frame pump (cext/pump) in one API-mode extension.

* cdef text: ``cext/vchan/vchan.cdef``, ``cext/tracker/tracker.cdef``,
  ``cext/forward/antispoof.cdef``, then ``cext/pump/pump.cdef``, ``cext/switch/switch.cdef``;
* sources: every ``cext/vchan/*.c``, ``cext/tracker/*.c``, ``cext/forward/*.c`` (the
  anti-spoofing lock of the pump and the switch), ``cext/pump/*.c`` and
  ``cext/switch/*.c`` (the ports and the learning switch);
* linked by soname against libxengnttab / libxenevtchn, so xensim's shims take over
  through ``LD_LIBRARY_PATH`` and Xen's own libraries are used on real Xen.

Development builds in place: ``.venv/bin/python ncd/_build/hotpath_build.py``.

Environment:

* ``NCD_SANITIZE=1``: build with ``-fsanitize=address,undefined`` into
  ``build/sanitize/ncd/`` instead of the package (see ``sanitized_module_path``); run it
  with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)`` (tests/vchan/test_sanitized.py
  does this in a subprocess).
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
VCHAN = ROOT / "cext" / "vchan"
PUMP = ROOT / "cext" / "pump"
TRACKER = ROOT / "cext" / "tracker"
SWITCH = ROOT / "cext" / "switch"
FORWARD = ROOT / "cext" / "forward"
SANITIZE_DIR = ROOT / "build" / "sanitize"

BASE_CFLAGS = ["-Wall", "-Wextra", "-Werror", "-std=gnu11", "-O2"]
SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
]


def _sanitize() -> bool:
    return os.environ.get("NCD_SANITIZE", "") not in ("", "0")


def _rel(p: Path) -> str:
    # setuptools wants source paths relative to the project root; the sanitized build
    # compiles in build/sanitize/ and needs them absolute
    if _sanitize():
        return str(p)
    try:
        return str(p.relative_to(ROOT)) if Path.cwd() == ROOT else str(p)
    except ValueError:
        return str(p)


def make_ffi() -> FFI:
    ffi = FFI()
    cdef = (VCHAN / "vchan.cdef").read_text()
    sources = sorted(VCHAN.glob("*.c"))
    prelude = '#include "vchan.h"\n'
    include_dirs = [str(VCHAN)]
    # foreign-page tracker (cext/tracker): vchan_init.c registers mapped pages in it
    cdef += "\n" + (TRACKER / "tracker.cdef").read_text()
    sources += sorted(TRACKER.glob("*.c"))
    prelude += '#include "tracker.h"\n'
    include_dirs.append(str(TRACKER))
    # the anti-spoofing lock (cext/forward), shared by the pump and the switch
    cdef += "\n" + (FORWARD / "antispoof.cdef").read_text()
    sources += sorted(FORWARD.glob("*.c"))
    prelude += '#include "antispoof.h"\n'
    include_dirs.append(str(FORWARD))
    # frame pump (cext/pump)
    cdef += "\n" + (PUMP / "pump.cdef").read_text()
    sources += sorted(PUMP.glob("*.c"))
    prelude += '#include "pump.h"\n'
    include_dirs.append(str(PUMP))
    # ports and the learning switch (cext/switch): uses frame.h and the tracker
    cdef += "\n" + (SWITCH / "switch.cdef").read_text()
    sources += sorted(SWITCH.glob("*.c"))
    prelude += '#include "switch.h"\n'
    include_dirs.append(str(SWITCH))
    ffi.cdef(cdef)
    cflags = list(BASE_CFLAGS)
    ldflags: list[str] = []
    if _sanitize():
        cflags = [f for f in cflags if f != "-O2"] + ["-O1", *SANITIZE_FLAGS]
        ldflags += SANITIZE_FLAGS
    ffi.set_source(
        "ncd._hotpath",
        prelude,
        sources=[_rel(s) for s in sources],
        include_dirs=include_dirs,
        libraries=["xengnttab", "xenevtchn", "pthread"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return ffi


ffi = make_ffi()


def sanitized_module_path() -> Path | None:
    """The sanitized build's shared object, if one was built."""
    found = sorted((SANITIZE_DIR / "ncd").glob("_hotpath*.so"))
    return found[0] if found else None


if __name__ == "__main__":
    if _sanitize():
        SANITIZE_DIR.mkdir(parents=True, exist_ok=True)
        ffi.compile(tmpdir=str(SANITIZE_DIR), verbose=False)
    else:
        ffi.compile(tmpdir=str(ROOT), verbose=False)
