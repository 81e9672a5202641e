"""The store's -wal file kept in memory (resident.py): a page the host drops from the
page cache is one the trio thread's next commit reads back from the disk first. Here
the host's reclaim is played by POSIX_FADV_DONTNEED, which drops a file's clean pages
unless a process maps them, as a proactive reclaim of cold page cache does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.maintenance.test_backups import cached_share, evict
from tests.state.test_store import WAL_BOUND, open_store
from titan_trio.state import records
from titan_trio.state import store as store_module
from titan_trio.state.resident import PAGE, ResidentFile

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

MB = 1024 * 1024


def resident(path: Path) -> int:
    """Bytes of the file in the page cache (mincore), whole pages."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    return round(cached_share(path) * ((size + PAGE - 1) // PAGE)) * PAGE


# What the host's reclaim does to cold page cache: the file's pages on the disk, then
# dropped from memory, except those a process maps.
drop = evict


def written(path: Path, size: int) -> Path:
    with open(path, "ab") as f:
        f.write(os.urandom(size))
    return path


def droppable(tmp_path: Path) -> None:
    """Skip where the filesystem keeps a file's unmapped pages through DONTNEED (tmpfs):
    then no test here could tell a kept file from another."""
    probe = written(tmp_path / "probe", MB)
    drop(probe)
    if resident(probe) > MB // 2:
        pytest.skip(f"{tmp_path} keeps unmapped pages through POSIX_FADV_DONTNEED")


def test_a_kept_file_stays_in_memory_when_its_pages_are_dropped(tmp_path: Path) -> None:
    droppable(tmp_path)
    kept, other = written(tmp_path / "kept", 8 * MB), written(tmp_path / "other", 8 * MB)
    keeper = ResidentFile(str(kept), 64 * MB)
    try:
        assert keeper.refresh()
        drop(kept)
        drop(other)
        assert resident(kept) == 8 * MB
        assert resident(other) == 0
    finally:
        keeper.close()
    drop(kept)  # closed: nothing keeps it any more
    assert resident(kept) == 0


def test_what_was_written_since_is_kept_at_the_next_refresh_up_to_the_span(
    tmp_path: Path,
) -> None:
    """Pages written after a refresh are kept from the next one on, and pages that were
    dropped meanwhile are read back by it (off the writer's thread). Past the span,
    nothing is kept: the service keeps only the WAL's bound."""
    droppable(tmp_path)
    path = written(tmp_path / "wal", 2 * MB)
    keeper = ResidentFile(str(path), 6 * MB)
    try:
        assert keeper.refresh()
        written(path, 6 * MB)  # 8 MB now, past the 6 MB span
        drop(path)
        assert resident(path) == 2 * MB  # the new pages were not kept yet
        assert keeper.refresh()
        assert keeper.kept == 6 * MB
        drop(path)
        assert resident(path) == 6 * MB
    finally:
        keeper.close()


def test_a_file_cut_shorter_replaced_or_gone_is_followed_without_a_fault(
    tmp_path: Path,
) -> None:
    """The mapping is never read, so a file cut under it cannot kill the process
    (SIGBUS): the refresh keeps what the file holds now; a file replaced is followed;
    a missing file keeps nothing and is picked up when it comes back."""
    droppable(tmp_path)
    path = written(tmp_path / "wal", 4 * MB)
    keeper = ResidentFile(str(path), 64 * MB)
    try:
        assert keeper.refresh()
        os.truncate(path, MB + 100)  # not on a page boundary
        assert keeper.refresh()
        assert keeper.kept == MB + PAGE
        drop(path)
        assert resident(path) == MB + PAGE

        path.unlink()
        assert not keeper.refresh()
        assert keeper.kept == 0

        written(path, 3 * MB)  # a new file at the same path
        assert keeper.refresh()
        drop(path)
        assert resident(path) == 3 * MB
    finally:
        keeper.close()


async def test_the_stores_wal_stays_in_memory_up_to_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's -wal file, which its commits write over from the start after each
    RESTART, survives the host dropping cold page cache up to the bound, once a
    checkpoint came after it reached the bound. Writes go on while the test drops the
    file's pages again and again (a checkpoint comes every 20 commits here)."""
    droppable(tmp_path)
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY", 20)
    path = tmp_path / "t.db"
    wal = Path(str(path) + "-wal")
    kept = 0
    async with open_store(path) as store:
        for i in range(600):  # 64 KiB each: the 4 MB bound is reached after ~64
            value = f"{i:08d}" * 8192
            await store.call(records.kv_set, f"k{i % 10}", value, i, urgent=i % 2 == 0)
            if i >= 100 and i % 10 == 0:
                drop(wal)
                kept = resident(wal)
                if kept >= WAL_BOUND:
                    break
        assert await store.call(records.kv_get, f"k{i % 10}") == f"{i:08d}" * 8192
    assert kept >= WAL_BOUND, f"{kept} bytes of the -wal file left in memory"
