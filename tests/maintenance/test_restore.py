"""``titan restore``: refused while the service runs, a damaged backup changes nothing,
a good one is swapped in with the previous database kept (with its WAL) and an undo that
works, and the service resumes the restored account."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import exact, spawn, stop, wait_healthy
from tests.maintenance.kit import (
    commit_and_die,
    make_backup,
    make_db,
    one_line,
    rows,
    snapshot,
    titan,
    write_checksum,
)
from tests.maintenance.test_backup_s3 import BUCKET, moto_endpoint  # noqa: F401 - fixture
from titan_trio.engine import InstanceLock
from titan_trio.maintenance import restore


@pytest.fixture
def setup(tmp_path: Path, config_file: Callable[..., Path]) -> tuple[Path, Path, Path]:
    """(config, database, backup dir): a backup holding ["backed-up"], and a current
    database that went on from there, its newest commit in its WAL only."""
    db, backups = tmp_path / "titan.db", tmp_path / "backups"
    make_db(db, ["backed-up"])
    make_backup(db, backups)
    make_db(db, ["after the backup"])
    commit_and_die(db, "in the WAL")
    return config_file(), db, backups


def the_backup(backups: Path) -> Path:
    (found,) = backups.glob("backup-*.db.gz")
    return found


def test_refused_while_the_service_runs(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, db, backups = setup
    before = snapshot(db.parent)
    lock = InstanceLock(str(db))  # what a running service holds
    lock.acquire()
    try:
        for how in (["--latest"], [str(the_backup(backups))], ["--from-s3"]):
            code, out, err = titan(capsys, "restore", *how, "--config", str(config))
            assert code == 1
            assert "refused: the service" in one_line(err) and "is running" in err
            assert out == ""
    finally:
        lock.release()
    after = snapshot(db.parent)
    assert after.pop("titan.db.lock") == str(os.getpid()).encode()  # ours, untouched
    before.pop("titan.db.lock", None)
    assert after == before


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def damage_inside_then_checksum(path: Path) -> None:
    """Damaged before its checksum was taken: the checksum matches, the content not."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[4096 : 4096 + 8] = b"\xff" * 8  # the second page's b-tree header
    path.write_bytes(gzip.compress(bytes(raw)))
    write_checksum(path)


def truncate_then_checksum(path: Path) -> None:
    damage_truncate(path)
    write_checksum(path)


def drop_checksum(path: Path) -> None:
    Path(f"{path}.sha256").unlink()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (damage_flip, "does not match its checksum"),
        (damage_truncate, "does not match its checksum"),
        (damage_inside_then_checksum, "integrity check"),
        (truncate_then_checksum, "does not decompress"),
        (drop_checksum, "has no checksum file"),
    ],
)
def test_a_damaged_backup_fails_and_changes_nothing(
    setup: tuple[Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None],
    says: str,
) -> None:
    config, db, backups = setup
    damage(the_backup(backups))
    before = snapshot(db.parent)
    for how in (["--latest"], [str(the_backup(backups))]):
        code, out, err = titan(capsys, "restore", *how, "--config", str(config))
        assert code == 1
        assert says in one_line(err)
        assert out == ""
    after = snapshot(db.parent)
    after.pop("titan.db.lock")  # the instance lock, taken and given back
    assert after == before  # byte for byte, -wal and -shm too; no temporary file left
    assert rows(db) == ["backed-up", "after the backup", "in the WAL"]


