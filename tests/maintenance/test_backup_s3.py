"""Backups in S3, against moto's server on loopback: upload (server-side encrypted), list,
download and verify, retention, and clear errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.maintenance.test_backups import make_db
from titan_trio.config import S3Config
from titan_trio.maintenance.backups import BackupError, create_backup, verify_backup
from titan_trio.maintenance.s3 import download, list_s3, prune_s3, upload

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
BUCKET = "titan-test-backups"


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in this process, across servers: each test starts empty
    httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3cfg(moto_endpoint: str) -> S3Config:
    cfg = S3Config(bucket=BUCKET, prefix="prod/", region="us-east-1", endpoint_url=moto_endpoint)
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint).create_bucket(
        Bucket=BUCKET
    )
    return cfg


def raw(cfg: S3Config):
    return boto3.client("s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url)


def test_upload_list_download_and_verify(tmp_path: Path, s3cfg: S3Config) -> None:
    db = make_db(tmp_path / "a.db", rows=400)
    info = create_backup(str(db), str(tmp_path / "local"), now=NOW)
    uploaded = upload(info, s3cfg)
    assert uploaded.key == "prod/backup-2026-03-10T12-00-00.db.gz"
    assert uploaded.location == "s3"

    s3 = raw(s3cfg)
    for key in (uploaded.key, uploaded.key + ".sha256"):
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key

    listed = list_s3(s3cfg)
    assert [(b.key, b.taken_at, b.size, b.verified) for b in listed] == [
        (uploaded.key, NOW, info.size, None)
    ]
    assert listed[0].path == f"s3://{BUCKET}/{uploaded.key}"

    path = download(uploaded.key, str(tmp_path / "restore"), s3cfg)
    assert Path(path).read_bytes() == Path(info.path).read_bytes()
    assert sorted(os.listdir(tmp_path / "restore")) == [
        "backup-2026-03-10T12-00-00.db.gz",
        "backup-2026-03-10T12-00-00.db.gz.sha256",
    ]
    assert verify_backup(path).tables == {"items": 400, "notes": 1}


def test_s3_retention_deletes_only_what_is_older_than_the_window(
    tmp_path: Path, s3cfg: S3Config
) -> None:
    db = make_db(tmp_path / "a.db")
    ages = [timedelta(days=45), timedelta(days=31), timedelta(days=2)]
    keys = [
        upload(create_backup(str(db), str(tmp_path / "l"), now=NOW - age), s3cfg).key
        for age in ages
    ]
    s3 = raw(s3cfg)
    s3.put_object(Bucket=BUCKET, Key="prod/notes.txt", Body=b"not a backup")
    s3.put_object(Bucket=BUCKET, Key="other/backup-2020-01-01T00-00-00.db.gz", Body=b"x")
    deleted = prune_s3(s3cfg, 30, NOW)
    assert sorted(deleted) == sorted(keys[:2])
    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert left == sorted(
        [keys[2], keys[2] + ".sha256", "prod/notes.txt", "other/backup-2020-01-01T00-00-00.db.gz"]
    )
    # all of them old: the newest stays
    assert prune_s3(s3cfg, 30, NOW + timedelta(days=100)) == []
    assert [b.key for b in list_s3(s3cfg)] == [keys[2]]


def test_an_unfinished_upload_is_listed_as_unfinished(tmp_path: Path, s3cfg: S3Config) -> None:
    raw(s3cfg).put_object(Bucket=BUCKET, Key="prod/backup-2026-03-10T11-00-00.db.gz", Body=b"x")
    assert [b.verified for b in list_s3(s3cfg)] == [False]


def test_a_missing_bucket_is_a_clear_error(tmp_path: Path, moto_endpoint: str) -> None:
    cfg = S3Config(bucket="no-such-bucket", region="us-east-1", endpoint_url=moto_endpoint)
    info = create_backup(str(make_db(tmp_path / "a.db")), str(tmp_path / "l"), now=NOW)
    with pytest.raises(BackupError, match="the bucket no-such-bucket does not exist"):
        upload(info, cfg)
    with pytest.raises(BackupError, match="the bucket no-such-bucket does not exist"):
        list_s3(cfg)


def test_no_credentials_is_a_clear_error(
    tmp_path: Path, s3cfg: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(BackupError, match="no AWS credentials"):
        list_s3(s3cfg)


def test_an_unreachable_endpoint_is_a_clear_error(tmp_path: Path, s3cfg: S3Config) -> None:
    from tests.conftest import free_port

    cfg = S3Config(
        bucket=BUCKET, region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(BackupError, match="cannot reach S3"):
        list_s3(cfg)


def test_a_download_of_a_missing_key_leaves_nothing(tmp_path: Path, s3cfg: S3Config) -> None:
    with pytest.raises(BackupError, match="download of s3://"):
        download("prod/backup-2026-01-01T00-00-00.db.gz", str(tmp_path / "r"), s3cfg)
    assert os.listdir(tmp_path / "r") == []
