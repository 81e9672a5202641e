"""Shared fixtures: a test configuration in a temp directory (loopback, port 0, fast
simulated market), written as a file for subprocess tests and parsed for in-process ones;
and a small real disk (tmpfs) to fill up."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import merge
from titan_trio.config import Config, parse_config
from titan_trio.credentials import FILE_ENV, NEW_PASSWORD_ENV, PASSWORD_ENV

# No wall-clock limits in tests (these machines are shared and noisy): no per-example
# deadline, and no failure when generating inputs is slow. The first text strategy in a
# fresh clone builds Hypothesis's Unicode tables (~1 s), which failed CI's too_slow check.
settings.register_profile("titan", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("titan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True, scope="session")
def no_personal_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The credentials file of whoever runs the tests (~/.titan/credentials.enc) and their
    master password never reach the services and commands the tests start: a service
    would take its keys from that file instead of the test's."""
    names = (FILE_ENV, PASSWORD_ENV, NEW_PASSWORD_ENV)
    saved = {name: os.environ.pop(name, None) for name in names}
    os.environ[FILE_ENV] = str(tmp_path_factory.mktemp("no-credentials") / "credentials.enc")
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@pytest.fixture
def config_doc(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def make(**extra: Any) -> dict[str, Any]:
        base = {
            "api": {"host": "127.0.0.1", "port": 0},
            "ipc": {"socketPath": str(tmp_path / "titan-ipc.sock")},
            "database": {
                "path": str(tmp_path / "titan.db"),
                "backupDir": str(tmp_path / "backups"),
            },
            "simulation": {"intervalMs": 20},
            "logging": {"level": "INFO", "dir": str(tmp_path / "logs")},
        }
        return merge(base, extra)

    return make


@pytest.fixture
def make_config(config_doc: Callable[..., dict[str, Any]]) -> Callable[..., Config]:
    def make(**extra: Any) -> Config:
        return parse_config(config_doc(**extra), environ={})

    return make


@pytest.fixture
def config_file(tmp_path: Path, config_doc: Callable[..., dict[str, Any]]) -> Callable[..., Path]:
    def make(name: str = "config.json", **extra: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(config_doc(**extra)))
        return path

    return make


SMALL_DISK = "16m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of SMALL_DISK to fill up, unmounted at the end. Skips where mounting
    is not permitted (not root, or a container without the right)."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


def fill_disk(disk: Path) -> Path:
    """A file taking every free byte of ``disk``; delete it to give the space back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler
