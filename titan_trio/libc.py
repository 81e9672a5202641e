"""glibc functions the os module has no binding for (sync_file_range, fallocate's hole
punching, mmap beyond a file's end, madvise), through ctypes, Linux only."""

from __future__ import annotations

import ctypes
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
