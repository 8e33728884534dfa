"""What an offload process (runtime.offload) runs first. Imports nothing of the Faust app:
a spawned process imports the module of its setup function, and should not build a worker."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

#: prctl(2): the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1


def follow_parent(parent: int) -> None:
    """Set up an offload process: it ends with its worker, however the worker ends (SIGKILL
    included, on Linux), and leaves Ctrl-C to the worker, which stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker ended before the line above
        os._exit(0)
