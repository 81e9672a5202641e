"""The differences between the shadow state and the broker's account, as a pure
function over two snapshots; each one a line containing ``Reconciliation`` with both
sides (operators grep for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from titan_trio.domain.orders import Fill, Order
from titan_trio.domain.positions import Position


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the shadow state and the broker disagree."""

    kind: str  # fill_only_at_broker, position_only_at_broker, position_only_here,
    # position_size, order_only_at_broker, order_only_here, balance
    key: str  # the execution id, the symbol, the client order id, or "balance"
    here: str
    broker: str

    def line(self) -> str:
        return f"Reconciliation: {self.kind} {self.key}: here {self.here}, broker {self.broker}"


def missed_fill(fill: Fill) -> Difference:
    return Difference(
        "fill_only_at_broker",
        fill.exec_id,
        "none",
        f"{fill.side} {fill.qty} {fill.symbol} @ {fill.price} fee {fill.fee} "
        f"(order {fill.client_order_id})",
    )


def pos_text(p: Position | None) -> str:
    return "none" if p is None or p.is_flat else f"{p.size} @ {p.entry_price}"


def diff(
    here_positions: dict[str, Position],
    broker_positions: dict[str, Position],
    here_orders: dict[str, Order],
    broker_orders: dict[str, Order],
    here_balance: Decimal,
    broker_balance: Decimal,
) -> list[Difference]:
    """Every difference between two snapshots of the account (pure)."""
    out: list[Difference] = []
    for symbol in sorted(set(here_positions) | set(broker_positions)):
        ours, theirs = here_positions.get(symbol), broker_positions.get(symbol)
        ours = None if ours is None or ours.is_flat else ours
        theirs = None if theirs is None or theirs.is_flat else theirs
        if ours is None and theirs is None:
            continue
        if ours is None:
            out.append(Difference("position_only_at_broker", symbol, "none", pos_text(theirs)))
        elif theirs is None:
            out.append(Difference("position_only_here", symbol, pos_text(ours), "none"))
        elif ours.size != theirs.size:
            out.append(Difference("position_size", symbol, pos_text(ours), pos_text(theirs)))
    for coid in sorted(set(here_orders) | set(broker_orders)):
        ours_o, theirs_o = here_orders.get(coid), broker_orders.get(coid)
        if ours_o is None and theirs_o is not None:
            out.append(Difference("order_only_at_broker", coid, "none", theirs_o.status.value))
        elif theirs_o is None and ours_o is not None:
            out.append(Difference("order_only_here", coid, ours_o.status.value, "not open"))
    if here_balance != broker_balance:
        out.append(Difference("balance", "balance", str(here_balance), str(broker_balance)))
    return out
