"""A strategy retrying a CLOSE (same signal id) while its first CLOSE is still working
(cancelling a resting entry): the retry is told DUPLICATE_SIGNAL "being closed right now"
and touches nothing; the first places its exit once and answers cleanly."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import trio

from ipc.protocol import Close, Reply
from tests.helpers import eventually, service
from tests.integration.test_risk import open_long
from titan_trio.config import Config
from titan_trio.domain.orders import Order, OrderStatus, OrderType, Side


async def test_a_close_retried_while_the_first_is_cancelling_entries_places_once_cleanly(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine:
        await open_long(engine, "cc-1")
        router, shadow = engine.router, engine.shadow
        placer = router.placer
        # a resting entry of the symbol: the first CLOSE takes the slow path to cancel it
        fake = Order(
            "tte-resting",
            "BTCUSDT",
            Side.BUY,
            OrderType.LIMIT,
            Decimal("0.01"),
            price=Decimal(1),
            status=OrderStatus.ACCEPTED,
            leverage=Decimal(5),
        )
        shadow.orders[fake.client_order_id] = fake
        cancel = placer.cancel
        retry_may_go = trio.Event()

        async def slow_cancel(symbol: str, coid: str) -> Any:
            if coid == fake.client_order_id:
                shadow.orders.pop(coid, None)  # the exchange cancelled it
                retry_may_go.set()
                await trio.sleep(0.05)  # its answer takes a moment
                return fake
            return await cancel(symbol, coid)

        placer.cancel = slow_cancel  # type: ignore[method-assign]

        def busy(e: Any) -> None:  # the store thread has background writes in hand
            time.sleep(0.3)

        replies: dict[str, Reply | BaseException] = {}

        async def run(name: str, job: Any) -> None:
            try:
                replies[name] = await job()
            except BaseException as exc:
                replies[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                run, "first", router.admit(Close(id=1, signal_id="cx", symbol="BTCUSDT"))
            )
            await retry_may_go.wait()
            nursery.start_soon(engine.store.call, busy)
            await trio.sleep(0.01)
            nursery.start_soon(
                run, "retry", router.admit(Close(id=2, signal_id="cx", symbol="BTCUSDT"))
            )
        first = replies["first"]
        assert isinstance(first, Reply) and first.status == "closed", first
        retry = replies["retry"]
        assert isinstance(retry, Reply) and retry.reason == "DUPLICATE_SIGNAL", retry
        # the position is closed once, everywhere, and nothing is left in flight
        await eventually(lambda: "BTCUSDT" not in shadow.positions and not placer.sending)
        assert not [p for p in await engine.broker.positions() if not p.is_flat]
