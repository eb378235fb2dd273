"""cffi build script for parrot_cvmfs._core, the package's C core.

Run by `pip install .` through setup.py's cffi_modules; every C source of the
project is listed here.
"""

from cffi import FFI

# Paths are relative to the project root, where setuptools runs this script.
ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct {
        uint64_t min_size, avg_size, max_size;
        uint64_t last_cut;
        uint64_t pos;
        uint32_t xor32;
        int64_t threshold;
    } pc_chunker;
    void pc_chunker_init(pc_chunker *c, uint64_t min_size, uint64_t avg_size, uint64_t max_size);
    size_t pc_chunker_feed(pc_chunker *c, const uint8_t *buf, size_t len, uint64_t *cuts,
                           size_t max_cuts);
    """
)
ffibuilder.set_source(
    "parrot_cvmfs._core",
    '#include "chunker.h"',
    sources=["csrc/chunker.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
