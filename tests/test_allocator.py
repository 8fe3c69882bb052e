"""``runtime.malloc``: with ``keep``, glibc serves large tensors from its heap and keeps what they
free; with ``system``, it maps a large tensor of its own and unmaps it when freed. Each case runs
in a fresh interpreter: the settings are process-wide and cannot be undone."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="runtime.malloc acts on glibc only")

PROBE = """
import ctypes, json, sys
import torch
from fl.runtime import allocator

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (2.33+)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
changed = allocator.configure(sys.argv[1])
before = libc.mallinfo2()  # mappings made earlier (importing torch) stay as they are
x = torch.ones(16 << 20)  # 64 MiB, above glibc's largest threshold for a mapping of its own
alive = libc.mallinfo2()
del x
freed = libc.mallinfo2()
print(json.dumps({"changed": changed, "mapped_alive": alive.hblkhd - before.hblkhd,
                  "mapped_freed": freed.hblkhd - before.hblkhd,
                  "heap_free_after": freed.fordblks}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_serves_large_tensors_from_the_heap_and_keeps_what_they_free():
    info = _probe("keep")
    assert info["changed"] is True
    assert info["mapped_alive"] == 0  # not a mapping of its own
    assert info["heap_free_after"] >= 64 << 20  # freed into the heap, kept for the next allocations


def test_system_leaves_glibc_mapping_and_unmapping_large_tensors():
    info = _probe("system")
    assert info["changed"] is False
    assert info["mapped_alive"] >= 64 << 20
    assert info["mapped_freed"] == 0 and info["heap_free_after"] < 64 << 20  # handed back to the kernel
