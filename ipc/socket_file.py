"""The IPC socket's file: created with the configured mode, checked, re-created, removed.

- Created under a tight umask, so it is never reachable more widely, even for an instant.
- A stale file from a dead process is replaced; a live listener on the path (another
  instance) stops start-up; a path that exists and is not a socket is never deleted.
- ``state()`` says whether the path is still the socket this service bound: a file an
  operator or a clean-up job deleted leaves the service listening on a socket nobody can
  reach, which health must not call healthy (the listener re-creates it).
- Removed at the end only if it is still ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from enum import Enum

import trio

log = logging.getLogger("titan.ipc")


class IpcError(Exception):
    """The listener cannot start (socket in use, path not a socket, ...)."""


class PathState(Enum):
    OURS = "ours"  # the socket this service bound
    MISSING = "missing"  # deleted: nobody can connect until it is re-created
    REPLACED = "replaced"  # something else is at the path now: never deleted by us


class SocketFile:
    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode
        self._inode: int | None = None

    def bind(self) -> trio.socket.SocketType:
        """A listening socket at the path (IpcError when the path is taken)."""
        self._clear_stale_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~self.mode)
        try:
            sock.bind(self.path)  # synchronous, so the umask covers exactly this call
        except OSError as exc:
            sock.close()
            raise IpcError(f"cannot create the IPC socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self.mode)
        self._inode = os.stat(self.path).st_ino
        sock.listen(128)
        return trio.socket.from_stdlib_socket(sock)

    def state(self) -> PathState:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return PathState.MISSING
        except OSError:
            return PathState.REPLACED
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
            return PathState.OURS
        return PathState.REPLACED

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def _clear_stale_path(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise IpcError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.warning("replacing stale IPC socket %s (no process listens on it)", self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except OSError as exc:
            raise IpcError(f"cannot check the IPC socket {self.path}: {exc.strerror}") from None
        finally:
            probe.close()
        raise IpcError(
            f"another process is listening on the IPC socket {self.path}; "
            "is another titan instance running?"
        )
