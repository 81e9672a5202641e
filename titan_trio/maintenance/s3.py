"""Backups in S3 (or an S3-compatible store through ``database.s3.endpointUrl``).

Objects mirror the local files: ``<prefix><backup name>`` and ``<prefix><backup
name>.sha256``, both stored with server-side encryption (``AES256``: S3's own keys, which
needs no KMS permission; a bucket policy can demand more). The checksum object is
uploaded last and deleted first, as locally, so a listing counts a backup without its
checksum as unfinished (``verified`` False).

Credentials come from boto3's usual chain (the environment, ``~/.aws``, an instance
role): this module never reads or logs them. Every boto failure becomes a BackupError
with one line saying what to fix (no credentials, no such bucket, refused, unreachable).
Retries are boto's "standard" mode with few attempts and short timeouts, so a dead
endpoint fails ``titan backup`` in seconds, not minutes.

Downloads are written like every other file: a temporary name in the destination
directory, fsync, rename; the ``.sha256`` last.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from titan_trio.config import S3Config
from titan_trio.maintenance.backups import (
    CHECKSUM_SUFFIX,
    TEMP_PREFIX,
    BackupError,
    BackupInfo,
    expired,
    taken_at_of,
)
from titan_trio.private_files import FILE_MODE, make_private_dirs

S3Client = Any  # boto3's client class is generated at run time

SSE = "AES256"


def client(cfg: S3Config) -> S3Client:
    """A boto3 S3 client for ``cfg`` (region, endpoint), with short timeouts. A session
    of its own each time: boto3's default session caches the credentials it found first
    and is not safe to share between threads (the schedule's worker, the CLI)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        "s3",
        region_name=cfg.region,
        endpoint_url=cfg.endpoint_url,
        config=BotoConfig(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


def key_of(cfg: S3Config, name: str) -> str:
    return f"{cfg.prefix}{name}"


def where(cfg: S3Config, key: str = "") -> str:
    return f"s3://{cfg.bucket}/{key}"


@contextlib.contextmanager
def _s3_errors(cfg: S3Config, doing: str) -> Iterator[None]:
    """Boto's exceptions as one BackupError line: what was being done, and why not."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise BackupError(
            f"{doing}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "a profile, or an instance role)"
        ) from None
    except EndpointConnectionError as exc:
        raise BackupError(f"{doing}: cannot reach S3 ({exc})") from None
    except (ClientError, S3UploadFailedError) as exc:
        # upload_file wraps the service's answer; the answer is what the operator needs
        cause = exc if isinstance(exc, ClientError) else exc.__context__
        if not isinstance(cause, ClientError):
            raise BackupError(f"{doing}: {exc}") from None
        raise BackupError(f"{doing}: {_refusal(cfg, cause.response)}") from None
    except BotoCoreError as exc:
        raise BackupError(f"{doing}: {exc}") from None


def _refusal(cfg: S3Config, response: Any) -> str:
    error = response.get("Error", {})
    code = str(error.get("Code", "?"))
    if code == "NoSuchBucket":
        return f"the bucket {cfg.bucket} does not exist"
    if code in ("NoSuchKey", "404"):
        return "no such object"
    message = str(error.get("Message", "")).strip()
    return f"S3 refused: {code}{': ' + message if message else ''}"


def _need_bucket(cfg: S3Config) -> str:
    if not cfg.bucket:
        raise BackupError("database.s3.bucket is not set")
    return cfg.bucket


def upload(info: BackupInfo, cfg: S3Config, *, s3: S3Client | None = None) -> BackupInfo:
    """Upload a local backup and its checksum (last), server-side encrypted. The S3
    copy's BackupInfo."""
    bucket = _need_bucket(cfg)
    s3 = s3 or client(cfg)
    key = key_of(cfg, info.name)
    sums_path = info.path + CHECKSUM_SUFFIX
    try:
        with open(sums_path, "rb") as f:
            sums = f.read()
    except OSError as exc:
        raise BackupError(f"cannot read {sums_path}: {exc.strerror}") from None
    with _s3_errors(cfg, f"upload of {info.name} to {where(cfg, key)}"):
        s3.upload_file(info.path, bucket, key, ExtraArgs={"ServerSideEncryption": SSE})
        s3.put_object(Bucket=bucket, Key=key + CHECKSUM_SUFFIX, Body=sums, ServerSideEncryption=SSE)
    return BackupInfo(info.path, info.taken_at, info.size, info.sha256, None, "s3", key)


def list_s3(cfg: S3Config, *, s3: S3Client | None = None) -> list[BackupInfo]:
    """The backups under ``database.s3.prefix``, newest first. ``path`` is the s3://
    URL; ``verified`` None when the checksum object is there, False when not."""
    bucket = _need_bucket(cfg)
    s3 = s3 or client(cfg)
    objects: dict[str, int] = {}
    with _s3_errors(cfg, f"listing {where(cfg, cfg.prefix)}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=cfg.prefix):
            for obj in page.get("Contents", []):
                objects[obj["Key"]] = obj["Size"]
    found = []
    for key, size in objects.items():
        name = key[len(cfg.prefix) :]
        if "/" in name or (taken := taken_at_of(name)) is None:
            continue
        finished = key + CHECKSUM_SUFFIX in objects
        found.append(
            BackupInfo(where(cfg, key), taken, size, None, None if finished else False, "s3", key)
        )
    found.sort(key=lambda info: info.taken_at, reverse=True)
    return found


def download(key: str, dest_dir: str, cfg: S3Config, *, s3: S3Client | None = None) -> str:
    """Download the backup ``key`` and its checksum object into ``dest_dir``; the local
    path of the backup. Files are renamed into place only once both are complete."""
    bucket = _need_bucket(cfg)
    s3 = s3 or client(cfg)
    name = os.path.basename(key)
    if taken_at_of(name) is None:
        raise BackupError(f"{key} is not a backup's name (backup-YYYY-MM-DDTHH-MM-SS.db.gz)")
    try:
        make_private_dirs(dest_dir)
    except OSError as exc:
        raise BackupError(f"cannot create {dest_dir}: {exc.strerror}") from None
    final = os.path.join(dest_dir, name)
    temps: list[str] = []
    try:
        for suffix in ("", CHECKSUM_SUFFIX):
            try:
                fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".download", dir=dest_dir)
            except OSError as exc:
                raise BackupError(f"cannot write in {dest_dir}: {exc.strerror}") from None
            os.fchmod(fd, FILE_MODE)
            temps.append(temp)
            with os.fdopen(fd, "wb") as out:
                with _s3_errors(cfg, f"download of {where(cfg, key + suffix)}"):
                    s3.download_fileobj(bucket, key + suffix, out)
                out.flush()
                os.fsync(out.fileno())
        try:
            os.replace(temps[0], final)
            os.replace(temps[1], final + CHECKSUM_SUFFIX)  # last: the download is complete
        except OSError as exc:
            raise BackupError(f"cannot create {final}: {exc.strerror}") from None
    except OSError as exc:
        raise BackupError(f"download of {key} into {dest_dir} failed: {exc.strerror}") from None
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    return final


def prune_s3(
    cfg: S3Config, retention_days: int, now: datetime, *, s3: S3Client | None = None
) -> list[str]:
    """Delete the S3 backups older than ``retention_days`` before ``now`` (their
    checksum objects first), never the newest finished one. The deleted keys."""
    bucket = _need_bucket(cfg)
    s3 = s3 or client(cfg)
    backups = list_s3(cfg, s3=s3)
    doomed = expired([(b.taken_at, b.verified is not False) for b in backups], retention_days, now)
    deleted = []
    for i in doomed:
        key = backups[i].key
        assert key is not None
        with _s3_errors(cfg, f"deleting the old backup {where(cfg, key)}"):
            s3.delete_object(Bucket=bucket, Key=key + CHECKSUM_SUFFIX)
            s3.delete_object(Bucket=bucket, Key=key)
        deleted.append(key)
    return deleted
