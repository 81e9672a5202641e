"""The ops API's answers as typed structs, and its routes as one table.

Every handler returns one of these structs; ``/api/openapi.json`` is generated from the
same structs and the same route table (``ROUTES``), so the description cannot drift from
what the service answers. Numbers that are amounts are Decimals, encoded as exact JSON
numbers; moments are ISO 8601 UTC strings in fields named ``*_at``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import msgspec

Side = Literal["LONG", "SHORT"]
OrderSide = Literal["BUY", "SELL"]
TradingStateName = Literal["ACTIVE", "REDUCING", "HALTED"]


class _Answer(msgspec.Struct, kw_only=True):
    pass


class Error(_Answer):
    error: str
    message: str


class Health(_Answer):
    """Each component is an object with its ``status`` and its details (SPEC §8)."""

    status: Literal["healthy", "degraded", "unhealthy", "starting"]
    websocket: dict[str, Any]
    database: dict[str, Any]
    ipc: dict[str, Any]
    broker: dict[str, Any]
    reconciliation: dict[str, Any] | None
    uptime_s: float
    version: str


class Breaker(_Answer):
    tripped: bool
    cause: str | None
    message: str | None
    tripped_at: str | None
    consecutive_losses: int


class Equity(_Answer):
    equity: Decimal
    balance: Decimal
    unrealized_pnl: Decimal
    realized_pnl_today: Decimal
    peak_equity: Decimal
    drawdown_pct: float
    initial_capital: Decimal
    phase: int
    trading_state: TradingStateName
    breaker: Breaker
    currency: str


class Position(_Answer):
    symbol: str
    side: Side
    size: Decimal
    entry_price: Decimal
    mark_price: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    fees: Decimal
    leverage: Decimal
    stop_loss: Decimal | None
    take_profits: list[Decimal]
    opened_at: str | None
    signal_id: str | None
    trap_type: str | None


class OpenOrder(_Answer):
    client_order_id: str
    exchange_order_id: str | None
    symbol: str
    side: OrderSide
    type: Literal["LIMIT", "MARKET"]
    time_in_force: str
    qty: Decimal
    price: Decimal | None
    filled_qty: Decimal
    avg_fill_price: Decimal | None
    reduce_only: bool
    status: str
    signal_id: str | None
    created_at: str | None
    updated_at: str | None


class SourceQuote(_Answer):
    bid: Decimal
    ask: Decimal
    bid_size: Decimal
    ask_size: Decimal
    last: Decimal
    spread_pct: Decimal
    age_ms: int | None


class MarketQuote(_Answer):
    """The venue's quote (what the gates and marks use; null before it quoted) and every
    feed's under ``sources``."""

    bid: Decimal | None
    ask: Decimal | None
    bid_size: Decimal | None
    ask_size: Decimal | None
    last: Decimal | None
    spread_pct: Decimal | None
    age_ms: int | None
    source: str
    sources: dict[str, SourceQuote]


class Trade(_Answer):
    id: int
    symbol: str
    side: Side
    qty: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pnl: Decimal
    fees: Decimal
    net_pnl: Decimal
    opened_at: str | None
    closed_at: str | None
    signal_id: str | None
    close_reason: str | None


class RiskBreaker(Breaker):
    figures: dict[str, Any] | None  # numbers where they are numbers, else text


class RiskHistory(_Answer):
    action: str
    by: str
    at: str | None


class Risk(_Answer):
    trading_state: TradingStateName
    breaker: RiskBreaker
    phase: int
    effective_risk_pct: float
    phase_max_leverage: float
    execution_style: str
    equity: Decimal
    peak_equity: Decimal
    drawdown_pct: float
    day_start_equity: Decimal
    daily_pnl: Decimal
    open_positions: int
    total_notional: Decimal
    total_leverage: Decimal | None
    limits: dict[str, Any]
    history: list[RiskHistory]


class TradingStateAnswer(_Answer):
    trading_state: TradingStateName


class BreakerReset(_Answer):
    reset: bool
    message: str
    trading_state: TradingStateName


class ClosedPosition(_Answer):
    """One position flatten closed: the reduce-only market order sent, and how it went."""

    symbol: str
    side: OrderSide  # the closing order's side
    qty: Decimal
    client_order_id: str
    status: str
    filled_qty: Decimal


class Flattened(_Answer):
    cancelled_orders: list[str]
    closed_positions: list[ClosedPosition]
    errors: list[str]
    trading_state: TradingStateName
    message: str


class Reconciled(_Answer):
    differences: list[str]
    actions: list[str]
    errors: list[str]
    message: str


# ----- the route table --------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Route:
    method: Literal["GET", "POST"]
    path: str
    summary: str
    answer: Any  # the struct (or list of it) of the 200 answer; None: not JSON
    mutating: bool = False  # needs the bearer token when api.token is set
    params: tuple[Param, ...] = ()
    other: dict[int, tuple[str, Any]] = field(default_factory=dict)  # status -> why, type


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/api/health",
        "Health of the service and its components",
        Health,
        other={503: ("unhealthy, or starting (the first reconciliation has not finished)", Health)},
    ),
    Route(
        "GET",
        "/api/state/equity",
        "Equity, balance, P&L, peak, drawdown, phase, trading state",
        Equity,
    ),
    Route("GET", "/api/state/positions", "Open positions", list[Position]),
    Route("GET", "/api/state/orders", "Open orders", list[OpenOrder]),
    Route(
        "GET",
        "/api/market",
        "The price book: the venue's bid, ask, last, age and source per symbol, and every "
        "feed's quote under sources",
        dict[str, MarketQuote],
    ),
    Route(
        "GET",
        "/api/trades",
        "Closed trades, newest first",
        list[Trade],
        params=(
            Param(
                "date",
                {"type": "string", "format": "date"},
                "UTC day the trade closed, YYYY-MM-DD",
            ),
            Param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                "ASCII digits",
            ),
            Param("symbol", {"type": "string"}, "one of the configured symbols"),
        ),
    ),
    Route(
        "GET",
        "/api/risk",
        "Limits, phase, trading state, breaker state and why it tripped",
        Risk,
    ),
    Route(
        "POST",
        "/api/trading/pause",
        "Stop new entries (REDUCING: exits still pass)",
        TradingStateAnswer,
        mutating=True,
    ),
    Route(
        "POST",
        "/api/trading/resume",
        "Allow new entries again (ACTIVE)",
        TradingStateAnswer,
        mutating=True,
        other={409: ("The circuit breaker is tripped: reset it first", Error)},
    ),
    Route(
        "POST",
        "/api/risk/breaker/reset",
        "Clear a tripped circuit breaker (operator only); peak equity and the day's "
        "starting equity become the current equity, the losing streak 0",
        BreakerReset,
        mutating=True,
        params=(
            Param(
                "trading_state",
                {"type": "string", "enum": ["ACTIVE", "REDUCING"]},
                "the state after the reset (default ACTIVE)",
            ),
        ),
    ),
    Route(
        "POST",
        "/api/state/reconcile",
        "Compare the account with the broker now and heal the differences",
        Reconciled,
        mutating=True,
    ),
    Route(
        "POST",
        "/api/emergency/flatten-all",
        "Cancel every open order, close every position at market, HALT trading",
        Flattened,
        mutating=True,
    ),
    Route("GET", "/api/openapi.json", "This document", dict[str, Any]),
    Route("GET", "/metrics", "Prometheus text exposition", None),
)

MUTATING = frozenset(r.path for r in ROUTES if r.mutating)
