import ctypes
import json
import statistics
import subprocess
import sys

import pytest

from conftest import tiny_cfg
from ditod.engine import configure_cpu_memory

# Page faults of each of 16 iterations that allocate two 256 MB tensors and free them
# (in a fresh process: the setting is process-wide).
ITERATION_FAULTS = """
import json, resource, sys, torch
from ditod.engine import keep_freed_cpu_memory
applied = keep_freed_cpu_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.ones(64 * 2**20) * 2
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del y
print(json.dumps({"applied": applied, "faults": faults}))
"""
PAGES_PER_ITERATION = 2 * 256 * 2**20 // 4096


def iteration_faults(mode):
    done = subprocess.run([sys.executable, "-c", ITERATION_FAULTS, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc malloc settings")
def test_keep_freed_cpu_memory_reuses_pages_of_freed_tensors():
    kept = iteration_faults("keep")
    default = iteration_faults("default")
    assert kept["applied"] and not default["applied"]
    # glibc's default maps every large tensor afresh: a fault per page, each iteration
    # (fewer with transparent huge pages). With the setting, once the heap has grown
    # to the working set, new tensors reuse its pages. The heap grows in pieces over the
    # first iterations (2 to 5 of them, by the address-space layout of the run): the
    # last ones show the steady state.
    kept_faults = max(kept["faults"][-4:])
    assert kept_faults < PAGES_PER_ITERATION // 10
    assert statistics.median(default["faults"][2:]) > 10 * max(kept_faults, 1)


def test_configure_cpu_memory_only_for_cpu_runs_with_the_key_on():
    assert not configure_cpu_memory(tiny_cfg("MODEL.DEVICE", "cpu"))  # off by default
    assert not configure_cpu_memory(tiny_cfg("MODEL.DEVICE", "cuda", "MODEL.CPU_KEEP_FREED_MEMORY", True))
