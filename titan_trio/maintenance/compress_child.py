"""The child process a backup gzips and hashes its copy in (backups._compress says why).

``python -m titan_trio.maintenance.compress_child SOURCE DEST``: lowers its own CPU
priority to the lowest, gzips SOURCE into DEST (fsynced) and prints the SHA-256 of DEST
on stdout, exit 0. On failure: one line on stderr, the message the backup reports, and
exit 1; DEST is left for the parent to delete with its other temporary files.
"""

from __future__ import annotations

import contextlib
import os
import sys

from titan_trio.maintenance.backups import BackupError, compress_here

LOWEST_PRIORITY = 19  # nice: the live service beside it comes first


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m titan_trio.maintenance.compress_child SOURCE DEST", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, LOWEST_PRIORITY)
    try:
        digest = compress_here(argv[0], argv[1])
    except BackupError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C on `titan backup` reaches its child too
        print("backup interrupted", file=sys.stderr)
        return 130
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
