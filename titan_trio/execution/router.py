"""The signal router: what each IPC message does (SPEC §5, §6).

PREPARE sizes a position on the current book and equity, runs the entry gates, journals
the signal id and holds a prepared intent for ``execution.prepareTtlMs``. CONFIRM re-runs
the gates on the current book and exposure, journals the order and places it. ABORT
drops an intent. CLOSE exits a position reduce-only. PING reports the trading state.

Rules this module keeps:
- A signal id is accepted once, across restarts: the journal's primary key decides.
- Order ids derive from the signal id, so a retry after a crash can never place a
  second order under a new id.
- The gate check and the registration of the order as exposure happen with no await
  between them, so concurrent CONFIRMs can never both pass the same limit.
- The order is committed (PENDING_SUBMIT, with its signal CONFIRMED) before it is sent.

What an entry may do on the book, equity and exposure (gates, sizing, style and price)
is ``entry.EntryChecks``; this module is the protocol's flow around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import msgspec
import trio

from ipc.listener import Job
from ipc.protocol import Abort, Close, Confirm, Message, Ping, Prepare, Reason, Reply, Status
from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import IN_FLIGHT, Order, OrderStatus, Side, market_close
from titan_trio.domain.positions import Position
from titan_trio.errors import BrokerRejected, StoreError, TitanError
from titan_trio.execution.entry import EntryChecks, PreparedIntent, client_order_id
from titan_trio.execution.executor import Executor
from titan_trio.execution.placement import FINISHED_ANSWERS
from titan_trio.execution.styles import EntryPlan
from titan_trio.feeds.hub import MarketHub
from titan_trio.metrics import Metrics
from titan_trio.risk.breaker import OrderPurpose, TradingState
from titan_trio.risk.controller import RiskController
from titan_trio.risk.sizing import EntryRejected
from titan_trio.state import records
from titan_trio.state.settle import settle_in_flight
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store

log = logging.getLogger("titan.router")
IN_FLIGHT_WAIT_S = 2.0  # how long a CLOSE waits for an entry on its way to the exchange
REPEAT_WARNING_S = 60.0  # a background write failing again is told at most this often
# A CLOSE waiting for such an entry wakes when its send returns and when the shadow sync
# applies broker events; this often too, for a change made elsewhere (reconciliation).
IN_FLIGHT_RECHECK_S = 0.05
_encoder = msgspec.json.Encoder()


def database_refusal(cause: str, outcome: str) -> str:
    """What a strategy is told when the database cannot record its request: SQLite's
    cause and what happened (nothing), in one shape for every path."""
    return f"the database cannot record this request: {cause}; {outcome}"


def _rejected(msg: Message, reason: Reason, text: str) -> Reply:
    return Reply(
        msg.id,
        Status.REJECTED,
        signal_id=getattr(msg, "signal_id", None),
        reason=reason,
        message=text,
    )


class SignalRouter:
    def __init__(
        self,
        cfg: Config,
        instruments: dict[str, Instrument],
        hub: MarketHub,
        shadow: ShadowState,
        broker: Broker,
        store: Store,
        metrics: Metrics,
        equity: Callable[[], Decimal],
        risk: RiskController,
        executor: Executor,
        ready: Callable[[], bool] = lambda: True,
        events_applied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.instruments = instruments
        # False until the first reconciliation after start finished: no entry before the
        # shadow state is the broker's (SPEC §7).
        self.ready = ready
        self.shadow = shadow
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.risk = risk
        self.executor = executor
        self.placer = executor.placer
        # Returns once the shadow sync applied the next broker events (ShadowSync.applied).
        self.events_applied = events_applied or trio.sleep_forever
        self.entries = EntryChecks(cfg, instruments, hub, shadow, equity, risk.refusal)
        self.ttl_ms = cfg.execution.prepare_ttl_ms
        self.intents: dict[str, PreparedIntent] = {}
        self.closes: set[str] = set()  # CLOSE signal ids being worked on

    # ----- the service -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire prepared intents nobody confirmed (on trio's monotonic clock), journaling
        them EXPIRED; a journal write that fails is tried again on the next round (the
        intents are gone from memory already, so nothing can confirm them meanwhile),
        with a WARNING when it first fails and then at most one a minute."""
        task_status.started()
        unrecorded: list[str] = []
        warned_at: float | None = None
        while True:
            await trio.sleep(min(1.0, self.ttl_ms / 1000))
            now = trio.current_time()
            expired = [
                sid
                for sid, it in self.intents.items()
                if not it.claimed and it.ready.is_set() and now > it.deadline
            ]
            for sid in expired:
                del self.intents[sid]
            unrecorded += expired
            if unrecorded:
                try:
                    await self.store.call(records.expire_signals, unrecorded, now_ms())
                except StoreError as exc:
                    if warned_at is None or now - warned_at >= REPEAT_WARNING_S:
                        warned_at = now
                        log.warning(
                            "%d expired signals not journaled yet (%s); retrying",
                            len(unrecorded),
                            exc,
                        )
                    continue
                if warned_at is not None:
                    log.info("%d expired signals journaled after all", len(unrecorded))
                    warned_at = None
                unrecorded = []

    def admit(self, message: Message) -> Job:
        """Synchronous admission in arrival order; returns the work to run."""
        return self._storage_guarded(message, self._admit(message))

    def _admit(self, message: Message) -> Job:
        started = time.perf_counter()
        if isinstance(message, Prepare | Confirm) and not self.ready():
            return self._reply_now(
                _rejected(
                    message,
                    Reason.BUSY,
                    "starting: the first reconciliation with the broker has not finished; "
                    "retry in a moment",
                )
            )
        if isinstance(message, Prepare | Confirm | Close):
            # Refused for the database alone (a storage fault the risk controller holds
            # until a write works): BUSY at once, without waiting on the database again.
            purpose = OrderPurpose.CLOSE if isinstance(message, Close) else OrderPurpose.ENTRY
            cause = self.risk.storage_refusal(purpose)
            if cause is not None:
                self.risk.storage_refused()
                return self._reply_now(
                    _rejected(
                        message,
                        Reason.BUSY,
                        database_refusal(
                            cause,
                            "nothing was done; retrying with the same ids is safe once it "
                            "takes writes again",
                        ),
                    )
                )
        if isinstance(message, Prepare):
            return self._admit_prepare(message)
        if isinstance(message, Confirm):
            return self._admit_confirm(message, started)
        if isinstance(message, Abort):
            return self._admit_abort(message)
        if isinstance(message, Close):
            # CONFIRMs of its symbol that arrived before it: it waits for their entries
            before = [
                it
                for it in self.intents.values()
                if it.claimed and it.message.symbol == message.symbol and not it.dropped.is_set()
            ]
            if message.signal_id in self.closes:
                return self._reply_now(
                    _rejected(
                        message,
                        Reason.DUPLICATE_SIGNAL,
                        f"signal {message.signal_id} is being closed right now; ask again",
                    )
                )
            self.closes.add(message.signal_id)

            async def close_job() -> Reply:
                try:
                    return await self._close(message, before)
                finally:
                    self.closes.discard(message.signal_id)

            return close_job
        assert isinstance(message, Ping)
        return self._ping(message)

    def _storage_guarded(self, message: Message, job: Job) -> Job:
        """A request the database could not record is answered BUSY naming SQLite's
        cause (no order was sent: every order is committed before it is sent), and the
        risk controller is told, so trading narrows until writes work again: REDUCING
        when entries cannot be recorded, HALTED when exits cannot. Nothing is logged
        here: the store logs the cause once, the controller the fault and a count of the
        requests refused meanwhile."""

        async def guarded() -> Reply:
            try:
                return await job()
            except StoreError as exc:
                if isinstance(message, Close):
                    self.risk.storage_failed("exits", TradingState.HALTED, str(exc))
                elif isinstance(message, Prepare | Confirm):
                    self.risk.storage_failed("entries", TradingState.REDUCING, str(exc))
                self.risk.storage_refused()
                if isinstance(message, Confirm):  # its intent is gone
                    outcome = "no order was sent; PREPARE again with a new signal id"
                elif isinstance(message, Close):
                    outcome = "no order was sent; retrying with the same ids is safe"
                else:
                    outcome = "nothing was done; retrying with the same ids is safe"
                return _rejected(message, Reason.BUSY, database_refusal(str(exc), outcome))

        return guarded

    def _ping(self, msg: Ping) -> Job:
        async def job() -> Reply:
            return Reply(
                msg.id,
                Status.PONG,
                trading_state=self.risk.trading_state.value,
                server_time=now_ms(),
            )

        return job

    # ----- PREPARE ---------------------------------------------------------------------

    def _admit_prepare(self, msg: Prepare) -> Job:
        if msg.signal_id in self.intents:
            return self._reply_now(
                _rejected(
                    msg, Reason.DUPLICATE_SIGNAL, f"signal {msg.signal_id} was already prepared"
                )
            )
        side = Side.BUY if msg.direction == "LONG" else Side.SELL
        received = now_ms()
        intent = PreparedIntent(
            msg,
            side,
            received + self.ttl_ms,
            trio.current_time() + self.ttl_ms / 1000,
            received_ms=received,
        )
        self.intents[msg.signal_id] = intent
        return lambda: self._prepare(intent)

    async def _prepare(self, intent: PreparedIntent) -> Reply:
        msg = intent.message
        done = False
        try:
            self.entries.evaluate(intent)
            status = "PREPARED" if intent.rejection is None else "REJECTED"
            reason = None if intent.rejection is None else intent.rejection[0].value
            try:
                fresh = await self.store.call(
                    records.journal_signal,
                    msg.signal_id,
                    "PREPARE",
                    msg.source,
                    msg.symbol,
                    status,
                    reason,
                    _encoder.encode(msg).decode(),
                    now_ms(),
                    urgent=True,
                )
            except StoreError:
                if intent.rejection is None:
                    raise
                fresh = True  # a refusal holds nothing: it is answered unrecorded
            if not fresh:
                intent.rejection = (
                    Reason.DUPLICATE_SIGNAL,
                    f"signal {msg.signal_id} was already used",
                )
            done = True
        finally:
            if not done and intent.rejection is None:
                intent.rejection = (Reason.BUSY, "the PREPARE did not complete")
            if intent.rejection is not None:
                self._drop(msg.signal_id, intent)
            intent.ready.set()  # only now may a waiting CONFIRM look at the outcome
        if intent.rejection is not None:
            return _rejected(msg, *intent.rejection)
        size, rules = intent.size, intent.rules
        assert size is not None and intent.entry_price is not None and rules is not None
        return Reply(
            msg.id,
            Status.PREPARED,
            signal_id=msg.signal_id,
            symbol=msg.symbol,
            direction=msg.direction,
            size=str(size.qty),
            entry_price=str(intent.entry_price),
            notional=f"{size.notional:.2f}",
            risk_usd=f"{size.risk_usd:.2f}",
            risk_pct=str(rules.risk_pct),
            leverage=f"{size.leverage:.2f}",
            phase=rules.phase,
            execution=rules.execution,
            expires_at=intent.expires_at_ms,
        )

    def _drop(self, signal_id: str, intent: PreparedIntent) -> None:
        if self.intents.get(signal_id) is intent:
            del self.intents[signal_id]
        # A CLOSE waiting for it runs once this task yields: a CONFIRM tracks its entry
        # order before that (no await in between), so the CLOSE finds it.
        intent.dropped.set()

    # ----- CONFIRM ---------------------------------------------------------------------

    def _admit_confirm(self, msg: Confirm, started: float) -> Job:
        intent = self.intents.get(msg.signal_id)
        if intent is None:
            return lambda: self._confirm_unknown(msg)
        if intent.claimed:
            return self._reply_now(
                _rejected(
                    msg,
                    Reason.DUPLICATE_SIGNAL,
                    f"signal {msg.signal_id} was already confirmed or aborted",
                )
            )
        intent.claimed = True

        async def job() -> Reply:
            reply = await self._confirm(msg, intent, started)
            if reply.symbol is None:  # a refusal: say which symbol it was about
                reply.symbol = intent.message.symbol
            return reply

        return job

    async def _confirm_unknown(self, msg: Confirm) -> Reply:
        known = await self.store.call(records.signal_status, msg.signal_id)
        if known is None:
            return _rejected(msg, Reason.UNKNOWN_SIGNAL, f"no PREPARE for signal {msg.signal_id}")
        status, reason = known
        if status in ("PREPARED", "EXPIRED"):
            if status == "PREPARED":  # prepared before a restart: its intent is gone
                await self.store.call(
                    records.set_signal_status, msg.signal_id, "EXPIRED", None, now_ms()
                )
            return _rejected(
                msg, Reason.EXPIRED, f"signal {msg.signal_id} expired before it was confirmed"
            )
        if status == "CONFIRMED":
            repeat = await self._repeat_answer(msg, msg.signal_id)
            if repeat is not None:
                return repeat
            return _rejected(
                msg, Reason.DUPLICATE_SIGNAL, f"signal {msg.signal_id} was already confirmed"
            )
        detail = f" ({reason})" if reason else ""
        return _rejected(
            msg,
            Reason.UNKNOWN_SIGNAL,
            f"signal {msg.signal_id} is {status.lower()}{detail}; nothing to confirm",
        )

    async def _confirm(self, msg: Confirm, intent: PreparedIntent, started: float) -> Reply:
        await intent.ready.wait()
        prepare = intent.message
        if intent.rejection is not None:
            reason, text = intent.rejection
            return _rejected(msg, Reason.UNKNOWN_SIGNAL, f"PREPARE was rejected ({reason}): {text}")
        self._drop(msg.signal_id, intent)
        now = now_ms()
        late_s = trio.current_time() - intent.deadline
        if late_s > 0:
            await self.store.call(records.set_signal_status, msg.signal_id, "EXPIRED", None, now)
            return _rejected(
                msg,
                Reason.EXPIRED,
                f"signal {msg.signal_id} expired {late_s * 1000:.0f} ms before CONFIRM",
            )
        size = intent.size
        assert size is not None
        # From here to shadow.track there is no await: check and reservation are atomic.
        try:
            order, plan = self.entries.entry_order(intent, size, now)
        except EntryRejected as exc:
            await self.store.call(
                records.set_signal_status, msg.signal_id, "REJECTED", exc.reason.value, now
            )
            return _rejected(msg, exc.reason, exc.message)
        self.shadow.track(order)
        return await self._place(msg, order, started, prepare.signal_id, OrderPurpose.ENTRY, plan)

    async def _place(
        self,
        msg: Confirm | Close,
        order: Order,
        started: float,
        signal_id: str,
        purpose: OrderPurpose,
        plan: EntryPlan | None = None,
        journal: records.SignalEntry | None = None,
    ) -> Reply:
        """Journal the order with its signal (a new one: ``journal``), send it, answer
        with the broker's view."""
        status_word = "CONFIRMED" if isinstance(msg, Confirm) else "CLOSED"
        try:
            if plan is not None:
                ack = await self.executor.place_entry(order, plan, signal_status=status_word)
            else:
                ack = await self.placer.place(
                    order, purpose, signal_status=status_word, journal=journal
                )
        except EntryRejected as exc:  # the trading state changed while it was journaled
            return _rejected(msg, exc.reason, exc.message)
        except BrokerRejected:
            return _rejected(msg, Reason.BROKER_REJECTED, order.reject_reason or "rejected")
        self.metrics.order_latency.observe(time.perf_counter() - started)
        return Reply(
            msg.id,
            Status.ACCEPTED if isinstance(msg, Confirm) else Status.CLOSED,
            signal_id=signal_id,
            symbol=order.symbol,
            client_order_id=order.client_order_id,
            order_status=ack.status.value,
            filled_qty=str(ack.filled_qty),
            avg_price=None if ack.avg_fill_price is None else str(ack.avg_fill_price),
            size=str(ack.qty),
            execution=None if plan is None else plan.style.value,
        )

    async def _repeat_answer(self, msg: Confirm | Close, signal_id: str) -> Reply | None:
        """A repeated CONFIRM or CLOSE (a strategy retrying after a lost reply) learns
        what its order is now: DUPLICATE_SIGNAL with the order's id and current state
        (status, filled quantity, average price); or EXPIRED when the order was journaled
        but never reached the exchange (it is not sent again). None when the signal placed
        no order."""
        stored = await self.store.call(records.signal_order, signal_id)
        if stored is None:
            return None
        coid = stored.client_order_id
        if coid in self.placer.sending:
            return _rejected(
                msg,
                Reason.DUPLICATE_SIGNAL,
                f"signal {signal_id}'s order {coid} is being sent right now; ask again",
            )
        held = self.shadow.orders.get(coid) or self.shadow.unsettled.get(coid)
        order = held or stored
        if held is None and stored.status in IN_FLIGHT:
            # Recorded, then dropped from memory with its outcome unknown: the exchange
            # decides (an order held in memory is the shadow sync's to move, never ours).
            at_broker = await self.broker.order_status(stored.symbol, coid)
            if at_broker is None:
                await settle_in_flight(self.shadow, self.broker, self.store, [stored])
            else:
                order = at_broker
        kind = "CONFIRM" if isinstance(msg, Confirm) else "CLOSE"
        if order.status is OrderStatus.EXPIRED and order.filled_qty == 0:
            return _rejected(
                msg,
                Reason.EXPIRED,
                f"repeated {kind}: the order of signal {signal_id} ({coid}) never reached "
                "the exchange and is EXPIRED; it is not sent again: send a new signal",
            )
        reply = _rejected(
            msg,
            Reason.DUPLICATE_SIGNAL,
            f"repeated {kind}: signal {signal_id} already placed order {coid}, which is "
            f"{order.status.value} now (filled {order.filled_qty} of {order.qty})",
        )
        reply.symbol = order.symbol
        reply.client_order_id = coid
        reply.order_status = order.status.value
        reply.filled_qty = str(order.filled_qty)
        reply.avg_price = None if order.avg_fill_price is None else str(order.avg_fill_price)
        reply.size = str(order.qty)
        return reply

    # ----- ABORT -----------------------------------------------------------------------

    def _admit_abort(self, msg: Abort) -> Job:
        intent = self.intents.get(msg.signal_id)
        if intent is not None and intent.claimed:
            return self._reply_now(
                _rejected(
                    msg,
                    Reason.DUPLICATE_SIGNAL,
                    f"signal {msg.signal_id} was already confirmed or aborted",
                )
            )
        if intent is not None:
            intent.claimed = True

        async def job() -> Reply:
            if intent is not None:
                await intent.ready.wait()
                self._drop(msg.signal_id, intent)
                if intent.rejection is None:
                    await self.store.call(
                        records.set_signal_status, msg.signal_id, "ABORTED", None, now_ms()
                    )
                return Reply(msg.id, Status.ABORTED, signal_id=msg.signal_id)
            known = await self.store.call(records.signal_status, msg.signal_id)
            if known is None:
                return _rejected(
                    msg, Reason.UNKNOWN_SIGNAL, f"no PREPARE for signal {msg.signal_id}"
                )
            if known[0] in ("PREPARED", "EXPIRED", "ABORTED", "REJECTED"):
                if known[0] == "PREPARED":
                    await self.store.call(
                        records.set_signal_status, msg.signal_id, "ABORTED", None, now_ms()
                    )
                return Reply(
                    msg.id,
                    Status.ABORTED,
                    signal_id=msg.signal_id,
                    message=f"signal was {known[0].lower()}; nothing to abort",
                )
            return _rejected(
                msg,
                Reason.DUPLICATE_SIGNAL,
                f"signal {msg.signal_id} was already {known[0].lower()}",
            )

        return job

    # ----- CLOSE -----------------------------------------------------------------------

    async def _close(self, msg: Close, before: list[PreparedIntent]) -> Reply:
        """Exit a position: the symbol's resting entries are cancelled first, whatever
        the position (an entry resting when the strategy decides to get out must not
        fill later), then what the exchange holds is closed reduce-only at market.
        CONFIRMs of the symbol that arrived ``before`` it are waited for until their
        entry order exists (a CLOSE pipelined right behind its CONFIRM closes what that
        CONFIRM opens), within IN_FLIGHT_WAIT_S as a whole.

        Its cost is a CONFIRM's when there is nothing to cancel (the usual case): one
        look at the exchange's positions and one commit, the signal's journal entry with
        the exit order, before the order is sent. Otherwise the signal is journaled
        first, the entries cancelled, and the position looked up once they are."""
        deadline = trio.current_time() + IN_FLIGHT_WAIT_S
        with trio.move_on_at(deadline):
            for intent in before:
                await intent.dropped.wait()
        # From here on no entry of this symbol is sent (the placer asks, right before
        # each submit): one in flight behind us cannot slip past the cancels below.
        with self.placer.closing(msg.symbol):
            return await self._close_now(msg, deadline)

    async def _close_now(self, msg: Close, deadline: float) -> Reply:
        started = time.perf_counter()
        rejection: tuple[Reason, str] | None = None
        refusal = self.risk.refusal(OrderPurpose.CLOSE)
        if refusal is not None:
            rejection = (Reason.TRADING_HALTED, refusal)
        elif msg.symbol not in self.instruments:
            rejection = (Reason.UNKNOWN_SYMBOL, f"{msg.symbol} is not traded")
        elif not self._resting_entries(msg.symbol):
            position = await self._held(msg.symbol)
            if position is None:
                rejection = (Reason.INVALID_SIGNAL, f"no open position on {msg.symbol}")
            elif not self._resting_entries(msg.symbol):  # still none after that await
                try:
                    return await self._exit(msg, position, started, journal=True)
                except records.SignalUsed:
                    pass  # a repeated CLOSE: the journal below says so, and what became of it
        fresh = await self.store.call(
            records.journal_signal,
            msg.signal_id,
            "CLOSE",
            None,
            msg.symbol,
            "REJECTED" if rejection else "PREPARED",
            rejection[0].value if rejection else None,
            _encoder.encode(msg).decode(),
            now_ms(),
            urgent=True,
        )
        if not fresh:
            repeat = await self._repeat_answer(msg, msg.signal_id)
            if repeat is not None:
                return repeat
            return _rejected(
                msg, Reason.DUPLICATE_SIGNAL, f"signal {msg.signal_id} was already used"
            )
        if rejection is not None:
            return _rejected(msg, *rejection)
        cancelled, still_resting = await self._cancel_entries(msg.symbol, deadline)
        if still_resting:
            text = (
                f"could not cancel the resting entry orders of {msg.symbol} "
                f"({'; '.join(still_resting)}); nothing was closed: retry the CLOSE with a "
                "new signal id"
            )
            await self.store.call(
                records.set_signal_status,
                msg.signal_id,
                "REJECTED",
                Reason.BROKER_REJECTED.value,
                now_ms(),
                urgent=True,
            )
            log.warning("CLOSE %s refused: %s", msg.signal_id, text)
            reply = _rejected(msg, Reason.BROKER_REJECTED, text)
            reply.cancelled_orders = cancelled or None
            return reply
        position = await self._held(msg.symbol)
        if position is None:
            await self.store.call(
                records.set_signal_status, msg.signal_id, "CLOSED", None, now_ms(), urgent=True
            )
            log.info(
                "CLOSE %s: no position on %s; cancelled %d resting entry orders",
                msg.signal_id,
                msg.symbol,
                len(cancelled),
            )
            return Reply(
                msg.id,
                Status.CLOSED,
                signal_id=msg.signal_id,
                symbol=msg.symbol,
                cancelled_orders=cancelled,
                message=f"no position was open; cancelled {len(cancelled)} resting entry "
                "orders, none had filled",
            )
        reply = await self._exit(msg, position, started)
        if cancelled and reply.status is Status.CLOSED:
            reply.cancelled_orders = cancelled
        return reply

    async def _exit(
        self, msg: Close, position: Position, started: float, *, journal: bool = False
    ) -> Reply:
        """Close ``position`` reduce-only at market. ``journal``: the CLOSE is not
        journaled yet, and is in the exit order's commit; records.SignalUsed when its
        signal id was used before (nothing recorded, nothing sent)."""
        side = position.side
        assert side is not None
        rec = self.shadow.positions.get(msg.symbol)
        now = now_ms()
        order = market_close(
            client_order_id("c", msg.signal_id),
            msg.symbol,
            side.opposite,
            position.abs_size,
            rec.position.leverage if rec is not None else position.leverage,
            now,
            f"CLOSE: {msg.reason}" if msg.reason else "CLOSE",
            signal_id=msg.signal_id,
        )
        entry: records.SignalEntry | None = None
        if journal:
            coid = order.client_order_id
            known = (self.shadow.orders, self.shadow.unsettled, self.placer.sending)
            if any(coid in orders for orders in known):
                # this signal's exit is under way or done: it must not be tracked over
                raise records.SignalUsed(f"signal {msg.signal_id} was already used")
            entry = records.SignalEntry(
                msg.signal_id, "CLOSE", None, msg.symbol, _encoder.encode(msg).decode(), now
            )
        self.shadow.track(order)
        return await self._place(
            msg, order, started, msg.signal_id, OrderPurpose.CLOSE, journal=entry
        )

    def _resting_entries(self, symbol: str) -> list[Order]:
        return [
            o
            for o in self.shadow.orders.values()
            if o.symbol == symbol and not o.reduce_only and o.status.is_open
        ]

    async def _held(self, symbol: str) -> Position | None:
        """The position on ``symbol``, sized from the exchange (the shadow may not have
        applied the latest fills yet), or the shadow's when the exchange shows none."""
        held = {p.symbol: p for p in await self.broker.positions()}.get(symbol)
        if held is not None and not held.is_flat:
            return held
        rec = self.shadow.positions.get(symbol)
        if rec is not None and not rec.position.is_flat:
            return rec.position
        return None

    async def _cancel_entries(self, symbol: str, deadline: float) -> tuple[list[str], list[str]]:
        """Cancel the symbol's entry orders: the ids cancelled, and what is still resting
        (or may be: an exchange that does not answer), each with why."""
        entries = self._resting_entries(symbol)
        # An entry still on its way to the exchange is waited for (until ``deadline``):
        # cancelling it before the exchange has it would find nothing, and it would rest
        # after.
        with trio.move_on_at(deadline):
            for order in entries:
                await self._answered(order)
        cancelled: list[str] = []
        still_resting: list[str] = []
        for order in entries:
            coid = order.client_order_id
            if not order.status.is_open:
                continue  # finished meanwhile (filled, or refused before it was sent)
            if order.status in IN_FLIGHT:
                still_resting.append(f"{coid}: sent, the exchange has not answered yet")
                continue
            try:
                await self.placer.cancel(symbol, coid)
                cancelled.append(coid)
            except BrokerRejected as exc:
                if exc.reason in FINISHED_ANSWERS:
                    log.info("cancel of %s before CLOSE: %s", coid, exc)
                else:
                    still_resting.append(f"{coid}: {exc}")
            except TitanError as exc:
                still_resting.append(f"{coid}: {exc}")
        return cancelled, still_resting

    async def _answered(self, order: Order) -> None:
        """Until ``order`` is not in flight, as the shadow state has it: woken when its
        send returns and when broker events were applied (and every IN_FLIGHT_RECHECK_S
        for a change made elsewhere)."""
        while order.status in IN_FLIGHT:
            with trio.move_on_after(IN_FLIGHT_RECHECK_S):
                if order.client_order_id in self.placer.sending:
                    await self.placer.sent(order.client_order_id)
                else:
                    await self.events_applied()

    # ----- helpers ---------------------------------------------------------------------

    @staticmethod
    def _reply_now(reply: Reply) -> Job:
        async def job() -> Reply:
            return reply

        return job
