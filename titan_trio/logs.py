"""Logging: one line per event, UTC timestamp and level name, to stdout and to a rotating
file ``<logging.dir>/titan-execution.log`` (10 MB x 5). Level names are the stdlib's, so
``grep -E "(ERROR|WARN|CRITICAL)"`` from the operations guide works on either.

The service's threads only hand records over; one logging thread formats and writes
them, so a slow disk or terminal never delays a reply. Handing over is cheap on purpose
(it happens on the request path: an order placed and its fill are two lines): the message
text is fixed at once (later changes to its arguments cannot alter it) and the record is
appended to a deque, without waking the logging thread. That thread writes what has
accumulated every FLUSH_INTERVAL_S (so a line reaches the file at most that late), and is
woken at once by a WARNING or worse. ``stop()`` on the returned handle writes out
everything left (call it after trio.run returns).

The log directory is created 0700 and each log file (the current one and every file a
rotation starts) 0600, whatever the umask, like the database (private_files.py)."""

from __future__ import annotations

import collections
import copy
import logging
import logging.handlers
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from titan_trio.private_files import make_private_dirs, open_private

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"
LOG_FILE = "titan-execution.log"
MAX_BYTES, BACKUPS = 10 * 1024 * 1024, 5  # rotation: titan-execution.log.1 ... .5
FLUSH_INTERVAL_S = 0.05


class _LogWriter:
    """The logging thread: writes the handed-over records to the real handlers."""

    def __init__(self, handlers: list[logging.Handler], interval_s: float) -> None:
        self.handlers = handlers
        self.interval_s = interval_s
        self.records: collections.deque[logging.LogRecord] = collections.deque()
        self.wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="titan-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self.wake.wait(self.interval_s)
            self.wake.clear()  # a record appended after this is written by the drain below
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while self.records:
            record = self.records.popleft()
            for handler in self.handlers:
                if record.levelno >= handler.level:
                    try:
                        handler.handle(record)
                    except Exception:  # a failing filter must not end this thread
                        handler.handleError(record)

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        self._thread.join()


class _HandOver(logging.Handler):
    """Appends records for the logging thread; wakes it only for WARNING and above."""

    def __init__(self, writer: _LogWriter, formatter: logging.Formatter) -> None:
        super().__init__()
        self.writer = writer
        self.formatter_for_exceptions = formatter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record = copy.copy(record)  # other handlers (pytest's caplog) see it unchanged
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:  # traceback text now, while its frames are as they were
                record.exc_text = self.formatter_for_exceptions.formatException(record.exc_info)
                record.exc_info = None
        except Exception:
            self.handleError(record)
            return
        self.writer.records.append(record)
        if record.levelno >= logging.WARNING:
            self.writer.wake.set()


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler whose files are created 0600 (rotation renames the old
    files, which keeps their mode, and opens a new one here)."""

    def _open(self) -> TextIO:
        fd = open_private(self.baseFilename, os.O_WRONLY | os.O_APPEND)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class LogHandle:
    def __init__(self, path: Path | None, writer: _LogWriter) -> None:
        self.path = path
        self._writer = writer

    def stop(self) -> None:
        """Write out everything handed over and stop the logging thread."""
        self._writer.stop()
        for handler in self._writer.handlers:
            handler.close()


def setup_logging(level: str, directory: str | None) -> LogHandle:
    """Configure the root logger; the handle names the log file and stops logging.
    Raises OSError when the directory or the file cannot be created."""
    formatter = logging.Formatter(FORMAT, DATEFMT)
    formatter.converter = time.gmtime
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    handlers: list[logging.Handler] = [console]
    path: Path | None = None
    if directory is not None:  # first: a file that cannot be opened changes nothing
        make_private_dirs(directory)
        path = Path(directory) / LOG_FILE
        file_handler = _PrivateRotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
        file_handler.setFormatter(formatter)
        handlers.append(file_handler)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    writer = _LogWriter(handlers, FLUSH_INTERVAL_S)
    root.addHandler(_HandOver(writer, formatter))
    # Third-party chatter stays at WARNING unless we debug.
    for noisy in ("hypercorn.access", "httpx", "httpcore", "pony.orm"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return LogHandle(path, writer)
