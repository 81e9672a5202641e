"""Reconciliation with the broker: where the shadow state and the exchange disagree, the
exchange is the truth, and every difference is one WARNING line containing
``Reconciliation`` with both sides (operators grep for it).

Orders in flight at start (``settle_in_flight``): An order the database has as PENDING_SUBMIT or
SUBMITTED was journaled but its outcome never recorded (the service stopped between the
journal write and the broker's answer). Each is asked of the broker by its client order
id: found, it takes the exchange's state (through the transition table, like any event);
not found, it never reached the exchange and is EXPIRED, never sent again, so it no
longer holds exposure or blocks its symbol. The paper broker answers authoritatively;
a real exchange's "not found" right after a send is not proof, so its connector will ask
a few times before an order counts as lost (SPEC §7).

The account compared (``Reconciler``, at start, every ``reconcile.intervalS``, on
demand): positions the broker has and we lack are adopted, those we have and it lacks
are closed out, sizes and the balance are taken from it, open orders it has and we lack
are adopted, ours it no longer has are asked for by id and settled. Positions are taken
whole (size and entry), not rebuilt fill by fill: the fills missed while the service was
down are not fetched yet (the paper broker keeps no fill history), so a trade closed
while we were away is not in the trade list.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import trio

from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.domain.orders import IN_FLIGHT, Order, OrderEventKind, OrderUpdate
from titan_trio.domain.positions import Position
from titan_trio.errors import TitanError
from titan_trio.state import records
from titan_trio.state.shadow import PositionRecord, ShadowState
from titan_trio.state.store import Store

log = logging.getLogger("titan.reconcile")

QUIET_WAIT_S = 5.0  # how long a run waits for the shadow state to apply the broker's events


async def settle_in_flight(
    shadow: ShadowState, broker: Broker, store: Store, orders: list[Order] | None = None
) -> list[str]:
    """Settle the orders whose outcome was never recorded (``orders``, or every such
    open order of the shadow state); returns one line per order settled (each logged)."""
    settled: list[str] = []
    if orders is None:
        orders = list(shadow.orders.values())
    for order in [o for o in orders if o.status in IN_FLIGHT]:
        before = order.status
        at_broker = await broker.order_status(order.symbol, order.client_order_id)
        if at_broker is None:
            order.apply(
                OrderUpdate(
                    OrderEventKind.EXPIRED,
                    now_ms(),
                    reason="never sent: the service stopped before the exchange had it",
                )
            )
            line = (
                f"Reconciliation: order {order.client_order_id} ({order.side} {order.qty} "
                f"{order.symbol}) was {before} here and is unknown to the broker: never "
                "sent, now EXPIRED (not sent again)"
            )
        else:
            merged = shadow.apply_order(at_broker)
            order = merged  # the shadow's own object from here on
            line = (
                f"Reconciliation: order {order.client_order_id} ({order.side} {order.qty} "
                f"{order.symbol}) was {before} here and is {at_broker.status} at the broker "
                f"(filled {at_broker.filled_qty}): taken as {merged.status}"
            )
        if order.client_order_id in shadow.orders:
            shadow.apply_order(order)  # a finished one leaves the open set
        await store.call(records.save_order, order)
        log.warning("%s", line)
        settled.append(line)
    return settled


# ----- the account compared: a pure diff, then the healing --------------------------------


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the shadow state and the broker disagree."""

    kind: str  # position_only_at_broker, position_only_here, position_size,
    # order_only_at_broker, order_only_here, balance
    key: str  # the symbol, the client order id, or "balance"
    here: str
    broker: str

    def line(self) -> str:
        return f"Reconciliation: {self.kind} {self.key}: here {self.here}, broker {self.broker}"


def _pos(p: Position | None) -> str:
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
            out.append(Difference("position_only_at_broker", symbol, "none", _pos(theirs)))
        elif theirs is None:
            out.append(Difference("position_only_here", symbol, _pos(ours), "none"))
        elif ours.size != theirs.size:
            out.append(Difference("position_size", symbol, _pos(ours), _pos(theirs)))
    for coid in sorted(set(here_orders) | set(broker_orders)):
        ours_o, theirs_o = here_orders.get(coid), broker_orders.get(coid)
        if ours_o is None and theirs_o is not None:
            out.append(Difference("order_only_at_broker", coid, "none", theirs_o.status.value))
        elif theirs_o is None and ours_o is not None:
            out.append(Difference("order_only_here", coid, ours_o.status.value, "not open"))
    if here_balance != broker_balance:
        out.append(Difference("balance", "balance", str(here_balance), str(broker_balance)))
    return out


