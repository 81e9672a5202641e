"""The service as a user runs it: a real process, real signals, real ports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import spawn, stop, wait_healthy
from titan_trio.engine import InstanceLock

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_starts_healthy_and_stops_cleanly(
    tmp_path: Path, config_file: Callable[..., Path], sig: int
) -> None:
    port = free_port()
    proc = spawn(config_file(api={"port": port}), tmp_path)
    try:
        health = wait_healthy(port, proc)
        assert health["database"]["status"] == "healthy"
        equity = httpx.get(f"http://127.0.0.1:{port}/api/state/equity").json()
        assert equity["equity"] == 10000
    finally:
        code, took, out = stop(proc, sig)
    assert code == 0, out
    assert took < 2.0, f"shutdown took {took:.2f}s"
    assert "Traceback" not in out
    assert "stopped cleanly" in out
    assert (tmp_path / "logs" / "titan-execution.log").read_text().count("ready") == 1


def run_to_exit(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``titan run`` that is expected to stop by itself (refused or failed start)."""
    return subprocess.run(
        [sys.executable, "-m", "titan_trio", "run", "--config", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_second_instance_fails_fast_and_restart_resumes(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    port = free_port()
    config = config_file(api={"port": port})
    first = spawn(config, tmp_path)
    try:
        wait_healthy(port, first)
        # Same database: refused by the instance lock, before touching anything.
        second = run_to_exit(config, tmp_path)
        assert second.returncode == 1
        assert "another titan instance" in second.stdout + second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        # Other database, same IPC socket: refused, naming the socket.
        other = tmp_path / "other"
        other.mkdir()
        doc = json.loads(config.read_text())
        doc["database"]["path"] = str(other / "titan.db")
        doc["logging"]["dir"] = str(other / "logs")
        doc["api"]["port"] = free_port()
        out = run_once(other, doc)
        assert "another process is listening on the IPC socket" in out
        # Other database and socket, same port: refused with the port named.
        doc["api"]["port"] = port
        doc["ipc"]["socketPath"] = str(other / "titan-ipc.sock")
        out = run_once(other, doc)
        assert f"port {port}" in out and "already in use" in out
        # The first instance never noticed.
        wait_healthy(port, first)
    finally:
        code, _took, out = stop(first)
    assert code == 0, out
    assert "paper account opened" in out

    again = spawn(config, tmp_path)
    try:
        wait_healthy(port, again)
    finally:
        code, _took, out = stop(again)
    assert code == 0
    assert "paper account resumed" in out


def test_refused_second_start_writes_only_to_stderr(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    port = free_port()
    config = config_file(api={"port": port})
    first = spawn(config, tmp_path)
    try:
        wait_healthy(port, first)
        second = run_to_exit(config, tmp_path)
        wait_healthy(port, first)
    finally:
        code, _took, out = stop(first)
    assert code == 0, out
    assert second.returncode == 1
    assert second.stdout == ""
    database = tmp_path / "titan.db"
    assert second.stderr == (
        f"titan: another titan instance (pid {first.pid}) is running on database "
        f"{database}; stop it first\n"
    )
    log = (tmp_path / "logs" / "titan-execution.log").read_text()
    assert log.count("starting titan-execution") == 1, log  # the first's, nothing more
    assert "another titan instance" not in log


def test_refused_start_creates_no_database_and_no_log(tmp_path: Path) -> None:
    """The lock is held (here by this test) and the database does not exist yet."""
    data = tmp_path / "data"
    doc = {
        "api": {"port": free_port()},
        "ipc": {"socketPath": str(tmp_path / "titan-ipc.sock")},
        "database": {"path": str(data / "titan.db")},
        "logging": {"dir": str(tmp_path / "logs")},
    }
    lock = InstanceLock(doc["database"]["path"])
    lock.acquire()
    try:
        out = run_once(tmp_path, doc)
    finally:
        lock.release()
    assert out.startswith("titan: another titan instance"), out
    assert sorted(p.name for p in data.iterdir()) == ["titan.db.lock"]
    assert not (tmp_path / "logs").exists()
    assert not (tmp_path / "titan-ipc.sock").exists()


def run_once(cwd: Path, doc: dict) -> str:
    """Start an instance that must fail fast; return what it printed."""
    path = cwd / "config.json"
    path.write_text(json.dumps(doc))
    proc = run_to_exit(path, cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    return out


def test_bad_config_exits_2_listing_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"api": {"port": "eighty"}, "risk": {"maxRiskPct": -1}, "mode": "demo"})
    )
    proc = run_to_exit(bad, tmp_path)
    assert proc.returncode == 2
    for path in ("api.port", "risk.maxRiskPct", "mode"):
        assert path in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "titan_execution.db").exists()
