"""Logging: one line per event, UTC timestamp and level name, to stdout and to a rotating
file ``<logging.dir>/titan-execution.log`` (10 MB x 5). Level names are the stdlib's, so
``grep -E "(ERROR|WARN|CRITICAL)"`` from the operations guide works on either."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"
LOG_FILE = "titan-execution.log"


def setup_logging(level: str, directory: str | None) -> Path | None:
    """Configure the root logger; returns the log file path (None without a directory)."""
    formatter = logging.Formatter(FORMAT, DATEFMT)
    formatter.converter = time.gmtime
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    path: Path | None = None
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / LOG_FILE
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    # Third-party chatter stays at WARNING unless we debug.
    for noisy in ("hypercorn.access", "httpx", "httpcore", "pony.orm"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return path
