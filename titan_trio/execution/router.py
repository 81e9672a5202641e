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
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec
import trio

from ipc.listener import Job
from ipc.protocol import Abort, Close, Confirm, Message, Ping, Prepare, Reason, Reply, Status
from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Order, OrderType, Side, TimeInForce, market_close
from titan_trio.errors import BrokerRejected
from titan_trio.execution.executor import Executor
from titan_trio.execution.styles import EntryPlan, Style, choose_style, entry_price
from titan_trio.feeds.hub import MarketHub
from titan_trio.metrics import Metrics
from titan_trio.risk.controller import RiskController
from titan_trio.risk.gates import Exposure, L2Limits, check_book, check_positions
from titan_trio.risk.sizing import EntryRejected, RiskLimits, Size, phase_rules, size_position
from titan_trio.state import records
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store

log = logging.getLogger("titan.router")
_encoder = msgspec.json.Encoder()


def client_order_id(kind: str, signal_id: str) -> str:
    """Deterministic exchange order id (36 chars at most, as Bybit and Binance allow):
    ``kind`` is ``e`` for an entry and ``c`` for a close."""
    return f"tt{kind}{hashlib.sha256(signal_id.encode()).hexdigest()[:32]}"


@dataclass(eq=False)
class PreparedIntent:
    message: Prepare
    side: Side
    expires_at_ms: int
    ready: trio.Event = field(default_factory=trio.Event)
    size: Size | None = None
    entry_price: Decimal | None = None
    rejection: tuple[Reason, str] | None = None
    claimed: bool = False  # a CONFIRM or ABORT has taken it


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
    ) -> None:
        self.cfg = cfg
        self.instruments = instruments
        self.hub = hub
        self.shadow = shadow
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.equity = equity
        self.risk = risk
        self.executor = executor
        self.placer = executor.placer
        self.limits = RiskLimits.from_config(cfg.risk)
        self.l2 = L2Limits.from_config(cfg.execution.l2)
        self.ttl_ms = cfg.execution.prepare_ttl_ms
        self.intents: dict[str, PreparedIntent] = {}

    # ----- the service -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire prepared intents nobody confirmed, journaling them EXPIRED."""
        task_status.started()
        while True:
            await trio.sleep(min(1.0, self.ttl_ms / 1000))
            now = now_ms()
            expired = [
                sid
                for sid, it in self.intents.items()
                if not it.claimed and it.ready.is_set() and now > it.expires_at_ms
            ]
            for sid in expired:
                del self.intents[sid]
            if expired:
                await self.store.call(records.expire_signals, expired, now)

    def admit(self, message: Message) -> Job:
        """Synchronous admission in arrival order; returns the work to run."""
        started = time.perf_counter()
        if isinstance(message, Prepare):
            return self._admit_prepare(message)
        if isinstance(message, Confirm):
            return self._admit_confirm(message, started)
        if isinstance(message, Abort):
            return self._admit_abort(message)
        if isinstance(message, Close):
            return lambda: self._close(message)
        assert isinstance(message, Ping)
        return self._ping(message)

    def _ping(self, msg: Ping) -> Job:
        async def job() -> Reply:
            return Reply(
                msg.id,
                Status.PONG,
                trading_state=self.risk.trading_state.value,
                server_time=now_ms(),
            )

        return job

    # ----- exposure --------------------------------------------------------------------

    def exposure(self) -> Exposure:
        sides: dict[str, Side] = {}
        notional = Decimal(0)
        book = self.hub.book
        for symbol, rec in self.shadow.positions.items():
            side = rec.position.side
            if side is not None:
                sides[symbol] = side
                mark = book.mark(symbol) or rec.position.entry_price
                notional += rec.position.notional(mark)
        for order, pending in self.shadow.entry_exposure():
            sides.setdefault(order.symbol, order.side)
            price = order.price or book.mark(order.symbol) or Decimal(0)
            notional += pending * price
        return Exposure(sides, notional)

    def _check_trading_state(self) -> None:
        refusal = self.risk.entry_refusal()
        if refusal is not None:
            raise EntryRejected(Reason.TRADING_HALTED, refusal)

    # ----- PREPARE ---------------------------------------------------------------------

    def _admit_prepare(self, msg: Prepare) -> Job:
        if msg.signal_id in self.intents:
            return self._reply_now(
                _rejected(
                    msg, Reason.DUPLICATE_SIGNAL, f"signal {msg.signal_id} was already prepared"
                )
            )
        side = Side.BUY if msg.direction == "LONG" else Side.SELL
        intent = PreparedIntent(msg, side, now_ms() + self.ttl_ms)
        self.intents[msg.signal_id] = intent
        return lambda: self._prepare(intent)

    def _evaluate(self, intent: PreparedIntent) -> None:
        """Gates and sizing on the current book; sets size or rejection."""
        msg = intent.message
        instrument = self.instruments.get(msg.symbol)
        if instrument is None:
            intent.rejection = (
                Reason.UNKNOWN_SYMBOL,
                f"{msg.symbol} is not traded; traded: {', '.join(sorted(self.instruments))}",
            )
            return
        try:
            self._check_trading_state()
            exposure = self.exposure()  # no await below: it cannot change meanwhile
            check_positions(
                msg.symbol,
                intent.side,
                exposure,
                self.limits.max_positions,
                self.limits.allow_pyramiding,
            )
            quote = self.hub.book.get(msg.symbol)
            if quote is None:
                raise EntryRejected(Reason.L2_STALE, f"no price for {msg.symbol} yet")
            touch = quote.ask if intent.side is Side.BUY else quote.bid
            zone_min, zone_max = (
                Decimal(repr(msg.entry_zone.min)),
                Decimal(repr(msg.entry_zone.max)),
            )
            entry = min(max(touch, zone_min), zone_max)
            equity = self.equity()
            rules = phase_rules(equity, self.limits)
            size = size_position(
                equity=equity,
                risk_pct=rules.risk_pct,
                entry=entry,
                stop=Decimal(repr(msg.stop_loss)),
                instrument=instrument,
                leverage_cap=min(
                    Decimal(repr(msg.leverage)), rules.max_leverage, instrument.max_leverage
                ),
                open_notional=exposure.notional,
                max_total_leverage=self.limits.max_total_leverage,
            )
            check_book(quote, now_ms(), intent.side, size.qty, self.l2)
        except EntryRejected as exc:
            intent.rejection = (exc.reason, exc.message)
            return
        intent.size = size
        intent.entry_price = entry

    async def _prepare(self, intent: PreparedIntent) -> Reply:
        msg = intent.message
        done = False
        try:
            self._evaluate(intent)
            status = "PREPARED" if intent.rejection is None else "REJECTED"
            reason = None if intent.rejection is None else intent.rejection[0].value
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
        size = intent.size
        assert size is not None and intent.entry_price is not None
        rules = phase_rules(self.equity(), self.limits)
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
        return lambda: self._confirm(msg, intent, started)

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
        if now > intent.expires_at_ms:
            await self.store.call(records.set_signal_status, msg.signal_id, "EXPIRED", None, now)
            return _rejected(
                msg,
                Reason.EXPIRED,
                f"signal {msg.signal_id} expired {now - intent.expires_at_ms} ms before CONFIRM",
            )
        size = intent.size
        assert size is not None
        # From here to shadow.track there is no await: check and reservation are atomic.
        try:
            order, plan = self._entry_order(intent, size, now)
        except EntryRejected as exc:
            await self.store.call(
                records.set_signal_status, msg.signal_id, "REJECTED", exc.reason.value, now
            )
            return _rejected(msg, exc.reason, exc.message)
        self.shadow.track(order)
        return await self._place(msg, order, started, prepare.signal_id, plan)

    def _entry_order(self, intent: PreparedIntent, size: Size, now: int) -> tuple[Order, EntryPlan]:
        prepare = intent.message
        self._check_trading_state()
        exposure = self.exposure()  # no await below: it cannot change meanwhile
        check_positions(
            prepare.symbol,
            intent.side,
            exposure,
            self.limits.max_positions,
            self.limits.allow_pyramiding,
        )
        quote = self.hub.book.get(prepare.symbol)
        check_book(quote, now, intent.side, size.qty, self.l2)
        assert quote is not None
        zone_min = Decimal(repr(prepare.entry_zone.min))
        zone_max = Decimal(repr(prepare.entry_zone.max))
        equity = self.equity()
        rules = phase_rules(equity, self.limits)
        style = choose_style(rules.execution, prepare.velocity, self.cfg.execution.taker_velocity)
        price = entry_price(style, intent.side, quote, zone_min, zone_max)
        if price is None:
            raise EntryRejected(
                Reason.SLIPPAGE_TOO_HIGH,
                f"the book ({quote.bid}/{quote.ask}) has left the entry zone {zone_min}-{zone_max}",
            )
        room = equity * self.limits.max_total_leverage - exposure.notional
        if size.qty * price > room:
            raise EntryRejected(
                Reason.LEVERAGE_CAP,
                f"notional {size.qty * price:.2f} exceeds the room left under "
                f"{self.limits.max_total_leverage}x total leverage ({room:.2f})",
            )
        leverage = min(
            Decimal(repr(prepare.leverage)),
            rules.max_leverage,
            self.instruments[prepare.symbol].max_leverage,
        )
        instrument = self.instruments[prepare.symbol]
        plan = EntryPlan(
            style,
            intent.side,
            zone_min,
            zone_max,
            instrument.tick_size,
            price,
            self.cfg.execution.chase_max_ticks,
        )
        order = Order(
            client_order_id=client_order_id("e", prepare.signal_id),
            symbol=prepare.symbol,
            side=intent.side,
            order_type=OrderType.LIMIT,
            qty=size.qty,
            price=price,
            time_in_force=TimeInForce.POST_ONLY if style is Style.MAKER else TimeInForce.GTC,
            leverage=leverage,
            signal_id=prepare.signal_id,
            created_ms=now,
            updated_ms=now,
            stop_loss=Decimal(repr(prepare.stop_loss)),
            take_profits=tuple(Decimal(repr(tp)) for tp in prepare.take_profits),
            trap_type=prepare.trap_type,
        )
        return order, plan

    async def _place(
        self,
        msg: Confirm | Close,
        order: Order,
        started: float,
        signal_id: str,
        plan: EntryPlan | None = None,
    ) -> Reply:
        """Journal the order with its signal, send it, answer with the broker's view."""
        status_word = "CONFIRMED" if isinstance(msg, Confirm) else "CLOSED"
        try:
            if plan is not None:
                ack = await self.executor.place_entry(order, plan, signal_status=status_word)
            else:
                ack = await self.placer.place(order, signal_status=status_word)
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

    async def _close(self, msg: Close) -> Reply:
        started = time.perf_counter()
        rejection: tuple[Reason, str] | None = None
        rec = self.shadow.positions.get(msg.symbol)
        if msg.symbol not in self.instruments:
            rejection = (Reason.UNKNOWN_SYMBOL, f"{msg.symbol} is not traded")
        elif rec is None or rec.position.is_flat:
            rejection = (Reason.INVALID_SIGNAL, f"no open position on {msg.symbol}")
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
        )
        if not fresh:
            return _rejected(
                msg, Reason.DUPLICATE_SIGNAL, f"signal {msg.signal_id} was already used"
            )
        if rejection is not None:
            return _rejected(msg, *rejection)
        await self._cancel_entries(msg.symbol)
        rec = self.shadow.positions.get(msg.symbol)
        if rec is None or rec.position.is_flat:
            await self.store.call(
                records.set_signal_status,
                msg.signal_id,
                "REJECTED",
                Reason.INVALID_SIGNAL.value,
                now_ms(),
            )
            return _rejected(msg, Reason.INVALID_SIGNAL, f"no open position on {msg.symbol}")
        # Size from the exchange: the shadow may not have applied the latest fills yet.
        held = {p.symbol: p for p in await self.broker.positions()}.get(msg.symbol)
        position = held if held is not None and not held.is_flat else rec.position
        side = position.side
        assert side is not None
        now = now_ms()
        order = market_close(
            client_order_id("c", msg.signal_id),
            msg.symbol,
            side.opposite,
            position.abs_size,
            rec.position.leverage,
            now,
            f"CLOSE: {msg.reason}" if msg.reason else "CLOSE",
            signal_id=msg.signal_id,
        )
        self.shadow.track(order)
        return await self._place(msg, order, started, msg.signal_id)

    async def _cancel_entries(self, symbol: str) -> None:
        for order in list(self.shadow.orders.values()):
            if order.symbol == symbol and not order.reduce_only and order.status.is_open:
                try:
                    await self.broker.cancel(symbol, order.client_order_id)
                except BrokerRejected as exc:
                    log.info("cancel of %s before CLOSE: %s", order.client_order_id, exc)

    # ----- helpers ---------------------------------------------------------------------

    @staticmethod
    def _reply_now(reply: Reply) -> Job:
        async def job() -> Reply:
            return reply

        return job
