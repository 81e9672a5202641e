"""Reconciliation with the broker: where the shadow state and the exchange disagree, the
exchange is the truth, and every difference is one WARNING line containing
``Reconciliation`` with both sides (operators grep for it).

Orders in flight at start are settled before this runs (``state.settle``); the
differences themselves are a pure function (``state.drift``).

The account compared (``Reconciler``, at start, every ``reconcile.intervalS``, on
demand): first the fills the broker made since the last run that the shadow state never
applied (the service was killed between the exchange's commit and its own, or a stream
lost them) are replayed once, through the same path as live fills, so positions, the
balance and the trade list are rebuilt from what really happened. Then what still
differs: positions the broker has and we lack are adopted (``reconcile.adoptUnknown``,
default true: taken over with a stop ``reconcile.adoptedStopPct`` from the market) or,
when the operator set it false, closed at market; those we have and it lacks are closed
out, sizes and the balance are taken from it, open orders it has and we lack are
adopted, ours it no longer has are asked for by id and settled.

Adopting is the default because the likeliest cause of an unknown position is our own
lost record (a database restored from an older backup), and closing it at market would
turn a bookkeeping gap into a realised loss; an operator who trades the same account by
hand can choose either way.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import trio

from titan_trio.brokers.base import AccountSnapshot, Broker
from titan_trio.clock import iso_utc, now_ms
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import IN_FLIGHT, Fill, Order, OrderEventKind, OrderUpdate
from titan_trio.domain.positions import Position, adopted_stop
from titan_trio.errors import TitanError
from titan_trio.state import records
from titan_trio.state.drift import Difference, diff, missed_fill, pos_text
from titan_trio.state.settle import settle_order
from titan_trio.state.shadow import PositionRecord, ShadowState
from titan_trio.state.store import Store

log = logging.getLogger("titan.reconcile")

QUIET_WAIT_S = 5.0  # how long a run waits for the shadow state to apply the broker's events
# An order in flight (sent, no answer recorded) this long and not being sent right now
# is asked for by id; "not found" LOST_AFTER runs in a row makes it lost (EXPIRED): a
# real exchange may not list an order it took a moment ago, so one answer is no proof.
IN_FLIGHT_QUIET_MS = 10_000
LOST_AFTER = 3
SNAPSHOT_ATTEMPTS = 20  # snapshots tried per run until one is not overtaken by events
FIRST_RETRY_S = 2.0  # until the first run after start succeeds, it is tried this often
FILLS_CURSOR_KEY = "reconcile.fills_cursor_ms"  # fills before it were checked already
# A run with no new fill still moves the cursor up to this long before its snapshot (an
# idle account is not read from its last fill, months back, at every run).
CURSOR_LAG_MS = 60_000
FILLS_OVERLAP_MS = 1000  # read again each run: fills stamped in the same moment as the last


class Unsettled(TitanError):
    """No snapshot of the broker's account could be compared this run."""


