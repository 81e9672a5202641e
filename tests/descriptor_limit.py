"""Lowering a process's file-descriptor limit, for the tests that run a listener out of
descriptors (in a child process, never in pytest's own). Linux only (``/proc``); kept
apart from ``helpers.py`` so that a child process importing it stays light."""

from __future__ import annotations

import os
import resource


def limit_descriptors(pid: int, spare: int) -> int:
    """Lower the soft RLIMIT_NOFILE of process ``pid`` (this one included) so that only
    ``spare`` more descriptors can be opened (a few more when its open descriptors leave
    gaps); returns how many."""
    listed = os.listdir(f"/proc/{pid}/fd")
    open_fds = [int(fd) for fd in listed if os.path.lexists(f"/proc/{pid}/fd/{fd}")]
    limit = max(max(open_fds) + 1, len(open_fds) + spare)
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    return limit - len(open_fds)
