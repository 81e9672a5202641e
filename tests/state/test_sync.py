"""Fill de-duplication with bounded memory: recent exec ids in memory, older ones in the
database, across a restart too."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from tests.state.test_shadow import fill, open_order
from titan_trio.brokers.base import BrokerEvent, FillEvent, OrderEvent
from titan_trio.clock import now_ms
from titan_trio.domain.orders import OrderStatus, Side
from titan_trio.state import records
from titan_trio.state.shadow import RecentExecIds, ShadowState
from titan_trio.state.store import Store
from titan_trio.state.sync import ShadowSync, restore_shadow

D = Decimal


def test_recent_ids_forget_the_oldest_and_remember_how_old() -> None:
    seen = RecentExecIds(limit=2)
    seen.add("a", 100)
    seen.add("b", 200)
    seen.add("a", 100)  # already there: nothing moves
    assert set(seen) == {"a", "b"} and seen.horizon_ms == -1
    seen.add("c", 300)
    assert set(seen) == {"b", "c"} and seen.horizon_ms == 100
    assert seen.needs_database_check(fill("a", Side.BUY, "1", "1", ts=100))
    assert not seen.needs_database_check(fill("b", Side.BUY, "1", "1", ts=200))  # in memory
    assert not seen.needs_database_check(fill("d", Side.BUY, "1", "1", ts=400))  # new


@asynccontextmanager
async def synced(path: Path, shadow: ShadowState) -> AsyncIterator[tuple[Store, ShadowSync]]:
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(path), inline_burst_s=60.0).run)
        send, receive = trio.open_memory_channel[BrokerEvent](16)
        sync = ShadowSync(shadow, store, receive)
        yield store, sync
        send.close()
        nursery.cancel_scope.cancel()


async def test_a_replayed_fill_older_than_memory_is_refused_by_the_database(
    tmp_path: Path,
) -> None:
    base = now_ms() - 60_000
    shadow = ShadowState(D("10000"))
    shadow.seen_exec_ids = RecentExecIds(limit=2)
    async with synced(tmp_path / "t.db", shadow) as (_store, sync):
        await sync.apply([OrderEvent(open_order("c1", Side.BUY, "sig-1"))])
        for k in range(3):  # e0 leaves memory when e2 arrives
            await sync.apply([FillEvent(fill(f"e{k}", Side.BUY, "0.1", "30000", ts=base + k))])
        position = shadow.positions["BTCUSDT"].position
        assert position.size == D("0.3")
        assert "e0" not in shadow.seen_exec_ids

        await sync.apply([FillEvent(fill("e0", Side.BUY, "0.1", "30000", ts=base))])  # replay
        assert shadow.positions["BTCUSDT"].position.size == D("0.3")
        await sync.apply([FillEvent(fill("e3", Side.BUY, "0.1", "30000", ts=base + 3))])
        assert shadow.positions["BTCUSDT"].position.size == D("0.4")

    # after a restart with the same small memory: the newest two are loaded, the older
    # ones are found in the database, so no replay moves the position
    store_path = tmp_path / "t.db"
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(store_path)).run)
        assert len((await restore_shadow(store, D("10000"))).seen_exec_ids) == 4
        restored = await restore_shadow(store, D("10000"), exec_id_memory=2)
        nursery.cancel_scope.cancel()
    assert set(restored.seen_exec_ids) == {"e2", "e3"}
    assert restored.seen_exec_ids.horizon_ms == base + 2
    async with synced(store_path, restored) as (_store, sync):
        for k in range(4):
            await sync.apply([FillEvent(fill(f"e{k}", Side.BUY, "0.1", "30000", ts=base + k))])
        assert restored.positions["BTCUSDT"].position.size == D("0.4")
        await sync.apply([FillEvent(fill("e4", Side.BUY, "0.1", "30000", ts=base + 4))])
        assert restored.positions["BTCUSDT"].position.size == D("0.5")


def never_passes(e: object) -> None:
    """A write that fails by itself (a bug or a constraint), never the database."""
    raise ValueError("CHECK constraint failed")


async def test_a_write_that_can_never_pass_is_set_aside_and_later_saves_go_on(
    tmp_path: Path,
) -> None:
    shadow = ShadowState(D("10000"))
    failures: list[str] = []
    async with synced(tmp_path / "t.db", shadow) as (store, sync):
        sync.on_storage_failure = failures.append
        sync.unsaved = [(never_passes, ())]  # kept from an earlier failed save
        await sync.apply([OrderEvent(open_order("c1", Side.BUY, "sig-1"))])
        await sync.apply([FillEvent(fill("e1", Side.BUY, "0.1", "30000", ts=now_ms()))])
        assert sync.unsaved == [] and sync.bad_writes == 1
        assert failures == []  # the database works: trading is not narrowed
        saved = await store.call(records.load_positions)
        assert [r.position.size for r in saved] == [D("0.1")]


async def test_a_stale_accepted_after_filled_does_not_reopen_the_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shadow = ShadowState(D("10000"))
    async with synced(tmp_path / "t.db", shadow) as (store, sync):
        accepted = open_order("c1", Side.BUY, "sig-1")
        stale = copy.copy(accepted)  # the broker's ACCEPTED view, delivered late
        await sync.apply([OrderEvent(accepted)])
        filled = copy.copy(accepted)
        filled.status, filled.filled_qty, filled.avg_fill_price = (
            OrderStatus.FILLED,
            D("100"),
            D("30000"),
        )
        await sync.apply([OrderEvent(filled)])
        assert "c1" not in shadow.orders
        with caplog.at_level(logging.WARNING, logger="titan.state"):
            await sync.apply([OrderEvent(stale)])  # late, from before the fill
        assert "c1" not in shadow.orders  # still finished, not re-opened
        assert any("stale" in r.getMessage() for r in caplog.records)
        assert await store.call(records.load_open_orders) == []


async def test_an_open_order_restored_counts_only_its_recorded_fills_as_applied(
    tmp_path: Path,
) -> None:
    """Its update was committed, one fill of it was not (a kill in between): the replay
    of that fill must count, and the rest of the order still counts as exposure."""
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db")).run)
        order = open_order("c1", Side.BUY, "sig-1")  # 100
        order.status = OrderStatus.PARTIALLY_FILLED
        order.filled_qty = D(30)
        order.updated_ms = order.created_ms = now_ms()
        await store.call(records.save_order, order)
        shadow = await restore_shadow(store, D(10000))
        assert shadow.applied_qty["c1"] == 0
        sync = ShadowSync(shadow, store, trio.open_memory_channel[BrokerEvent](1)[1])
        await sync.replay([fill("e1", Side.BUY, "30", "100", ts=now_ms())])
        [(_, pending)] = shadow.entry_exposure()
        nursery.cancel_scope.cancel()
    assert shadow.positions["BTCUSDT"].position.size == D(30)
    assert pending == D(70)


async def test_a_finished_order_whose_fills_were_not_recorded_waits_for_them(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db")).run)
        order = open_order("c1", Side.BUY, "sig-1")
        order.status = OrderStatus.FILLED
        order.filled_qty = D(100)
        order.updated_ms = order.created_ms = now_ms()
        order.stop_loss = D(90)
        await store.call(records.save_order, order)
        shadow = await restore_shadow(store, D(10000))
        assert shadow.unsettled["c1"].stop_loss == D(90)
        sync = ShadowSync(shadow, store, trio.open_memory_channel[BrokerEvent](1)[1])
        await sync.replay([fill("e1", Side.BUY, "100", "100", ts=now_ms())])
        nursery.cancel_scope.cancel()
    assert not shadow.unsettled
    rec = shadow.positions["BTCUSDT"]
    assert rec.signal_id == "sig-1" and rec.stop_loss == D(90)  # the order's plan


async def test_a_settled_order_told_again_after_a_restart_is_not_adopted_anew(
    tmp_path: Path,
) -> None:
    """Polling after a restart (or a repeated stream message) tells a finished order again
    that was settled and forgotten: adopting it anew would wait for fills applied long ago,
    and reconciliation would then take its position whole for no reason."""
    shadow = ShadowState(D("10000"))
    filled = open_order("c1", Side.BUY, "sig-1")
    async with synced(tmp_path / "t.db", shadow) as (_store, sync):
        await sync.apply([OrderEvent(copy.copy(filled))])
        await sync.apply([FillEvent(fill("e1", Side.BUY, "100", "100", ts=now_ms()))])
        filled.status, filled.filled_qty = OrderStatus.FILLED, D("100")
        await sync.apply([OrderEvent(copy.copy(filled))])
        assert "c1" not in shadow.orders and "c1" not in shadow.unsettled  # settled
    restored = await restore_after(tmp_path / "t.db")
    async with synced(tmp_path / "t.db", restored) as (_store, sync):
        await sync.apply([OrderEvent(copy.copy(filled))])  # told again
        assert "c1" not in restored.unsettled and "c1" not in restored.applied_qty
        assert restored.positions["BTCUSDT"].position.size == D("100")


async def restore_after(path: Path) -> ShadowState:
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(path)).run)
        shadow = await restore_shadow(store, D("10000"))
        nursery.cancel_scope.cancel()
    return shadow
