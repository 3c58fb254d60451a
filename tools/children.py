"""
Child processes that end with the tool that started them. tools/demo.py, bench_text.py
and bench.py run each step as a command; without this, a demo stopped with SIGTERM or
killed leaves its training running, holding the cores for minutes.

    from children import run
    run([sys.executable, "tools/train_net.py", ...], check=True)
"""

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Loaded here, in the tool: the child, between fork and exec, only makes the call.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid):
    """In the child, before it runs the command: the kernel sends it SIGTERM when the tool
    dies, however it dies (SIGTERM, SIGKILL, an exception). Linux only."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the tool died before the request took effect
        os._exit(1)


def run(command, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` of `command` (its items made strings), whose process ends with the tool."""
    parent = os.getpid()
    preexec = (lambda: _die_with_parent(parent)) if _LIBC is not None else None
    return subprocess.run([str(c) for c in command], preexec_fn=preexec, **kwargs)
