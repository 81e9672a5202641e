"""The child process a backup runs in (backups.create_backup says why a process).

``python -m titan_trio.maintenance.backup_child DB BACKUP_DIR NOW PAGES_PER_STEP SCRATCH
REPORT`` (NOW: an ISO time naming the backup, or empty for the current time; SCRATCH:
where the temporary copy goes, in memory, or empty for beside the backups; REPORT: 1 to
report each step of the copy, 0 not to). It lowers its own CPU priority to the lowest
(backups.lower_priority) and runs backups.create_backup_here. What it writes on stdout,
a line each:

- with REPORT 1, ``progress DONE TOTAL`` after each step of the copy; it then waits for
  a line on stdin (the parent's go-ahead) before the next step, and stops (deleting its
  files) when stdin closes instead. With REPORT 0 (nobody shows the progress: the
  in-service schedule) it copies without stopping: each step's report and go-ahead was
  a wake-up of a thread of the service, which took the GIL from the service's trio
  thread, a few hundred times in a few seconds per gigabyte;
- ``done {json}`` at the end: path, taken_at, size, sha256.

On failure: one line on stderr, the message the backup reports, and exit 1. Interrupted
(SIGINT: the parent cancelled, or Ctrl-C on ``titan backup``), it deletes its temporary
files and exits 130.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from titan_trio.maintenance import backups

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def report_progress(done: int, total: int) -> None:
    """One step of the copy done: say so and wait for the go-ahead (a stop on EOF)."""
    print(f"progress {done} {total}", flush=True)
    if not sys.stdin.buffer.readline():
        raise KeyboardInterrupt  # the parent is gone or cancelled: stop like Ctrl-C


def main(argv: list[str]) -> int:
    if len(argv) != 6 or argv[5] not in ("0", "1"):
        print(
            "usage: python -m titan_trio.maintenance.backup_child DB BACKUP_DIR NOW "
            "PAGES_PER_STEP SCRATCH REPORT(0|1)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    db_path, backup_dir, now_text, pages, scratch, report = argv
    backups.lower_priority()
    backups.PAGES_PER_STEP = int(pages)
    now = datetime.fromisoformat(now_text) if now_text else None
    try:
        info = backups.create_backup_here(
            db_path,
            backup_dir,
            progress=report_progress if report == "1" else None,
            now=now,
            scratch=scratch or None,
        )
    except backups.BackupError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"backup of {db_path} cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    result = {
        "path": info.path,
        "taken_at": info.taken_at.isoformat(),
        "size": info.size,
        "sha256": info.sha256,
    }
    print("done " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
