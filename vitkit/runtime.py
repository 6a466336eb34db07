"""Process-wide CPU settings that vitkit's commands apply at start.

glibc's malloc serves every allocation above its mmap threshold (128 KiB at start) with a fresh
mmap, and hands it back with munmap when freed: every activation tensor of a forward pass then
costs system calls and page faults on first touch. glibc raises the threshold by itself once a
large mmapped block is freed, but only in some allocation patterns (an autograd forward pass
triggers it, a pure inference process often does not), so the same model ran 1.2x faster or slower
depending on what the process had done before (benchmarks/allocator.py). Fixing the thresholds
makes the fast state the only state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20   # blocks up to 64 MiB come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # free memory above 256 MiB at the heap's top goes back to the system
DISABLE_ENV = "VITKIT_NO_MALLOPT"


def tune_allocator() -> bool:
    """Fix glibc malloc's mmap and trim thresholds; True if applied. A no-op off glibc (macOS,
    musl, Windows) or when the environment variable VITKIT_NO_MALLOPT is set."""
    if os.environ.get(DISABLE_ENV) or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
