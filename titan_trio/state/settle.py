"""Orders in flight at start: an order the database has as PENDING_SUBMIT or SUBMITTED
was journaled but its outcome never recorded (the service stopped between the journal
write and the broker's answer). Each is asked of the broker by its client order id:
found, it takes the exchange's state (through the transition table, like any event); not
found, it never reached the exchange and is EXPIRED, never sent again, so it no longer
holds exposure or blocks its symbol. The paper broker answers authoritatively; a real
exchange's "not found" right after a send is not proof, so the reconciler asks a few
times before an order in flight at run time counts as lost (SPEC §7). Every settlement
is one WARNING line containing ``Reconciliation``.
"""

from __future__ import annotations

import logging

from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.domain.orders import IN_FLIGHT, Order, OrderEventKind, OrderUpdate
from titan_trio.state import records
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store

log = logging.getLogger("titan.reconcile")


async def settle_in_flight(
    shadow: ShadowState, broker: Broker, store: Store, orders: list[Order] | None = None
) -> list[str]:
    """Settle the orders whose outcome was never recorded (``orders``, or every such
    open order of the shadow state); returns one line per order settled (each logged)."""
    settled: list[str] = []
    if orders is None:
        orders = list(shadow.orders.values())
    for order in [o for o in orders if o.status in IN_FLIGHT]:
        at_broker = await broker.order_status(order.symbol, order.client_order_id)
        settled.append(
            await settle_order(
                shadow,
                store,
                order,
                at_broker,
                "never sent: the service stopped before the exchange had it",
            )
        )
    return settled


async def settle_order(
    shadow: ShadowState, store: Store, order: Order, at_broker: Order | None, lost: str
) -> str:
    """One in-flight order takes the broker's state, or (``at_broker`` None) is EXPIRED
    for the reason ``lost``, never sent again; saved, logged, and returned as a line."""
    before = order.status
    if at_broker is None:
        order.apply(OrderUpdate(OrderEventKind.EXPIRED, now_ms(), reason=lost))
        line = (
            f"Reconciliation: order {order.client_order_id} ({order.side} {order.qty} "
            f"{order.symbol}) was {before} here and is unknown to the broker: {lost}; "
            "now EXPIRED (not sent again)"
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
    return line
