"""tools/children.py: a tool's commands end with the tool, however the tool ends."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

TOOL = """
import sys
sys.path.insert(0, {tools!r})
import children
children.run([sys.executable, "-c", "import os, time; open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(120)"])
"""


def alive(pid):
    """Whether process `pid` exists and is not a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_child_ends_when_the_tool_is_killed(tmp_path, signum):
    pid_file = tmp_path / "child.pid"
    code = TOOL.format(tools=os.path.join(REPO, "tools"), pid_file=str(pid_file))
    tool = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60), "the child did not start"
        child = int(pid_file.read_text())
        assert alive(child)
        tool.send_signal(signum)
        tool.wait(timeout=30)
        assert wait_for(lambda: not alive(child), 10), f"the child {child} outlived the tool ({signum.name})"
    finally:
        tool.kill()
        tool.wait()
        if pid_file.exists() and pid_file.read_text() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