@dataclass
class ReconcileReport:
    started_ms: int
    differences: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    compared: bool = False  # the shadow state was compared with a snapshot and healed


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
        applying: Callable[[], bool],
        sending: set[str],
        interval_s: float,
        *,
        mark: Callable[[str], Decimal | None] = lambda symbol: None,
        adopted_stop_pct: Decimal = Decimal(2),
        protect: Callable[[], Awaitable[object]] | None = None,
        replay: Callable[[list[Fill], list[Order]], Awaitable[list[Fill]]] | None = None,
        adopt_unknown: bool = True,
        close: Callable[[str, str], Awaitable[object]] | None = None,
        resume: Callable[[list[Order]], object] | None = None,
        history_lag_ms: int = 0,
        instruments: dict[str, Instrument] | None = None,
    ) -> None:
        self.shadow = shadow
        self.broker = broker
        self.store = store
        self.events_applied = events_applied  # broker events the shadow state applied
        self.applying = applying  # ... and whether it is applying more right now
        self.sending = sending
        self.interval_s = interval_s
        self.mark = mark
        self.adopted_stop_pct = adopted_stop_pct
        self.protect = protect  # after positions changed: stops and targets in place
        self.replay = replay  # applies missed fills as live ones; returns those applied
        self.adopt_unknown = adopt_unknown
        self.close = close  # closes one symbol's position at market (adopt_unknown false)
        self.resume = resume  # a resting entry adopted gets its timeout (executor.resume)
        # How late a fill may show in the broker's history (0 for paper, whose history is
        # written with the fill; a real exchange's lists lag its events): an order updated
        # within this of the snapshot is not given up on for want of its fills.
        self.history_lag_ms = history_lag_ms
        self.instruments = instruments or {}
        self.to_close: set[str] = set()  # unknown positions to close (adopt_unknown false)
        self.fills_cursor_ms: int | None = None  # loaded at the first run
        self.ready = trio.Event()  # set when the first run after start has finished
        self.not_found: dict[str, int] = {}  # in-flight orders the broker did not know
        self.last: ReconcileReport | None = None
        self.last_monotonic: float | None = None
        self.runs: dict[str, int] = {"clean": 0, "healed": 0, "error": 0}
        self._lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The first run right away, then every ``interval_s``. Until one run has
        finished without an error (``ready``), it is tried again every FIRST_RETRY_S:
        the service takes no entries before (health says ``starting``)."""
        task_status.started()
        while not self.ready.is_set():
            await self.reconcile()
            if not self.ready.is_set():
                await trio.sleep(FIRST_RETRY_S)
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
            # Entries wait for the comparison, not for every healing action to succeed
            # (a position that could not be closed is held and protected meanwhile).
            if report.compared and not self.ready.is_set():
                self.ready.set()
                log.info(
                    "first reconciliation done (%d differences healed): taking entries",
                    len(report.differences),
                )
            self.last = report
            self.last_monotonic = trio.current_time()
            return report

    async def _fills_since(self) -> int:
        """Where the fills not yet checked begin: the saved cursor, else (the first run
        on this database) just before the newest fill recorded, else just before the
        oldest order recorded, else now."""
        if self.fills_cursor_ms is None:
            saved = await self.store.call(records.kv_get, FILLS_CURSOR_KEY)
            if saved is None:
                saved = await self.store.call(records.newest_fill_ms)
            if saved is None:
                # No fill recorded yet: nothing before this database's first order is
                # ours (a fresh database on an exchange account with a history adopts
                # what it holds instead of replaying years of someone's fills).
                saved = await self.store.call(records.oldest_order_ms)
                saved = now_ms() if saved is None else saved
            self.fills_cursor_ms = int(saved)
        return max(0, self.fills_cursor_ms - FILLS_OVERLAP_MS)

    async def _replay_missed(self, fills: list[Fill], report: ReconcileReport) -> None:
        """Apply, once, the broker's fills the shadow state never applied (each one a
        difference in the report)."""
        applied: list[Fill] = []
        missed = [f for f in fills if f.exec_id not in self.shadow.seen_exec_ids]
        if missed and self.replay is not None:
            applied = await self.replay(missed, await self._orders_of(missed))
        for fill in applied:
            d = missed_fill(fill)
            log.warning("%s: applied now", d.line())
            report.differences.append(d.line())
            report.actions.append(f"fill {fill.exec_id} applied")
        if fills and fills[-1].ts_ms > (self.fills_cursor_ms or 0):
            self.fills_cursor_ms = fills[-1].ts_ms
            await self.store.call(records.kv_set, FILLS_CURSOR_KEY, fills[-1].ts_ms, now_ms())

    async def _advance_cursor(self, to_ms: int) -> None:
        if self.fills_cursor_ms is not None and to_ms > self.fills_cursor_ms:
            self.fills_cursor_ms = to_ms
            await self.store.call(records.kv_set, FILLS_CURSOR_KEY, to_ms, now_ms())

    async def _orders_of(self, fills: list[Fill]) -> list[Order]:
        """The broker's view of the orders of ``fills`` this service does not follow (an
        order the exchange made while the service was down, a stop it triggered): they
        are recorded with their fills, not left as fills of no order."""
        shadow = self.shadow
        unknown = {
            f.client_order_id: f.symbol
            for f in fills
            if f.client_order_id not in shadow.orders and f.client_order_id not in shadow.unsettled
        }
        found: list[Order] = []
        for coid, symbol in unknown.items():
            if await self.store.call(records.order_known, coid):
                continue
            order = await self.broker.order_status(symbol, coid)
            if order is not None:
                found.append(order)
        return found

    async def _consistent_account(self, report: ReconcileReport) -> tuple[AccountSnapshot, int]:
        """A broker snapshot the shadow state has applied exactly (every event sent up to
        it and none after, missed fills replayed), with the local time it was asked for;
        retried while the account keeps moving. Raises Unsettled when it never holds."""
        for _attempt in range(SNAPSHOT_ATTEMPTS):
            asked_ms = now_ms()
            account = await self.broker.account(fills_since_ms=await self._fills_since())
            with trio.move_on_after(QUIET_WAIT_S) as waiting:
                while self.events_applied() < account.events_sent:  # noqa: ASYNC110
                    await trio.sleep(0.001)
            if waiting.cancelled_caught:
                raise Unsettled("the shadow state did not catch up with the broker in time")
            # Every event sent up to the snapshot is applied: a fill of it the shadow
            # state has not seen was lost on the way (a kill between the two commits).
            await self._replay_missed(account.fills, report)
            if not self.applying() and self.events_applied() == account.events_sent:
                return account, asked_ms  # no await from here to the comparison
        raise Unsettled(
            f"the account changed during each of {SNAPSHOT_ATTEMPTS} snapshots; compared "
            "nothing this time"
        )

    async def _reconcile(self, report: ReconcileReport) -> None:
        replayed_before = len(report.differences)
        try:
            account, asked_ms = await self._consistent_account(report)
        except Unsettled as exc:
            report.errors.append(str(exc))
            return
        self._give_up_unknown_fills(asked_ms, report)  # before any await: still consistent
        replayed = len(report.differences) - replayed_before
        shadow = self.shadow
        broker_orders = {
            o.client_order_id: o
            for o in account.open_orders
            if o.client_order_id not in self.sending
        }
        here_orders = {  # (one made after the snapshot was asked for is not in it)
            c: o
            for c, o in shadow.orders.items()
            if c not in self.sending and o.status not in IN_FLIGHT and o.created_ms < asked_ms
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
            # Healing awaits: once an event moved the account past the snapshot, a
            # position or the balance taken from the snapshot would undo it.
            if not d.kind.startswith("order") and (
                self.applying() or self.events_applied() != account.events_sent
            ):
                report.actions.append(f"{d.kind} {d.key} left for the next run: the account moved")
                continue
            await self._heal(d, broker_positions, broker_orders, account.balance, report)
        await self._settle_quiet_in_flight(report)
        positions_changed = replayed > 0 or any(d.kind.startswith("position") for d in differences)
        report.compared = True
        await self._advance_cursor(asked_ms - max(self.history_lag_ms, CURSOR_LAG_MS))
        await self._close_unknowns(broker_positions, report)
        if self.protect is not None and (positions_changed or not self.ready.is_set()):
            await self.protect()  # until the first run succeeded: a stop may be missing

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
                rec.stop_loss = adopted_stop(
                    theirs.side.sign > 0, base, self.adopted_stop_pct, self.instruments.get(d.key)
                )
                report.actions.append(
                    f"position {d.key} had no stop known: stop loss {rec.stop_loss:.8g} "
                    f"({self.adopted_stop_pct} % from {base})"
                )
            shadow.positions[d.key] = rec
            await self.store.call(records.set_position, d.key, rec)
            report.actions.append(f"position {d.key} taken as the broker's ({pos_text(theirs)})")
            if d.kind == "position_only_at_broker" and not self.adopt_unknown:
                self.to_close.add(d.key)  # closed after the comparison (_close_unknowns)
        elif d.kind == "position_only_here":
            del shadow.positions[d.key]
            await self.store.call(records.set_position, d.key, None)
            report.actions.append(f"position {d.key} closed out (the broker holds none)")
        elif d.kind == "order_only_at_broker":
            # asked again: it may have finished since the snapshot (and its last event
            # been applied already); the snapshot's copy would open it again
            theirs_o = broker_orders[d.key]
            now = await self.broker.order_status(theirs_o.symbol, d.key) or theirs_o
            if d.key in shadow.orders or (now.status.is_terminal and d.key not in shadow.unsettled):
                report.actions.append(
                    f"order {d.key} is {now.status.value} by now: nothing to adopt"
                )
                return
            adopted = shadow.apply_order(now)
            await self.store.call(records.save_order, adopted)
            report.actions.append(f"order {d.key} adopted ({adopted.status.value})")
            if self.resume is not None and not adopted.reduce_only:
                self.resume([adopted])
        elif d.kind == "order_only_here":
            ours = shadow.orders.get(d.key)
            if ours is None:
                # finished by its own event since the snapshot (while an earlier
                # difference was healed): nothing left to settle
                report.actions.append(f"order {d.key} finished meanwhile: nothing to settle")
                return
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

    async def _settle_quiet_in_flight(self, report: ReconcileReport) -> None:
        """Orders in flight with no news for IN_FLIGHT_QUIET_MS (an answer lost on the
        way) are asked for by id and take the broker's state; one it has not heard of
        LOST_AFTER times in a row is lost: EXPIRED, never sent again."""
        now = now_ms()
        quiet = [
            o
            for c, o in self.shadow.orders.items()
            if o.status in IN_FLIGHT
            and c not in self.sending
            and now - o.updated_ms >= IN_FLIGHT_QUIET_MS
        ]
        for order in quiet:
            coid = order.client_order_id
            at_broker = await self.broker.order_status(order.symbol, coid)
            if at_broker is None:
                misses = self.not_found[coid] = self.not_found.get(coid, 0) + 1
                if misses < LOST_AFTER:
                    report.actions.append(
                        f"order {coid} in flight and not found at the broker "
                        f"({misses} of {LOST_AFTER} tries)"
                    )
                    continue
            self.not_found.pop(coid, None)
            line = await settle_order(
                self.shadow,
                self.store,
                order,
                at_broker,
                f"lost: not found at the broker in {LOST_AFTER} reconciliations",
            )
            report.differences.append(line)
            report.actions.append(f"order {coid} settled")

    async def _close_unknowns(
        self, broker_positions: dict[str, Position], report: ReconcileReport
    ) -> None:
        """reconcile.adoptUnknown false: each position we had no record of is closed at
        market (recorded first, so its closing fill makes a trade like any other). One
        that could not be closed stays held and protected, and is tried again at every
        run until the broker no longer holds it."""
        for symbol in sorted(self.to_close):
            held = broker_positions.get(symbol)
            if held is None or held.is_flat:
                self.to_close.discard(symbol)
                continue
            if self.close is None:
                report.errors.append(f"position {symbol}: no way to close it here")
                continue
            log.warning(
                "Reconciliation: position %s (%s) is unknown here and reconcile.adoptUnknown "
                "is false: closing it at market",
                symbol,
                pos_text(held),
            )
            closed = await self.close(symbol, "reconciliation: position unknown here")
            errors = list(getattr(closed, "errors", []))
            if errors:
                report.errors += [f"closing {symbol}: {e}" for e in errors]
                report.actions.append(f"position {symbol} NOT closed; tried again next run")
            else:
                self.to_close.discard(symbol)
                report.actions.append(
                    f"position {symbol} closed at market (reconcile.adoptUnknown false)"
                )

    def _give_up_unknown_fills(self, asked_ms: int, report: ReconcileReport) -> None:
        """An order filled further than the fills known for it, with every fill of the
        broker's history read this run applied: the rest is in no history we can read
        (recorded by an older version, or before the history kept), so the position is
        taken as the broker's instead, and the order stops counting as exposure still to
        come. Orders updated after the snapshot was asked for are left alone."""
        shadow = self.shadow
        for coid, applied in list(shadow.applied_qty.items()):
            order = shadow.orders.get(coid) or shadow.unsettled.get(coid)
            if (
                order is None
                or applied >= order.filled_qty
                or order.updated_ms >= asked_ms - self.history_lag_ms
            ):
                continue
            shadow.settle_fills(coid)
            line = (
                f"Reconciliation: order {coid} ({order.side} {order.symbol}) filled "
                f"{order.filled_qty} but fills of only {applied} are known: the rest is in "
                "no fill history read; the position is taken as the broker's"
            )
            log.warning("%s", line)
            report.differences.append(line)

    def view(self) -> dict[str, Any]:
        last = self.last
        age = None if self.last_monotonic is None else trio.current_time() - self.last_monotonic
        return {
            "first_run_done": self.ready.is_set(),  # entries are taken from then on
            "last_run_at": None if last is None else iso_utc(last.started_ms),
            "age_s": None if age is None else round(age, 3),
            "differences": [] if last is None else last.differences,
            "actions": [] if last is None else last.actions,
            "errors": [] if last is None else last.errors,
            "runs": dict(self.runs),
        }
