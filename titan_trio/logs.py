"""Logging: one line per event, UTC timestamp and level name, to stdout and to a rotating
file ``<logging.dir>/titan-execution.log`` (10 MB x 5). Level names are the stdlib's, so
``grep -E "(ERROR|WARN|CRITICAL)"`` from the operations guide works on either.

The service's threads only put records on a queue; one logging thread formats and
writes them, so a slow disk or terminal never delays a reply. ``stop()`` on the returned
handle drains the queue (call it after trio.run returns)."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from pathlib import Path

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"
LOG_FILE = "titan-execution.log"


class LogHandle:
    def __init__(self, path: Path | None, listener: logging.handlers.QueueListener) -> None:
        self.path = path
        self._listener = listener

    def stop(self) -> None:
        """Write out everything queued and stop the logging thread."""
        self._listener.stop()
        for handler in self._listener.handlers:
            handler.close()


def setup_logging(level: str, directory: str | None) -> LogHandle:
    """Configure the root logger; the handle names the log file and stops logging."""
    formatter = logging.Formatter(FORMAT, DATEFMT)
    formatter.converter = time.gmtime
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    handlers: list[logging.Handler] = [console]
    path: Path | None = None
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / LOG_FILE
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        file_handler.setFormatter(formatter)
        handlers.append(file_handler)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.addHandler(logging.handlers.QueueHandler(records))
    listener = logging.handlers.QueueListener(records, *handlers)
    listener.start()
    # Third-party chatter stays at WARNING unless we debug.
    for noisy in ("hypercorn.access", "httpx", "httpcore", "pony.orm"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return LogHandle(path, listener)
