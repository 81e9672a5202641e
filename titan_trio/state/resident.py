"""Keep a file's pages in memory by keeping them mapped: the store's -wal file.

Why: a host can drop page-cache pages that nothing has used for a while before memory
runs short, to give the memory back to its hypervisor (proactive reclaim: this project's
build machines run DAMON with a ``pageout`` scheme for file pages that are cold for a
minute and not mapped by any process). The WAL is written from its start again after
each of the store's RESTART checkpoints, and SQLite writes it in frames of a page plus 24
bytes, so nearly every write covers part of a page: a page the host dropped is read back
from the disk first, with the write waiting, on the trio thread (the bench's samples of
that thread waiting on the disk were nearly all ``ext4_block_write_begin``;
docs/BENCHMARKS.md). A page mapped into a process is not cold page cache to such a
scheme. Under real memory pressure the kernel still reclaims it like any other.

How: one read-only shared mapping of the file's first ``span`` bytes (address space
only), and ``madvise(MADV_POPULATE_READ)`` (Linux 5.14) over what the file holds of it,
called by the store's checkpoint thread after each checkpoint. That maps the pages
written since the last call and reads back, off the trio thread, any the host dropped
meanwhile. Nothing ever reads the mapping: if the file was cut shorter meanwhile, the
call fails (EFAULT), where touching a page past the end would have been a SIGBUS. A
file cut shorter loses the pages past its end from the mapping (the kernel unmaps them).
Best effort: off Linux, on an older kernel, or when the mapping cannot be made, it keeps
nothing and says so once at DEBUG.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

from titan_trio.libc import libc_function

log = logging.getLogger("titan.store")

MADV_POPULATE_READ = 22  # linux/mman.h, since 5.14
PROT_READ = 1
MAP_SHARED = 1
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_MMAP = libc_function(
    "mmap",
    [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long],
    ctypes.c_void_p,
)
_MUNMAP = libc_function("munmap", [ctypes.c_void_p, ctypes.c_size_t])
_MADVISE = libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
_MAP_FAILED = ctypes.c_void_p(-1).value


class ResidentFile:
    """The first ``span`` bytes of the file at ``path``, kept mapped (module docstring).
    ``refresh()`` after the file was written; ``close()`` when done. One thread at a time.
    """

    def __init__(self, path: str, span: int) -> None:
        self.path = path
        self.span = max(PAGE, (span + PAGE - 1) // PAGE * PAGE)
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._addr: int | None = None
        self.kept = 0  # bytes of the file mapped at the last refresh
        self.enabled = None not in (_MMAP, _MUNMAP, _MADVISE)
        if not self.enabled:
            log.debug("not keeping %s mapped: no mmap through libc here", path)

    def refresh(self) -> bool:
        """Map the pages the file holds within the span now (reading back any that were
        dropped); whether it could. A missing file keeps nothing; a replaced one is
        followed."""
        if not self.enabled:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            self._unmap()
            return False
        if self._inode != (st.st_dev, st.st_ino) and not self._map():
            return False
        assert _MADVISE is not None and self._fd is not None
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            return False
        length = min(self.span, (size + PAGE - 1) // PAGE * PAGE)
        if length <= 0:
            self.kept = 0
            return True
        if _MADVISE(self._addr, length, MADV_POPULATE_READ) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # not this kernel
                log.debug("not keeping %s mapped: %s", self.path, os.strerror(err))
                self.close()
                self.enabled = False
            # EFAULT: cut shorter since the fstat; ENOMEM, EINTR, EIO: the next refresh
            return False
        self.kept = length
        return True

    def _map(self) -> bool:
        assert _MMAP is not None
        self._unmap()
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return False
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return False
        addr = _MMAP(None, self.span, PROT_READ, MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            os.close(fd)
            log.debug("not keeping %s mapped: mmap: %s", self.path, os.strerror(err))
            self.enabled = False
            return False
        self._fd, self._addr, self._inode = fd, addr, (st.st_dev, st.st_ino)
        return True

    def _unmap(self) -> None:
        if self._addr is not None and _MUNMAP is not None:
            _MUNMAP(self._addr, self.span)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._addr = self._inode = None
        self.kept = 0

    def close(self) -> None:
        self._unmap()
