"""The risk controller: owns the trading state, the circuit breaker and its inputs at run
time, and is the one gateway every order is asked through (``refusal``).

It is told of every equity mark (``mark``) and every closed trade; when a limit is
exceeded it trips the breaker (HALTED, persisted before anything else happens), logs one
CRITICAL line containing ``Circuit breaker`` with the cause and figures, and asks for a
flatten when ``risk.flattenOnBreaker``. Only an operator's reset clears it; a restart
does not. A reset re-bases peak equity, the day's start and the losing streak in the same
record. Operator actions (pause, resume, reset, flatten) are logged with who and when.

Risk decides, execution acts: this module never imports ``execution``. The flatten is a
function the engine hands in (``flatten``), run shielded (it bounds itself).

Storage faults: when the service cannot save its record of the account, it must stop
adding to what it cannot record. ``storage_failed`` narrows the effective trading state
(REDUCING when shadow state or entries cannot be saved, HALTED when exits cannot), the
persisted operator state is left alone, and a probe (``storage_probe``, given by the
engine: it flushes what is unsaved) runs every few seconds until writes work again; then
the fault lifts by itself, with a WARNING either way. While it lasts, a strategy's order
that only the fault keeps out is answered BUSY naming the database (``storage_refusal``,
not TRADING_HALTED: nobody halted trading, and it resumes by itself); the requests
refused meanwhile are counted (``storage_refused``) and told in one WARNING every
STORAGE_SUMMARY_S and in the line that says writes work again, never a line each.

Writes of its own record that fail (a locked or full database) are never fatal: the
record stays in memory, is marked unsaved and is written again at the next change or
probe; a trip is enforced in memory at once whether or not it could be saved.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal

import trio

from titan_trio.clock import iso_utc, now_ms
from titan_trio.config import RiskConfig
from titan_trio.domain.equity import EquityTracker
from titan_trio.domain.reports import FlattenReport
from titan_trio.errors import StoreError
from titan_trio.risk.breaker import (
    BreakerLimits,
    OrderPurpose,
    RiskState,
    TradingState,
    Trip,
    most_restrictive,
    order_allowed,
)
from titan_trio.state import records
from titan_trio.state.shadow import TradeRecord, utc_day
from titan_trio.state.store import Store

log = logging.getLogger("titan.risk")
STATE_KEY = "risk.state"
LEGACY_TRACKER_KEY = "equity.tracker"  # where peak and day start lived before
STORAGE_PROBE_S = 2.0
STORAGE_SUMMARY_S = 60.0  # while the database fails: one line this often, however busy
SAVE_DEADLINE_S = 1.0
# The flatten bounds itself (execution.flatten.FLATTEN_DEADLINE_S); this is the outer
# bound on the shielded wait for it, so no shutdown ever waits longer.
FLATTEN_BOUND_S = 10.0  # what an operator's flatten waits for its record before it acts


class RiskController:
    def __init__(
        self,
        cfg: RiskConfig,
        store: Store,
        initial_capital: Decimal,
        equity: Callable[[], Decimal],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.initial_capital = initial_capital
        self.equity = equity
        self.limits = BreakerLimits(
            Decimal(repr(cfg.max_drawdown_pct)),
            Decimal(repr(cfg.max_daily_loss_pct)),
            cfg.max_consecutive_losses,
        )
        self.state = RiskState.fresh(initial_capital)
        # Given by the engine: execution's flatten (bounded by its own deadline).
        self.flatten: Callable[[str], Awaitable[FlattenReport]] | None = None
        self.last_flatten: FlattenReport | None = None
        # Given by the engine: writes what is waiting to be saved; raises StoreError
        # while the database still fails.
        self.storage_probe: Callable[[], Awaitable[None]] | None = None
        self.storage_faults: dict[str, tuple[TradingState, str]] = {}
        self.unsaved = False  # the record in memory is ahead of the database
        self._probing = False
        self._fault_began = 0.0  # trio time the current storage fault began
        self._refused = 0  # requests refused for the database since then
        self._fault_generation = 0
        self._nursery: trio.Nursery | None = None

    @property
    def tracker(self) -> EquityTracker:
        return self.state.tracker

    @property
    def trading_state(self) -> TradingState:
        """The state orders are judged by: the operator's or breaker's, narrowed by any
        storage fault."""
        faults = [state for state, _ in self.storage_faults.values()]
        return most_restrictive(self.state.trading_state, *faults)

    def refusal(self, purpose: OrderPurpose) -> str | None:
        """Why an order of ``purpose`` may not be sent now, or None when it may. The one
        rule every order is asked (SPEC §6)."""
        state = self.trading_state
        if order_allowed(state, purpose):
            return None
        why = f"trading is {state.value}"
        if self.state.tripped and self.state.trip is not None:
            why += f": circuit breaker tripped ({self.state.trip.message})"
        elif self.storage_faults and state is not self.state.trading_state:
            causes = "; ".join(f"{k}: {cause}" for k, (_, cause) in self.storage_faults.items())
            why += f": the database cannot save the account's record ({causes})"
        elif state is TradingState.HALTED:
            why += ": halted by an operator's flatten; resume to trade again"
        elif state is TradingState.REDUCING:
            why += ": paused by an operator; only exits are accepted"
        return why

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        saved = await self.store.call(records.kv_get, STATE_KEY)
        if saved is not None:
            self.state = RiskState.from_json(saved, self.initial_capital)
        legacy = await self.store.call(records.kv_get, LEGACY_TRACKER_KEY)
        if legacy is not None and (saved is None or "peak_equity" not in saved):
            t = self.state.tracker
            t.peak_equity = Decimal(legacy["peak_equity"])
            t.day = legacy["day"]
            t.day_start_equity = Decimal(legacy["day_start_equity"])
            await self._save()
        if self.state.tripped and self.state.trip is not None:
            log.critical(
                "Circuit breaker still tripped since %s: %s; trading HALTED until "
                "an operator resets it",
                iso_utc(self.state.tripped_at_ms) or "unknown",
                self.state.trip.message,
            )
        elif self.state.trading_state is not TradingState.ACTIVE:
            log.warning("trading state restored as %s", self.state.trading_state)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _save(self) -> bool:
        """Write the record; False (logged, retried at the next change) when the
        database refuses. Never raises for a storage failure."""
        try:
            await self.store.call(records.kv_set, STATE_KEY, self.state.to_json(), now_ms())
        except StoreError as exc:
            if not self.unsaved:
                log.warning("risk state not saved (%s); kept in memory, retrying", exc)
            self.unsaved = True
            return False
        if self.unsaved:
            log.warning("risk state saved again after a failed write")
        self.unsaved = False
        return True

    # ----- inputs ----------------------------------------------------------------------

    async def mark(self, equity: Decimal, ts_ms: int) -> None:
        """A new equity mark: track peak and day start (saved when they change), then
        judge the breaker on it."""
        changed = self.state.mark(equity, utc_day(ts_ms))
        await self.check()  # judged before any write: a slow database never delays a trip
        if changed or self.unsaved:
            await self._save()

    async def check(self) -> None:
        """Evaluate the breaker on the latest equity mark and losing streak."""
        trip = self.state.evaluate(self.limits)
        if trip is not None:
            await self._trip(trip)

    async def on_trade(self, trade: TradeRecord) -> None:
        self.state.record_trade(trade.net_pnl)
        await self._save()
        await self.check()

    async def _trip(self, trip: Trip) -> None:
        """HALTED in memory at once (every order asks the gateway), the flatten started
        before any write (a locked database must not delay it), then the record saved: a
        crash before that restarts with the same peak and day start, and trips again on
        the first mark."""
        if not self.state.trip_breaker(trip, now_ms()):
            return
        log.critical(
            "Circuit breaker tripped: %s; trading HALTED%s",
            trip.message,
            ", flattening all positions" if self.cfg.flatten_on_breaker else "",
        )
        flatten = self.cfg.flatten_on_breaker and self.flatten is not None
        if flatten and self._nursery is not None:
            self._nursery.start_soon(self._flatten, "circuit breaker")
        if not await self._save():
            log.critical("Circuit breaker trip NOT yet saved: the database refuses writes")
        await self._event("CRITICAL", "breaker", trip.message)
        if flatten and self._nursery is None:
            await self._flatten("circuit breaker")

    async def _flatten(self, reason: str) -> FlattenReport:
        """Shielded, so a client that hangs up or a shutdown cannot abandon it half-way;
        the flatten bounds itself with its own deadline."""
        assert self.flatten is not None
        report = FlattenReport(errors=[f"flatten did not answer within {FLATTEN_BOUND_S:g} s"])
        with trio.move_on_after(FLATTEN_BOUND_S, shield=True):
            report = await self.flatten(reason)
        self.last_flatten = report
        return report

    async def _event(self, level: str, kind: str, message: str) -> None:
        """A line in the system events table; its failure is logged, never fatal."""
        try:
            await self.store.call(records.add_event, now_ms(), level, kind, message)
        except StoreError as exc:
            log.warning("event %r not recorded (%s): %s", kind, exc, message)

    # ----- storage faults --------------------------------------------------------------

    def storage_refusal(self, purpose: OrderPurpose) -> str | None:
        """The database's cause when a storage fault alone keeps an order of ``purpose``
        out now; None when it may pass, or when the operator's or breaker's state refuses
        it anyway (that is ``refusal``'s answer)."""
        if not self.storage_faults or order_allowed(self.trading_state, purpose):
            return None
        if not order_allowed(self.state.trading_state, purpose):
            return None
        return "; ".join(dict.fromkeys(cause for _, cause in self.storage_faults.values()))

    def storage_refused(self) -> None:
        """A request was refused because the database cannot record it (counted, and
        told in the fault's summary lines instead of a line each)."""
        self._refused += 1

    def storage_failed(self, source: str, state: TradingState, cause: str) -> None:
        """``source``'s writes fail: trade no further than ``state`` until they work."""
        self._fault_generation += 1  # a probe that started before this must not clear it
        known = self.storage_faults.get(source)
        if known is not None and known[0].severity >= state.severity:
            return
        if not self.storage_faults:  # a new fault: its own count and clock
            self._fault_began = trio.current_time()
            self._refused = 0
        before = self.trading_state
        self.storage_faults[source] = (state, cause)
        log.critical(
            "database writes failing (%s: %s): trading %s until they work again (was %s)",
            source,
            cause,
            self.trading_state.value,
            before.value,
        )
        if not self._probing and self._nursery is not None:
            self._probing = True
            self._nursery.start_soon(self._probe_storage)

    async def _probe_storage(self) -> None:
        told_at, told = trio.current_time(), 0  # the last summary line, and its count
        try:
            while self.storage_faults:
                await trio.sleep(STORAGE_PROBE_S)
                generation = self._fault_generation
                try:
                    if self.storage_probe is not None:
                        await self.storage_probe()
                    await self.store.call(records.kv_set, STATE_KEY, self.state.to_json(), now_ms())
                except StoreError as exc:
                    now = trio.current_time()
                    if now - told_at >= STORAGE_SUMMARY_S:
                        log.warning(
                            "database still failing after %.0f s (%s): trading %s; %d "
                            "requests refused in the last %.0f s",
                            now - self._fault_began,
                            exc,
                            self.trading_state.value,
                            self._refused - told,
                            now - told_at,
                        )
                        told_at, told = now, self._refused
                    continue
                self.unsaved = False
                if generation != self._fault_generation:
                    continue  # a new failure while probing: probe again
                sources = ", ".join(sorted(self.storage_faults))
                self.storage_faults.clear()
                log.warning(
                    "database writes work again after %.0f s (%s saved): trading state back "
                    "to %s; %d requests refused while they failed",
                    trio.current_time() - self._fault_began,
                    sources,
                    self.trading_state.value,
                    self._refused,
                )
        finally:
            self._probing = False

    # ----- operator actions ------------------------------------------------------------

    async def pause(self, who: str) -> None:
        self.state.pause(who, now_ms())
        await self._save()
        log.warning("trading paused by %s: state %s", who, self.state.trading_state)

    async def resume(self, who: str) -> str | None:
        problem = self.state.resume(who, now_ms())
        if problem is None:
            await self._save()
            log.warning("trading resumed by %s", who)
        return problem

    async def reset_breaker(self, who: str, then: TradingState = TradingState.ACTIVE) -> bool:
        """Clear a tripped breaker and re-base its inputs on the equity of now."""
        trip = self.state.trip
        t = self.state.tracker
        old_peak, old_day_start = t.peak_equity, t.day_start_equity
        equity = self.equity()
        ts = now_ms()
        if not self.state.reset_breaker(who, ts, equity, utc_day(ts), then):
            return False
        await self._save()
        text = (
            f"Circuit breaker reset by {who} (was: {trip.message if trip else None}); "
            f"re-based on equity {equity:.2f}: peak {old_peak:.2f} -> {t.peak_equity:.2f}, "
            f"day start {old_day_start:.2f} -> {t.day_start_equity:.2f}, losing streak 0; "
            f"trading {self.state.trading_state.value}"
        )
        log.warning("%s", text)
        await self._event("WARNING", "breaker_reset", text)
        return True

    async def flatten_all(self, who: str) -> FlattenReport:
        """HALT and flatten. Shielded: a client that hangs up must not abandon it."""
        assert self.flatten is not None
        with trio.CancelScope(shield=True):
            self.state.halt(who, now_ms())
            log.warning("emergency flatten requested by %s: trading HALTED", who)
            with trio.move_on_after(SAVE_DEADLINE_S) as saving:
                await self._save()
            if saving.cancelled_caught:
                self.unsaved = True  # HALTED holds in memory; written at the next change
            return await self._flatten(f"operator {who}")
