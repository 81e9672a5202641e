"""EntryChecks on their own: what PREPARE and CONFIRM may do on a given book, equity and
exposure (the router around them is tested through the socket in tests/integration)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import msgspec
import pytest

from ipc.protocol import EntryZone, Prepare, Reason
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.orders import Side, TimeInForce
from titan_trio.domain.quotes import Quote
from titan_trio.engine import instruments_from_config
from titan_trio.execution.entry import EntryChecks, PreparedIntent
from titan_trio.feeds.hub import MarketHub
from titan_trio.risk.breaker import OrderPurpose
from titan_trio.risk.sizing import EntryRejected, Size
from titan_trio.state.shadow import ShadowState

D = Decimal


class Risk:
    """The one question EntryChecks asks the risk controller: may an order of this
    purpose go now?"""

    def __init__(self) -> None:
        self.refusal: str | None = None

    def gate(self, purpose: OrderPurpose) -> str | None:
        return self.refusal


def quote(bid: str, ask: str) -> Quote:
    levels = tuple((D(bid) - k, D("5")) for k in range(5))
    asks = tuple((D(ask) + k, D("5")) for k in range(5))
    return Quote(
        symbol="BTCUSDT",
        bid=D(bid),
        ask=D(ask),
        bid_size=D("5"),
        ask_size=D("5"),
        last=D(bid),
        ts_ms=now_ms(),
        source="test",
        bid_levels=levels,
        ask_levels=asks,
    )


def prepare(zone: tuple[float, float], stop: float, leverage: float = 5) -> PreparedIntent:
    msg = Prepare(
        id=1,
        signal_id="sig-1",
        source="test",
        symbol="BTCUSDT",
        direction="LONG",
        entry_zone=EntryZone(min=zone[0], max=zone[1]),
        stop_loss=stop,
        take_profits=[],
        confidence=70,
        leverage=leverage,
    )
    return PreparedIntent(msg, Side.BUY, now_ms() + 10_000)


def prepared(entries: EntryChecks) -> tuple[PreparedIntent, Size]:
    """A PREPARE on the fixture's book that passes: its intent and size."""
    intent = prepare((94900, 95100), 94001)
    entries.evaluate(intent)
    assert intent.rejection is None and intent.size is not None
    return intent, intent.size


@pytest.fixture
def checks(make_config: Callable[..., Config]) -> tuple[EntryChecks, MarketHub, Risk]:
    cfg = make_config()
    hub = MarketHub()
    hub.publish(quote("95000", "95001"))
    risk = Risk()
    entries = EntryChecks(
        cfg,
        instruments_from_config(cfg),
        hub,
        ShadowState(D("10000")),
        lambda: D("10000"),
        risk.gate,
    )
    return entries, hub, risk


def test_prepare_sizes_from_risk_and_stop_distance(
    checks: tuple[EntryChecks, MarketHub, Risk],
) -> None:
    entries, _hub, _risk = checks
    intent, size = prepared(entries)
    assert intent.entry_price == D("95001")  # the ask, inside the zone
    assert intent.rules is not None
    # risk amount / stop distance, capped by leverage and rounded down to the qty step
    risk_usd = D("10000") * intent.rules.risk_pct / 100
    assert size.qty <= risk_usd / D("1000")
    assert size.qty * D("95001") <= D("10000") * D("5")


def test_prepare_is_refused_while_entries_are_halted(
    checks: tuple[EntryChecks, MarketHub, Risk],
) -> None:
    entries, _hub, risk = checks
    risk.refusal = "trading is paused"
    intent = prepare((94900, 95100), 94001)
    entries.evaluate(intent)
    assert intent.rejection == (Reason.TRADING_HALTED, "trading is paused")
    assert intent.size is None


def stamped(timestamp: int | None, received: int) -> PreparedIntent:
    """A PREPARE made at ``timestamp`` that arrived at ``received`` (both ms)."""
    intent = prepare((94900, 95100), 94001)
    message = msgspec.structs.replace(intent.message, timestamp=timestamp)
    return PreparedIntent(message, Side.BUY, received + 10_000, received_ms=received)


ARRIVED = 1_795_524_901_000  # 2026-11-24T12:55:01.000Z


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (0, ("1970-01-01T00:00:00.000Z", "2026-11-24T12:55:01.000Z", "5000 ms")),
        (ARRIVED - 5001, ("2026-11-24T12:54:55.999Z", "5001 ms later")),
        (ARRIVED + 1001, ("2026-11-24T12:55:02.001Z", "1001 ms ahead", "1000 ms")),
        (10**20, ("100000000000000000000 ms since the epoch", "ahead")),
    ],
)
def test_prepare_made_too_long_ago_or_in_the_future_is_expired(
    checks: tuple[EntryChecks, MarketHub, Risk], made: int, expected: tuple[str, ...]
) -> None:
    entries, _hub, _risk = checks
    intent = stamped(made, ARRIVED)
    entries.evaluate(intent)
    assert intent.rejection is not None and intent.size is None
    reason, text = intent.rejection
    assert reason is Reason.EXPIRED
    for part in expected:
        assert part in text, text
    assert "2026-11-24T12:55:01.000Z" in text  # the service's time, always


@pytest.mark.parametrize("made", [ARRIVED - 5000, ARRIVED, ARRIVED + 1000, None])
def test_prepare_within_the_age_and_the_skew_passes(
    checks: tuple[EntryChecks, MarketHub, Risk], made: int | None
) -> None:
    entries, _hub, _risk = checks
    intent = stamped(made, ARRIVED)
    entries.evaluate(intent)
    assert intent.rejection is None and intent.size is not None


def test_halted_trading_is_said_before_a_stale_signal(
    checks: tuple[EntryChecks, MarketHub, Risk],
) -> None:
    entries, _hub, risk = checks
    risk.refusal = "trading is paused"
    intent = stamped(0, ARRIVED)
    entries.evaluate(intent)
    assert intent.rejection == (Reason.TRADING_HALTED, "trading is paused")


def test_confirm_refuses_a_book_that_left_the_zone(
    checks: tuple[EntryChecks, MarketHub, Risk],
) -> None:
    entries, hub, _risk = checks
    intent, size = prepared(entries)
    hub.publish(quote("95300", "95301"))  # the market ran away before CONFIRM
    with pytest.raises(EntryRejected) as refused:
        entries.entry_order(intent, size, now_ms())
    assert refused.value.reason is Reason.SLIPPAGE_TOO_HIGH


def test_confirm_builds_the_order_and_its_exposure_counts(
    checks: tuple[EntryChecks, MarketHub, Risk],
) -> None:
    entries, _hub, _risk = checks
    intent, size = prepared(entries)
    order, plan = entries.entry_order(intent, size, now_ms())
    assert order.client_order_id.startswith("tte") and order.signal_id == "sig-1"
    assert order.qty == size.qty and order.stop_loss == D("94001")
    assert order.time_in_force in (TimeInForce.POST_ONLY, TimeInForce.GTC)
    assert plan.side is Side.BUY
    assert entries.exposure().notional == 0
    entries.shadow.track(order)  # what the router does right after, with no await
    exposure = entries.exposure()
    assert exposure.sides == {"BTCUSDT": Side.BUY}
    assert exposure.notional == order.qty * order.price
