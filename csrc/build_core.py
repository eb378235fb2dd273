"""cffi build script for parrot_cvmfs._core, the package's C core.

Run by `pip install .` through setup.py's cffi_modules. The C sources are in three
rooms: `chunker/` (the publisher's content-defined chunking), `fetch/` (the bulk
fetcher and its digests) and `tracer/` (spawning the job, its event loop, the answer
table). The cdef is read from the API headers themselves, between their
`/* cdef: begin */` and `/* cdef: end */` markers, so C and Python share one
description of every struct, function and constant.
"""

import hashlib
import time
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# The API headers, in the order the cdef needs them.
HEADERS = ("chunker/chunker.h", "fetch/fetch.h", "tracer/tracer.h")
# the core's rooms (launcher/ is the parrot_run program, built by setup.py)
ROOMS = ("chunker", "fetch", "tracer")
BEGIN, END = "/* cdef: begin */", "/* cdef: end */"


def cdef_of(header: str) -> str:
    """The part of an API header between its cdef markers."""
    text = (HERE / header).read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end]


def sources() -> list[str]:
    """Every C source of the three rooms, relative to the project root (not accel/, a
    preload library of its own that would interpose stat and readlink in the core)."""
    return sorted(str(p.relative_to(HERE.parent)) for r in ROOMS for p in HERE.glob(f"{r}/*.c"))


def build_id() -> str:
    """This build of the core: a digest of its sources and of the moment it was made
    (a start plan of another build is not used, launcher.c)."""
    h = hashlib.sha256(str(time.time_ns()).encode())
    for p in sorted(p for r in ROOMS for p in HERE.glob(f"{r}/*.[ch]")):
        h.update(p.read_bytes())
    return h.hexdigest()[:32]


def abi() -> str:
    """The digest of tracer.h (pc_abi; setup.py gives the launcher the same)."""
    return hashlib.sha256((HERE / "tracer" / "tracer.h").read_bytes()).hexdigest()[:32]


ffibuilder = FFI()
# pid_t is an integer type cffi learns the size of from the compiler.
ffibuilder.cdef("typedef int... pid_t;\n" + "".join(cdef_of(h) for h in HEADERS))
ffibuilder.set_source(
    "parrot_cvmfs._core",
    "".join(f'#include "{h}"\n' for h in HEADERS),
    sources=sources(),
    include_dirs=["csrc"],
    define_macros=[("PC_BUILD_ID", f'"{build_id()}"'), ("PC_ABI", f'"{abi()}"')],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["z"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
