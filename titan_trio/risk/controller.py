"""The risk controller: owns the trading state and the circuit breaker at run time.

It is told of every equity mark and every closed trade; when a limit is exceeded it
trips the breaker (HALTED, persisted before anything else happens), logs one CRITICAL
line containing ``Circuit breaker`` with the cause and figures, and flattens when
``risk.flattenOnBreaker``. Only an operator's reset clears it; a restart does not.
Operator actions (pause, resume, reset, flatten) are logged with who and when.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from decimal import Decimal
from typing import Any

import trio

from titan_trio.clock import now_ms
from titan_trio.config import RiskConfig
from titan_trio.domain.equity import EquityTracker
from titan_trio.execution.flatten import Flattener, FlattenReport
from titan_trio.risk.breaker import BreakerLimits, RiskState, TradingState, Trip, evaluate
from titan_trio.state import records
from titan_trio.state.shadow import TradeRecord
from titan_trio.state.store import Store

log = logging.getLogger("titan.risk")
STATE_KEY = "risk.state"


class RiskController:
    def __init__(self, cfg: RiskConfig, store: Store, tracker: EquityTracker) -> None:
        self.cfg = cfg
        self.store = store
        self.tracker = tracker
        self.limits = BreakerLimits(
            Decimal(repr(cfg.max_drawdown_pct)),
            Decimal(repr(cfg.max_daily_loss_pct)),
            cfg.max_consecutive_losses,
        )
        self.state = RiskState()
        self.flattener: Flattener | None = None
        self.last_flatten: FlattenReport | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def trading_state(self) -> TradingState:
        return self.state.trading_state

    def entry_refusal(self) -> str | None:
        """Why a new entry may not be sent now, or None when it may."""
        state = self.state
        if state.trading_state.allows_entries:
            return None
        why = f"trading is {state.trading_state.value}"
        if state.tripped and state.trip is not None:
            why += f": circuit breaker tripped ({state.trip.message})"
        elif state.trading_state is TradingState.REDUCING:
            why += ": paused by an operator; only exits are accepted"
        return why

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        saved = await self.store.call(records.kv_get, STATE_KEY)
        if saved is not None:
            self.state = RiskState.from_json(saved)
            if self.state.tripped and self.state.trip is not None:
                log.critical(
                    "Circuit breaker still tripped since %s: %s; trading HALTED until "
                    "an operator resets it",
                    self.state.tripped_at_ms,
                    self.state.trip.message,
                )
            elif self.state.trading_state is not TradingState.ACTIVE:
                log.warning("trading state restored as %s", self.state.trading_state)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _save(self) -> None:
        await self.store.call(records.kv_set, STATE_KEY, self.state.to_json(), now_ms())

    # ----- inputs ----------------------------------------------------------------------

    async def check(self) -> None:
        """Evaluate the breaker on the latest equity mark and losing streak."""
        t = self.tracker
        if self.state.tripped or not t.day:  # no mark yet: nothing to judge
            return
        trip = evaluate(
            self.limits,
            equity=t.last_equity,
            peak_equity=t.peak_equity,
            day_start_equity=t.day_start_equity,
            consecutive_losses=self.state.consecutive_losses,
        )
        if trip is not None:
            await self._trip(trip)

    async def on_trade(self, trade: TradeRecord) -> None:
        self.state.record_trade(trade.net_pnl)
        await self._save()
        await self.check()

    async def _trip(self, trip: Trip) -> None:
        if not self.state.trip_breaker(trip, now_ms()):
            return
        await self._save()  # on disk before anything else: a crash now stays tripped
        log.critical(
            "Circuit breaker tripped: %s; trading HALTED%s",
            trip.message,
            ", flattening all positions" if self.cfg.flatten_on_breaker else "",
        )
        await self.store.call(records.add_event, now_ms(), "CRITICAL", "breaker", trip.message)
        if self.cfg.flatten_on_breaker and self.flattener is not None:
            if self._nursery is not None:
                self._nursery.start_soon(self._flatten_after_trip)
            else:
                await self._flatten_after_trip()

    async def _flatten_after_trip(self) -> None:
        assert self.flattener is not None
        with trio.CancelScope(shield=True):
            self.last_flatten = await self.flattener.flatten("circuit breaker")

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

    async def reset_breaker(self, who: str) -> bool:
        cause = self.state.trip.message if self.state.trip else None
        if not self.state.reset_breaker(who, now_ms()):
            return False
        await self._save()
        log.warning("Circuit breaker reset by %s (was: %s); trading ACTIVE", who, cause)
        await self.store.call(
            records.add_event,
            now_ms(),
            "WARNING",
            "breaker_reset",
            f"reset by {who} (was: {cause})",
        )
        return True

    async def flatten_all(self, who: str) -> FlattenReport:
        """HALT and flatten. Shielded: a client that hangs up must not abandon it."""
        assert self.flattener is not None
        with trio.CancelScope(shield=True):
            self.state.halt(who, now_ms())
            await self._save()
            log.warning("emergency flatten requested by %s: trading HALTED", who)
            report = await self.flattener.flatten(f"operator {who}")
        self.last_flatten = report
        return report

    def view(self) -> dict[str, Any]:
        s = self.state
        return {
            "trading_state": s.trading_state.value,
            "tripped": s.tripped,
            "cause": None if s.trip is None else s.trip.cause,
            "message": None if s.trip is None else s.trip.message,
            "figures": None if s.trip is None else s.trip.figures,
            "tripped_at": s.tripped_at_ms,
            "consecutive_losses": s.consecutive_losses,
            "limits": {k: str(v) for k, v in asdict(self.limits).items()},
            "history": s.history,
        }
