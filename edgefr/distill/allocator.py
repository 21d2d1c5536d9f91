"""Keep PyTorch's large CPU buffers in the heap between training steps.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and returns it to the
kernel on free, so each training step of a face net at 112x112 (activations of hundreds of MiB per batch) faults
in gigabytes of newly zeroed pages. On this 2-core host one step of a searched 10 ms student took 9.0 s, half of
it in the kernel (2.8M page faults); with the threshold and the trim threshold raised to 1 GiB it took 3.3 s
(0.36M faults). PyTorch's own performance guide reaches the same end with jemalloc/tcmalloc; this needs neither.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
RETAINED_BYTES = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): its allocator behaves otherwise
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, RETAINED_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, RETAINED_BYTES))