@dataclass
class ReconcileReport:
    started_ms: int
    differences: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Reconciler:
    """Compares the broker's account with the shadow state and makes the shadow state
    the broker's: positions adopted or closed out, orders adopted or settled, balance
    taken. It waits, bounded, until the shadow applied every event the broker had sent
    when it took its snapshot, and compares nothing that is being sent right now, so a
    fill on its way is never counted twice. Runs at start (before any signal is taken),
    every ``reconcile.intervalS`` and on demand."""

    def __init__(
        self,
        shadow: ShadowState,
        broker: Broker,
        store: Store,
        events_applied: Callable[[], int],
        sending: set[str],
        interval_s: float,
        *,
        mark: Callable[[str], Decimal | None] = lambda symbol: None,
        adopted_stop_pct: Decimal = Decimal(2),
        protect: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.shadow = shadow
        self.broker = broker
        self.store = store
        self.events_applied = events_applied
        self.sending = sending
        self.interval_s = interval_s
        self.mark = mark
        self.adopted_stop_pct = adopted_stop_pct
        self.protect = protect  # after positions changed: stops and targets in place
        self.last: ReconcileReport | None = None
        self.last_monotonic: float | None = None
        self.runs: dict[str, int] = {"clean": 0, "healed": 0, "error": 0}
        self._lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.reconcile()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.reconcile()

    async def reconcile(self) -> ReconcileReport:
        async with self._lock:
            report = ReconcileReport(now_ms())
            try:
                await self._reconcile(report)
            except TitanError as exc:
                report.errors.append(str(exc))
                log.error("Reconciliation failed: %s", exc)
            result = "error" if report.errors else ("healed" if report.differences else "clean")
            self.runs[result] += 1
            self.last = report
            self.last_monotonic = trio.current_time()
            return report

    async def _reconcile(self, report: ReconcileReport) -> None:
        account = await self.broker.account()
        with trio.move_on_after(QUIET_WAIT_S) as waiting:
            while self.events_applied() < account.events_sent:  # noqa: ASYNC110
                await trio.sleep(0.005)
        if waiting.cancelled_caught:
            report.errors.append("the shadow state did not catch up with the broker in time")
            return
        shadow = self.shadow
        broker_orders = {
            o.client_order_id: o
            for o in account.open_orders
            if o.client_order_id not in self.sending
        }
        here_orders = {
            c: o
            for c, o in shadow.orders.items()
            if c not in self.sending and o.status not in IN_FLIGHT
        }
        differences = diff(
            {s: r.position for s, r in shadow.positions.items()},
            {p.symbol: p for p in account.positions},
            here_orders,
            broker_orders,
            shadow.balance,
            account.balance,
        )
        broker_positions = {p.symbol: p for p in account.positions}
        for d in differences:
            log.warning("%s", d.line())
            report.differences.append(d.line())
            await self._heal(d, broker_positions, broker_orders, account.balance, report)
        positions_changed = any(d.kind.startswith("position") for d in differences)
        if self.protect is not None and (positions_changed or self.last is None):
            await self.protect()  # at start every time: a stop may be missing anyway

    async def _heal(
        self,
        d: Difference,
        broker_positions: dict[str, Position],
        broker_orders: dict[str, Order],
        balance: Decimal,
        report: ReconcileReport,
    ) -> None:
        shadow = self.shadow
        if d.kind in ("position_only_at_broker", "position_size"):
            theirs = copy.copy(broker_positions[d.key])
            rec = shadow.positions.get(d.key) or PositionRecord(theirs)
            rec.position = theirs
            if rec.stop_loss is None and theirs.side is not None:
                base = self.mark(d.key) or theirs.entry_price
                away = base * self.adopted_stop_pct / 100
                rec.stop_loss = base - away if theirs.side.sign > 0 else base + away
                report.actions.append(
                    f"position {d.key} had no stop known: stop loss {rec.stop_loss:.8g} "
                    f"({self.adopted_stop_pct} % from {base})"
                )
            shadow.positions[d.key] = rec
            await self.store.call(records.set_position, d.key, rec)
            report.actions.append(f"position {d.key} taken as the broker's ({_pos(theirs)})")
        elif d.kind == "position_only_here":
            del shadow.positions[d.key]
            await self.store.call(records.set_position, d.key, None)
            report.actions.append(f"position {d.key} closed out (the broker holds none)")
        elif d.kind == "order_only_at_broker":
            adopted = shadow.apply_order(broker_orders[d.key])
            await self.store.call(records.save_order, adopted)
            report.actions.append(f"order {d.key} adopted ({adopted.status.value})")
        elif d.kind == "order_only_here":
            ours = shadow.orders[d.key]
            at_broker = await self.broker.order_status(ours.symbol, d.key)
            if at_broker is None:
                ours.apply(OrderUpdate(OrderEventKind.EXPIRED, now_ms(), reason="lost"))
            else:
                ours.apply(OrderUpdate.from_snapshot(at_broker))
            shadow.apply_order(ours)
            await self.store.call(records.save_order, ours)
            report.actions.append(f"order {d.key} settled as {ours.status.value}")
        elif d.kind == "balance":
            shadow.balance = balance
            await self.store.call(records.kv_set, "shadow.balance", str(balance), now_ms())
            report.actions.append(f"balance taken as the broker's ({balance})")

    def view(self) -> dict[str, Any]:
        last = self.last
        age = None if self.last_monotonic is None else trio.current_time() - self.last_monotonic
        return {
            "last_run_ms": None if last is None else last.started_ms,
            "age_s": None if age is None else round(age, 3),
            "differences": [] if last is None else last.differences,
            "actions": [] if last is None else last.actions,
            "errors": [] if last is None else last.errors,
            "runs": dict(self.runs),
        }
