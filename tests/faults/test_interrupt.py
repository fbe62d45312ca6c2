"""Ctrl-C at any moment of a command, its imports included, ends in one line and exit 130 (a shell's code for an
interrupted command), never a traceback."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def take_ctrl_c():
    """A process started from a background job inherits SIGINT ignored, and Python then leaves it so: a terminal's
    foreground command has the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("seconds", [0.3, 1.2])  # early in the imports, and later
@pytest.mark.parametrize("command", [["benchmark", "ls", "suites"], ["sae", "tiny-model", "--help"]])
def test_ctrl_c_during_the_imports_is_one_line_and_exit_130(command, seconds):
    job = subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, preexec_fn=take_ctrl_c)
    time.sleep(seconds)  # the interpreter is up in a few hundredths of a second; torch takes seconds to import
    assert job.poll() is None, "the command ended before it could be interrupted"
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted: what was written stays; run the same command again to resume"]
