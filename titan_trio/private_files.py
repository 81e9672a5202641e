"""Files and directories the service creates are private to the user it runs as: the
database (with its -wal and -shm, which SQLite creates with the database's mode), the
instance lock and the logs hold the account's positions, orders and history.

Directories are created 0700 and files 0600 whatever the umask (a umask of 000 would
otherwise make them 0777 and 0666). What already exists keeps the mode the operator
gave it: a log shipper or a backup job may read it through a group on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and its missing parents, each 0700. Raises OSError."""
    missing: list[Path] = []
    here = Path(path).absolute()
    while not here.is_dir():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if directory.is_dir():  # made by someone else meanwhile: theirs to keep
                continue
            raise
        os.chmod(directory, DIR_MODE)  # exactly, even under a umask that takes owner bits


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags | O_CREAT)``, a file it creates being 0600; the descriptor."""
    flags |= os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    os.fchmod(fd, FILE_MODE)
    return fd


def shared_mode(path: str | os.PathLike[str]) -> int | None:
    """The permission bits of ``path`` when group or others have any, else None (also
    when it does not exist)."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    return mode if mode & 0o077 else None
