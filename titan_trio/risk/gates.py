"""Entry gates on the live book and the account's exposure (SPEC §6). Pure.

Exposure counts open positions and open entry orders as if filled, so a burst of
entries cannot slip past the limits while their orders are in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ipc.protocol import Reason
from titan_trio.config import L2Config
from titan_trio.domain.orders import Side
from titan_trio.domain.quotes import Quote, walk_levels
from titan_trio.risk.sizing import EntryRejected

HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class L2Limits:
    max_age_ms: int
    max_spread_pct: Decimal
    max_slippage_pct: Decimal

    @classmethod
    def from_config(cls, cfg: L2Config) -> L2Limits:
        return cls(
            cfg.max_age_ms, Decimal(repr(cfg.max_spread_pct)), Decimal(repr(cfg.max_slippage_pct))
        )


@dataclass(frozen=True, slots=True)
class Exposure:
    """Per symbol, the side held or being entered; and the total notional."""

    sides: dict[str, Side]
    notional: Decimal


def estimated_average_price(quote: Quote, side: Side, qty: Decimal) -> Decimal:
    """The average price an order of ``qty`` would fill at, walking the book's depth level
    by level with ``walk_levels``, the walk the paper exchange fills with. What the book
    cannot absorb is assumed to fill one spread beyond its last level (a feed that sends
    only the touch gets that treatment past the touch size): the paper exchange cancels
    that part instead, so past the visible depth this estimate is the more pessimistic."""
    buying = side is Side.BUY
    levels = quote.levels(buying)
    takes, left = walk_levels(levels, qty, buying=buying)
    cost = sum((take.qty * take.price for take in takes), Decimal(0))
    if left > 0:
        spread = quote.ask - quote.bid
        last_price = levels[-1][0]
        cost += left * (last_price + spread if buying else last_price - spread)
    return cost / qty if qty > 0 else levels[0][0]


def estimated_slippage_pct(quote: Quote, side: Side, qty: Decimal) -> Decimal:
    """Expected average fill price against the mid, in percent, for ``qty``
    (``estimated_average_price``)."""
    mid = quote.mid
    return abs(estimated_average_price(quote, side, qty) - mid) / mid * HUNDRED


def check_book(
    quote: Quote | None, age_ms: int | None, side: Side, qty: Decimal, limits: L2Limits
) -> None:
    """L2_STALE, SPREAD_TOO_WIDE or SLIPPAGE_TOO_HIGH, or nothing. ``age_ms`` is how long
    ago the quote arrived, on a monotonic clock (MarketHub.age_ms)."""
    if quote is None or age_ms is None:
        raise EntryRejected(Reason.L2_STALE, "no price for this symbol yet")
    age = age_ms
    if age > limits.max_age_ms:
        raise EntryRejected(Reason.L2_STALE, f"book is {age} ms old (limit {limits.max_age_ms} ms)")
    spread = quote.spread_pct
    if spread > limits.max_spread_pct:
        raise EntryRejected(
            Reason.SPREAD_TOO_WIDE, f"spread {spread:.4f}% exceeds {limits.max_spread_pct}%"
        )
    slippage = estimated_slippage_pct(quote, side, qty)
    if slippage > limits.max_slippage_pct:
        raise EntryRejected(
            Reason.SLIPPAGE_TOO_HIGH,
            f"estimated slippage {slippage:.4f}% for {qty} exceeds {limits.max_slippage_pct}%",
        )


def check_positions(
    symbol: str, side: Side, exposure: Exposure, max_positions: int, allow_pyramiding: bool
) -> None:
    """MAX_POSITIONS, or a refusal to enter against (or onto) an existing position."""
    held = exposure.sides.get(symbol)
    if held is not None:
        if held is not side:
            raise EntryRejected(
                Reason.INVALID_SIGNAL,
                f"{symbol} is held or being entered {_direction(held)}; CLOSE it first",
            )
        if not allow_pyramiding:
            raise EntryRejected(
                Reason.MAX_POSITIONS,
                f"{symbol} is already held or being entered {_direction(held)} and "
                "risk.allowPyramiding is off",
            )
        return
    if len(exposure.sides) >= max_positions:
        raise EntryRejected(
            Reason.MAX_POSITIONS,
            f"{len(exposure.sides)} positions open or being entered (limit {max_positions})",
        )


def _direction(side: Side) -> str:
    return "LONG" if side is Side.BUY else "SHORT"