def test_a_restore_keeps_the_previous_database_and_says_how_to_undo(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, db, backups = setup
    make_backup(db, backups, age=timedelta(hours=3))  # older: --latest is not this one
    before = {s: Path(f"{db}{s}").read_bytes() for s in ("", "-wal", "-shm")}
    code, out, err = titan(capsys, "restore", "--latest", "--config", str(config))
    assert code == 0, err
    assert rows(db) == ["backed-up"]
    # the previous database, its WAL and index kept byte for byte, under names SQLite
    # pairs: opened, it has its newest commit (in its WAL)
    (kept,) = db.parent.glob("titan.db.before-restore-*[0-9]")
    for suffix, data in before.items():
        assert Path(f"{kept}{suffix}").read_bytes() == data
    assert f"kept as:\n  {kept}\n" in out
    assert titan(capsys, "db", "check", "--config", str(config))[0] == 0
    # the undo it printed works, and brings back every commit
    undo = out.split("to undo, with the service stopped:\n")[1]
    subprocess.run(["bash", "-euc", undo], check=True, timeout=30)
    assert rows(db) == ["backed-up", "after the backup", "in the WAL"]
    assert rows(Path(next(db.parent.glob("titan.db.restored-*[0-9]")))) == ["backed-up"]


def test_a_failure_after_the_swap_puts_the_previous_database_back(
    setup: tuple[Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, db, _backups = setup
    before = {s: Path(f"{db}{s}").read_bytes() for s in ("", "-wal", "-shm")}

    def fails(_db: Path) -> None:  # as if the disk failed under the restored file
        raise restore.RestoreError("the restored database fails its integrity check: x")

    monkeypatch.setattr(restore, "_after_check", fails)
    code, out, err = titan(capsys, "restore", "--latest", "--config", str(config))
    assert code == 1 and out == ""
    assert "the previous database is back" in one_line(err)
    assert {s: Path(f"{db}{s}").read_bytes() for s in before} == before
    assert rows(db) == ["backed-up", "after the backup", "in the WAL"]
    assert not list(db.parent.glob(".restoring-*"))


def test_a_path_and_the_list(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, db, backups = setup
    newest = the_backup(backups)
    older = make_backup(db, backups, age=timedelta(hours=5))
    damage_flip(older)
    code, out, err = titan(capsys, "restore", "--list", "--config", str(config))
    assert code == 0, err
    listed = out.splitlines()
    assert listed[0] == f"local backups in {backups}: 2"
    assert str(newest) in listed[1] and " verified " in listed[1]  # newest first
    assert str(older) in listed[2] and "NOT verified" in listed[2] and "5 h ago" in listed[2]
    code, out, err = titan(capsys, "restore", str(newest), "--config", str(config))
    assert code == 0, err
    assert rows(db) == ["backed-up"]
    code, out, err = titan(capsys, "restore", str(older), "--config", str(config))
    assert code == 1 and "checksum" in one_line(err)
    assert rows(db) == ["backed-up"]


def test_no_backup_and_no_database(
    tmp_path: Path, config_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file()
    code, _out, err = titan(capsys, "restore", "--latest", "--config", str(config))
    assert code == 1 and f"no backup in {tmp_path / 'backups'}" in one_line(err)
    # a backup into a place with no database yet (a new machine): nothing to keep
    elsewhere = tmp_path / "old"
    elsewhere.mkdir()
    make_db(elsewhere / "old.db", ["from the old machine"])
    backup = make_backup(elsewhere / "old.db", tmp_path / "backups")
    code, out, err = titan(capsys, "restore", str(backup), "--config", str(config))
    assert code == 0, err
    assert rows(tmp_path / "titan.db") == ["from the old machine"]
    assert "there was no database before" in out


def equity(port: int) -> Decimal:
    answer = httpx.get(f"http://127.0.0.1:{port}/api/state/equity", timeout=10)
    return exact(answer)["equity"]


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "titan_trio", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_the_service_resumes_the_restored_account(
    tmp_path: Path, config_doc: Callable[..., dict]
) -> None:
    """A paper account of 12345 backed up; the database lost and a new account of 50000
    started; the backup restored; the service started again has 12345."""
    port = free_port()
    db = tmp_path / "titan.db"

    def config(capital: int) -> Path:
        path = tmp_path / f"config-{capital}.json"
        doc = config_doc(api={"port": port}, broker={"initialCapital": capital})
        path.write_text(json.dumps(doc))
        return path

    def serve(cfg: Path, expect: Decimal) -> None:
        proc = spawn(cfg, tmp_path)
        try:
            wait_healthy(port, proc)
            assert equity(port) == expect
            if expect == 50000:  # running: refused, nothing touched
                refused = run_cli(cfg, "restore", "--latest")
                assert refused.returncode == 1
                assert "is running" in refused.stderr
        finally:
            code, _took, out = stop(proc)
        assert code == 0, out

    serve(config(12345), Decimal(12345))
    make_backup(db, tmp_path / "backups")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    serve(config(50000), Decimal(50000))
    done = run_cli(config(50000), "restore", "--latest")
    assert done.returncode == 0, done.stderr
    serve(config(50000), Decimal(12345))


def test_from_s3_lists_downloads_verifies_and_restores(
    tmp_path: Path,
    config_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    moto_endpoint: str,  # noqa: F811 - the fixture
) -> None:
    """A backup uploaded by `titan backup` comes back with `titan restore --from-s3`: listed
    with the local ones, the newest taken when no key is given, verified (its checksum
    object downloaded with it) before the swap."""
    import boto3

    from titan_trio.config import S3Config
    from titan_trio.maintenance.backups import create_backup
    from titan_trio.maintenance.s3 import upload

    db, backups = tmp_path / "titan.db", tmp_path / "backups"
    make_db(db, ["in s3"])
    s3 = {"bucket": BUCKET, "prefix": "t/", "region": "us-east-1", "endpointUrl": moto_endpoint}
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint).create_bucket(
        Bucket=BUCKET
    )
    info = create_backup(str(db), str(tmp_path / "elsewhere"))
    uploaded = upload(info, S3Config(BUCKET, "t/", "us-east-1", moto_endpoint))
    make_db(db, ["changed since"])
    config = config_file(database={"s3": s3, "backupDir": str(backups)})

    code, out, err = titan(capsys, "restore", "--list", "--config", str(config))
    assert code == 0, err
    assert any(uploaded.key in line for line in out.splitlines()), out
    code, out, err = titan(capsys, "restore", "--from-s3", "--config", str(config))
    assert code == 0, err
    assert rows(db) == ["in s3"]
    code, out, err = titan(
        capsys, "restore", "--from-s3", "t/nothing.db.gz", "--config", str(config)
    )
    assert code == 1 and err.count("\n") == 1
    assert rows(db) == ["in s3"]
