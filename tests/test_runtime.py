"""Process settings: with the allocator tuned, activation-sized blocks come from malloc's reusable heap
instead of a fresh mmap per tensor (what made CPU inference 1.2x slower in some processes)."""

import platform
import subprocess
import sys

import pytest

from vitkit import tune_allocator

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

PROBE = """
import ctypes, sys, torch
from vitkit.runtime import tune_allocator
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = tune_allocator() if sys.argv[1] == "1" else False
before = libc.mallinfo2().hblks
t = torch.empty(4 << 20)  # 16 MiB: one activation of a ViT-B/16 batch
print(applied, libc.mallinfo2().hblks - before)
"""


def _mmapped_blocks(tuned: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if tuned else "0"], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@glibc
def test_tuned_allocator_serves_activations_from_the_heap():
    assert _mmapped_blocks(tuned=False) == ("False", 1)   # glibc's default: a fresh mmap for the tensor
    assert _mmapped_blocks(tuned=True) == ("True", 0)


@glibc
def test_tuning_can_be_switched_off(monkeypatch):
    assert tune_allocator() is True
    monkeypatch.setenv("VITKIT_NO_MALLOPT", "1")
    assert tune_allocator() is False
