"""``titan backup`` and ``titan backup --verify`` as an operator runs them: what they
print, one line on failure, the exit codes; the running service's metric follows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import boto3
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import service
from tests.maintenance.test_backup_s3 import BUCKET, moto_endpoint  # noqa: F401 - fixture
from tests.maintenance.test_backups import make_db
from titan_trio import cli
from titan_trio.config import Config
from titan_trio.maintenance import backup_cli
from titan_trio.maintenance import backups as backups_module
from titan_trio.maintenance.backups import list_local


def titan(config: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "titan_trio", "backup", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def setup(tmp_path: Path, config_file: Callable[..., Path]) -> tuple[Path, Path]:
    """A configuration whose database exists (items: 250 rows), and its backup dir."""
    make_db(tmp_path / "titan.db", rows=250)
    return config_file(), tmp_path / "backups"


def test_backup_then_verify(setup: tuple[Path, Path]) -> None:
    config, backups = setup
    done = titan(config)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [info] = list_local(str(backups))
    lines = done.stdout.splitlines()
    assert lines[0] == f"backup {info.path}"
    assert f"sha256 {info.sha256}" in lines[1] and f"({info.size} bytes)" in lines[1]

    done = titan(config, "--verify")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{info.path}: OK\n")
    assert f"sha256 {info.sha256} matches; integrity_check ok" in done.stdout
    rows = dict(line.split() for line in done.stdout.splitlines()[3:])
    assert rows == {"items": "250", "notes": "1"}

    done = titan(config, "--verify", info.path)
    assert done.returncode == 0, done.stderr


def test_verify_of_a_damaged_backup_exits_1_with_one_line(setup: tuple[Path, Path]) -> None:
    config, backups = setup
    assert titan(config).returncode == 0
    [info] = list_local(str(backups))
    data = bytearray(Path(info.path).read_bytes())
    data[100] ^= 0xFF
    Path(info.path).write_bytes(bytes(data))
    done = titan(config, "--verify")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"titan: {info.path} does not match its checksum")


def test_verify_with_no_backup_and_a_missing_path(setup: tuple[Path, Path]) -> None:
    config, backups = setup
    done = titan(config, "--verify")
    assert (done.returncode, done.stderr) == (
        1,
        f"titan: no finished backup in {backups} to verify\n",
    )
    done = titan(config, "--verify", str(backups / "nope.db.gz"))
    assert (done.returncode, done.stderr) == (1, f"titan: no backup at {backups / 'nope.db.gz'}\n")


def test_a_failed_backup_exits_1_with_one_line(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    config = config_file()  # its database does not exist
    done = titan(config)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"titan: no database at {tmp_path / 'titan.db'}\n"
    bad = tmp_path / "bad.json"
    bad.write_text('{"database": {"backupRetentionDays": 0}}')
    done = titan(bad)
    assert done.returncode == 2
    assert "database.backupRetentionDays" in done.stderr


def test_a_large_database_shows_progress(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, backups = setup
    monkeypatch.setattr(backup_cli, "PROGRESS_ABOVE_BYTES", 1024)  # "large"
    monkeypatch.setattr(backups_module, "PAGES_PER_STEP", 1)
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    assert cli.main(["backup", "--config", str(config)]) == 0
    # only the compression child runs at nice 19, never the program that ran the command
    assert os.getpriority(os.PRIO_PROCESS, 0) == priority
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 11  # every 10 %, once
    assert err[0].startswith("titan: backup 0 % (")
    assert err[5].startswith("titan: backup 50 % (")
    assert err[-1].startswith("titan: backup 100 % (")
    # not for a small one
    shutil.rmtree(backups)  # (a backup a second at most)
    monkeypatch.setattr(backup_cli, "PROGRESS_ABOVE_BYTES", 50 * 1024 * 1024)
    assert cli.main(["backup", "--config", str(config)]) == 0
    assert capsys.readouterr().err == ""


def test_backup_uploads_to_s3_and_a_refusal_exits_1(
    tmp_path: Path,
    config_file: Callable[..., Path],
    moto_endpoint: str,  # noqa: F811 - the fixture
) -> None:
    make_db(tmp_path / "titan.db")
    s3 = {"bucket": BUCKET, "prefix": "t/", "region": "us-east-1", "endpointUrl": moto_endpoint}
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint).create_bucket(
        Bucket=BUCKET
    )
    config = config_file(database={"s3": s3})
    done = titan(config)
    assert done.returncode == 0, done.stderr
    [info] = list_local(str(tmp_path / "backups"))
    key = f"t/{Path(info.path).name}"
    assert f"  uploaded to s3://{BUCKET}/{key} (server-side encrypted)" in done.stdout.splitlines()

    config = config_file(
        "other.json",
        database={"s3": {**s3, "bucket": "missing-bucket"}, "backupDir": str(tmp_path / "b2")},
    )
    done = titan(config)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("titan: the local backup was taken, but upload of")
    assert "the bucket missing-bucket does not exist" in done.stderr
    assert len(list_local(str(tmp_path / "b2"))) == 1  # the local one stays


async def test_the_metric_follows_titan_backup(
    make_config: Callable[..., Config], config_file: Callable[..., Path]
) -> None:
    cfg = make_config()
    config = config_file()

    async def backup_metric(client: httpx.AsyncClient) -> float:
        text = (await client.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "titan_backup_last_success_timestamp_seconds":
                    return sample.value
        raise AssertionError("no backup metric")

    async with service(cfg) as engine:
        async with httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client:
            assert await backup_metric(client) == 0
            done = await trio.run_process(
                [sys.executable, "-m", "titan_trio", "backup", "--config", str(config)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            [info] = list_local(cfg.database.backup_dir)
            assert await backup_metric(client) == info.taken_at.timestamp()
