"""Logging hands records to its own thread; what reaches the file must be what was said."""

from __future__ import annotations

import logging
from pathlib import Path

from tests.helpers import eventually
from titan_trio.logs import setup_logging


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_message_is_fixed_when_logged_and_everything_is_written_on_stop(tmp_path: Path) -> None:
    handle = setup_logging("INFO", str(tmp_path))
    try:
        log = logging.getLogger("titan.test")
        state = ["placed"]
        log.info("order %s", state)
        state[0] = "changed later"  # must not show in the line already logged
        log.debug("not at INFO")
        for k in range(500):
            log.info("line %d", k)
    finally:
        handle.stop()
    assert handle.path is not None
    lines = _lines(handle.path)
    assert lines[0].endswith("INFO titan.test: order ['placed']")
    assert not any("not at INFO" in line for line in lines)
    assert [line.rsplit(" ", 1)[1] for line in lines[1:]] == [str(k) for k in range(500)]


def test_exception_traceback_is_written(tmp_path: Path) -> None:
    handle = setup_logging("INFO", str(tmp_path))
    try:
        try:
            {}["missing"]
        except KeyError:
            logging.getLogger("titan.test").exception("lookup failed")
    finally:
        handle.stop()
    assert handle.path is not None
    text = handle.path.read_text(encoding="utf-8")
    assert "ERROR titan.test: lookup failed" in text
    assert "Traceback (most recent call last)" in text
    assert "KeyError: 'missing'" in text


async def test_info_line_reaches_the_file_while_running(tmp_path: Path) -> None:
    """Written by the logging thread on its own, not only when logging stops."""
    handle = setup_logging("INFO", str(tmp_path))
    try:
        logging.getLogger("titan.test").info("fill e-1 applied")
        assert handle.path is not None
        path = handle.path
        await eventually(lambda: path.exists() and "fill e-1 applied" in path.read_text())
        logging.getLogger("titan.test").warning("balance drift")
        await eventually(lambda: "WARNING titan.test: balance drift" in path.read_text())
    finally:
        handle.stop()


def test_other_handlers_see_the_record_unchanged(tmp_path: Path) -> None:
    seen: list[tuple[object, object, bool]] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.msg, record.args, record.exc_info is not None))

    handle = setup_logging("INFO", str(tmp_path))
    probe = Probe()
    logging.getLogger().addHandler(probe)
    try:
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("titan.test").exception("failed %s", "once")
    finally:
        logging.getLogger().removeHandler(probe)
        handle.stop()
    assert seen == [("failed %s", ("once",), True)]
    assert handle.path is not None
    assert "ValueError: bad" in handle.path.read_text()
