"""famkd.engine.host_memory: freed large blocks are reused instead of being page-faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocates and frees a 64 MiB tensor a few times (an aligned request may not fit the first freed
# block; the next lands beside it and they merge), then counts the minor page faults of three more.
PROBE = """
import resource, sys, torch
from famkd.engine.host_memory import retain_freed_memory
applied = retain_freed_memory()
for _ in range(3):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.ones(16 * 2**20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_OF_64_MIB = 64 * 2**20 // 4096


def probe(retain: str) -> tuple[bool, int]:
    env = dict(os.environ, FAMKD_RETAIN_HOST_MEMORY=retain)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt is a glibc interface; elsewhere retain_freed_memory is a no-op",
)
def test_a_freed_64_mib_block_is_reused_without_page_faults():
    applied, faults = probe("1")
    assert applied
    assert faults < PAGES_OF_64_MIB // 10
    default_applied, default_faults = probe("0")  # glibc as it comes: mmap, unmap, fault in again
    assert not default_applied
    assert default_faults > 2 * PAGES_OF_64_MIB
