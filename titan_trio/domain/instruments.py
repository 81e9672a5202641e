"""Instruments: the exchange's filters (tick size, quantity step, minimums) and rounding."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    tick_size: Decimal
    qty_step: Decimal
    min_qty: Decimal
    min_notional: Decimal
    max_leverage: Decimal

    def floor_qty(self, qty: Decimal) -> Decimal:
        """Round a quantity down to the step (never order more than asked)."""
        return (qty / self.qty_step).to_integral_value(ROUND_FLOOR) * self.qty_step

    def floor_price(self, price: Decimal) -> Decimal:
        return (price / self.tick_size).to_integral_value(ROUND_FLOOR) * self.tick_size

    def ceil_price(self, price: Decimal) -> Decimal:
        return (price / self.tick_size).to_integral_value(ROUND_CEILING) * self.tick_size

    def stop_price(self, stop: Decimal, long: bool) -> Decimal:
        """A stop loss on the tick grid, rounded toward the position (never a wider stop):
        the price the exchange holds, and the one recorded."""
        return self.ceil_price(stop) if long else self.floor_price(stop)

    def target_price(self, target: Decimal, long: bool) -> Decimal:
        """A take profit on the tick grid, rounded toward the position (reached sooner,
        never later)."""
        return self.floor_price(target) if long else self.ceil_price(target)

    def is_on_tick(self, price: Decimal) -> bool:
        return price % self.tick_size == 0

    def is_on_step(self, qty: Decimal) -> bool:
        return qty % self.qty_step == 0

    def size_problem(self, qty: Decimal, price: Decimal) -> str | None:
        """Why ``qty`` at ``price`` is not a valid order size, or None when it is."""
        if qty < self.min_qty:
            return f"quantity {qty} is below the minimum {self.min_qty} for {self.symbol}"
        if not self.is_on_step(qty):
            return f"quantity {qty} is not a multiple of the step {self.qty_step}"
        if qty * price < self.min_notional:
            return (
                f"notional {qty * price:.2f} is below the minimum {self.min_notional} "
                f"for {self.symbol}"
            )
        return None
