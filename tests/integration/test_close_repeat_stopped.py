"""A repeated CLOSE stopped (the service stopping) while its journal write waits: the
exit order the first CLOSE placed keeps its row (FILLED), so later repeats still tell the
truth about it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from ipc.protocol import Close
from tests.helpers import eventually, service
from tests.integration.test_risk import open_long, signal
from titan_trio.config import Config
from titan_trio.state import records


async def test_a_repeated_close_stopped_mid_journal_leaves_the_first_order_alone(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine:
        await open_long(engine, "rr-1")
        held = [p for p in await engine.broker.positions() if not p.is_flat]
        close = {"type": "CLOSE", "id": 1, "signal_id": "rr-x", "symbol": "BTCUSDT"}
        closed = await signal(engine, close)
        assert closed.status == "closed" and closed.order_status == "FILLED", closed
        await eventually(lambda: "BTCUSDT" not in engine.shadow.positions)
        with trio.fail_after(5):  # its row is saved FILLED (a moment after the reply)
            while True:
                before = await engine.store.call(records.signal_order, "rr-x")
                if before is not None and before.status.value == "FILLED":
                    break
                await trio.sleep(0.01)

        # the exchange's position view lags (as a real one can): it still shows the position
        async def stale_positions() -> Any:
            return held

        engine.broker.positions = stale_positions  # type: ignore[method-assign]

        def slow(e: Any) -> None:  # the store thread is busy for a moment
            time.sleep(0.3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.store.call, slow)
            await trio.sleep(0.01)
            job = engine.router.admit(Close(id=2, signal_id="rr-x", symbol="BTCUSDT"))
            with trio.move_on_after(0.1):  # the service stops while the repeat waits
                await job()
        # the stopped repeat's own save was awaited inside it; a read queued behind it on
        # the store thread sees whatever it wrote
        await engine.store.call(records.kv_get, "barrier")
        after = await engine.store.call(records.signal_order, "rr-x")
        assert after is not None
        assert (after.status.value, after.filled_qty) == ("FILLED", before.filled_qty), after
