"""glibc functions the os module has no binding for (sync_file_range, fallocate's hole
punching, mmap beyond a file's end, madvise), through ctypes, Linux only."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from typing import Any


def libc_function(
    name: str, argtypes: list[Any], restype: Any = ctypes.c_int
) -> Callable[..., Any] | None:
    """glibc's ``name`` with these argument and result types (errno kept for
    ``ctypes.get_errno``), or None off Linux or where it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)
SFR_WAIT_BEFORE, SFR_WRITE, SFR_WAIT_AFTER = 1, 2, 4
HAVE_SYNC_FILE_RANGE = _SYNC_FILE_RANGE is not None


def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
    """sync_file_range(2): write ``fd``'s dirty pages from ``offset`` (``length`` 0: to
    the file's end) as ``flags`` say, with no device flush. OSError where it fails, and
    ENOSYS where this system has no such call."""
    if _SYNC_FILE_RANGE is None:
        raise OSError(errno.ENOSYS, "sync_file_range is not available here")
    if _SYNC_FILE_RANGE(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
