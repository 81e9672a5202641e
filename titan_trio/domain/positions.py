"""Positions on linear (USDT-margined) perpetuals: average entry, realized and unrealized
P&L, fees. Signed size: positive long, negative short."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Side

ZERO = Decimal(0)


@dataclass(slots=True)
class FillEffect:
    """What one fill did to a position."""

    realized_pnl: Decimal  # gross P&L of the part that closed (fees not included)
    closed_qty: Decimal
    opened_qty: Decimal
    closed_entry_price: Decimal | None  # the average entry of the part that closed


@dataclass(slots=True)
class Position:
    symbol: str
    size: Decimal = ZERO  # signed
    entry_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO  # gross, since the position opened
    fees: Decimal = ZERO
    opened_ms: int = 0
    leverage: Decimal = Decimal(1)

    @property
    def side(self) -> Side | None:
        if self.size > 0:
            return Side.BUY
        if self.size < 0:
            return Side.SELL
        return None

    @property
    def is_flat(self) -> bool:
        return self.size == 0

    @property
    def abs_size(self) -> Decimal:
        return abs(self.size)

    def notional(self, mark: Decimal) -> Decimal:
        return abs(self.size) * mark

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        return (mark - self.entry_price) * self.size

    def apply_fill(
        self, side: Side, qty: Decimal, price: Decimal, fee: Decimal = ZERO, now_ms: int = 0
    ) -> FillEffect:
        """Apply a fill; a fill larger than the position closes it and opens the rest the
        other way."""
        if qty <= 0:
            raise ValueError(f"fill quantity must be positive, got {qty}")
        signed = qty * side.sign
        self.fees += fee
        if self.size == 0 or (self.size > 0) == (signed > 0):
            # Opening or adding: weighted average entry.
            if self.size == 0:
                self.opened_ms = now_ms
            new_size = self.size + signed
            self.entry_price = (self.entry_price * abs(self.size) + price * qty) / abs(new_size)
            self.size = new_size
            return FillEffect(ZERO, ZERO, qty, None)
        closing = min(qty, abs(self.size))
        entry = self.entry_price
        pnl = (price - entry) * closing * (1 if self.size > 0 else -1)
        self.realized_pnl += pnl
        opened = qty - closing
        self.size += signed
        if self.size == 0:
            self.entry_price = ZERO
        elif opened > 0:  # flipped: the remainder opens at this fill's price
            self.entry_price = price
            self.opened_ms = now_ms
        return FillEffect(pnl, closing, opened, entry)


def adopted_stop(
    long: bool, base: Decimal, pct: Decimal, instrument: Instrument | None = None
) -> Decimal:
    """The stop a position with none known gets: ``pct`` percent from ``base`` (the
    market, else its entry), on the losing side, on the instrument's tick grid."""
    away = base * pct / 100
    stop = base - away if long else base + away
    return stop if instrument is None else instrument.stop_price(stop, long)
