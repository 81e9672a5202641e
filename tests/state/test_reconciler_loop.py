"""The reconciler's schedule, on trio's mock clock: the first run is retried until it
succeeds (entries wait for it), then a difference that appears is healed within one
``reconcile.intervalS``."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from titan_trio.brokers.base import AccountSnapshot
from titan_trio.clock import now_ms
from titan_trio.domain.orders import Order, OrderStatus, OrderType, Side
from titan_trio.domain.positions import Position
from titan_trio.errors import BrokerRejected
from titan_trio.state.reconcile import FIRST_RETRY_S, Reconciler
from titan_trio.state.shadow import PositionRecord, ShadowState
from titan_trio.state.store import Store

INTERVAL_S = 60.0


def quiet_reconciler(shadow: ShadowState, broker: object, store: Store) -> Reconciler:
    """A reconciler of an account with no events in flight."""
    return Reconciler(
        shadow,
        broker,  # type: ignore[arg-type]
        store,
        lambda: 0,
        lambda: False,
        set(),
        INTERVAL_S,
    )


class FlatBroker:
    """A broker holding nothing; unreachable for its first ``down`` snapshots."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.asked = 0

    async def account(self, fills_since_ms: int | None = None) -> AccountSnapshot:
        self.asked += 1
        if self.asked <= self.down:
            raise BrokerRejected("EXCHANGE_UNAVAILABLE", "connection refused")
        return AccountSnapshot([], [], Decimal(1000), 0)

    async def order_status(self, symbol: str, client_order_id: str) -> Order | None:
        return None


async def test_the_first_run_is_retried_and_a_ghost_heals_within_one_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shadow = ShadowState(Decimal(1000))
    broker = FlatBroker(down=2)
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        reconciler = quiet_reconciler(shadow, broker, store)
        await nursery.start(reconciler.run)
        started = trio.current_time()
        await reconciler.ready.wait()
        # two refusals, each tried again FIRST_RETRY_S later, not a whole interval
        assert broker.asked == 3 and reconciler.runs["error"] == 2
        assert trio.current_time() - started < 3 * FIRST_RETRY_S
        # A position appears here that the broker does not hold.
        shadow.positions["BTCUSDT"] = PositionRecord(
            Position("BTCUSDT", Decimal("0.1"), Decimal(100))
        )
        await trio.sleep(INTERVAL_S - 5)
        assert "BTCUSDT" in shadow.positions
        await trio.sleep(10)
        assert "BTCUSDT" not in shadow.positions  # closed out by the next scheduled run
        assert reconciler.runs["healed"] == 1
        assert any("position_only_here BTCUSDT" in d for d in reconciler.view()["differences"])
        nursery.cancel_scope.cancel()


class RecordingBroker(FlatBroker):
    """A flat broker that remembers from when each snapshot asked for fills."""

    def __init__(self) -> None:
        super().__init__(down=0)
        self.since: list[int | None] = []

    async def account(self, fills_since_ms: int | None = None) -> AccountSnapshot:
        self.since.append(fills_since_ms)
        return await super().account(fills_since_ms)


async def test_an_idle_account_is_not_read_from_its_last_fill_every_run(tmp_path: Path) -> None:
    """No fill for months: each run reads the fills from shortly before the previous
    snapshot, not from the last fill (a real exchange answers such reads window by
    window, a request per week)."""
    from titan_trio.state import records
    from titan_trio.state.reconcile import CURSOR_LAG_MS, FILLS_CURSOR_KEY

    months_ago = now_ms() - 90 * 24 * 3600 * 1000
    shadow = ShadowState(Decimal(1000))
    broker = RecordingBroker()
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        await store.call(records.kv_set, FILLS_CURSOR_KEY, months_ago, months_ago)
        reconciler = quiet_reconciler(shadow, broker, store)
        before = now_ms()
        await reconciler.reconcile()
        await reconciler.reconcile()
        first, second = broker.since
        assert first is not None and first < months_ago  # the saved cursor (less overlap)
        assert second is not None and second >= before - CURSOR_LAG_MS - 1000
        assert int(await store.call(records.kv_get, FILLS_CURSOR_KEY)) >= before - CURSOR_LAG_MS
        nursery.cancel_scope.cancel()


class SlowStatusBroker(FlatBroker):
    """A flat broker whose answer about one order lets the other order's own event
    (it was cancelled) be applied meanwhile, as a stream would."""

    def __init__(self, shadow: ShadowState, finished_meanwhile: Order) -> None:
        super().__init__(down=0)
        self.shadow = shadow
        self.finished_meanwhile = finished_meanwhile

    async def order_status(self, symbol: str, client_order_id: str) -> Order | None:
        if client_order_id != self.finished_meanwhile.client_order_id:
            cancelled = copy.copy(self.finished_meanwhile)
            cancelled.status = OrderStatus.CANCELED
            self.shadow.apply_order(cancelled)
        await trio.lowlevel.checkpoint()
        return None


async def test_an_order_its_own_event_settled_during_the_healing_is_left_alone(
    tmp_path: Path,
) -> None:
    # Bybit chaos: two resting orders gone from the exchange after a restart; while the
    # first was asked about, the stream's cancel of the second was applied, and the
    # heal of the second looked it up among the open orders: a KeyError stopped the
    # service.
    def resting(coid: str) -> Order:
        return Order(
            coid,
            "BTCUSDT",
            Side.SELL,
            OrderType.LIMIT,
            Decimal("0.1"),
            Decimal(100),
            reduce_only=True,
            status=OrderStatus.ACCEPTED,
            created_ms=now_ms() - 60_000,
            updated_ms=now_ms() - 60_000,
        )

    shadow = ShadowState(Decimal(1000))
    first, second = resting("a-first"), resting("b-second")
    shadow.orders = {first.client_order_id: first, second.client_order_id: second}
    broker = SlowStatusBroker(shadow, second)
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        reconciler = quiet_reconciler(shadow, broker, store)
        report = await reconciler.reconcile()
        assert report.errors == []
        assert first.status is OrderStatus.EXPIRED  # lost: asked for, not found
        assert second.status is OrderStatus.CANCELED  # its own event's word stands
        assert shadow.orders == {}
        assert "order b-second finished meanwhile: nothing to settle" in report.actions
        nursery.cancel_scope.cancel()
