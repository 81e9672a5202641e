"""What an operator action did, as plain data for the API, the CLI and the logs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FlattenReport:
    """An emergency flatten: the orders it cancelled, the closes it placed, and every
    error it carried on past (a flatten never stops half-way on one failure)."""

    cancelled_orders: list[str] = field(default_factory=list)
    closed_positions: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.cancelled_orders or self.closed_positions or self.errors)
