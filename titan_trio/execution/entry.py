"""Entry checks: what an entry signal may do on the current book, equity and exposure.

PREPARE asks ``evaluate`` (the gates and sizing of SPEC §6: a size and entry price, or a
rejection); CONFIRM asks ``entry_order`` (the gates again on the book of now, the
execution style and its price, the room left under total leverage: the order to place
and how to work it). Nothing here awaits or does I/O: the router relies on a check and
the order's registration as exposure happening with nothing in between.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import trio

from ipc.protocol import Prepare, Reason
from titan_trio.clock import iso_utc
from titan_trio.config import Config
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Order, OrderType, Side, TimeInForce
from titan_trio.execution.styles import EntryPlan, Style, choose_style, entry_price
from titan_trio.feeds.hub import MarketHub
from titan_trio.risk.breaker import OrderPurpose
from titan_trio.risk.gates import Exposure, L2Limits, check_book, check_positions
from titan_trio.risk.sizing import (
    EntryRejected,
    PhaseRules,
    RiskLimits,
    Size,
    phase_rules,
    size_position,
)
from titan_trio.state.shadow import ShadowState

# How far ahead of the service's clock a PREPARE's timestamp may be (SPEC §4: 1 s).
MAX_CLOCK_SKEW_MS = 1000


def client_order_id(kind: str, signal_id: str) -> str:
    """Deterministic exchange order id (36 chars at most, as Bybit and Binance allow):
    ``kind`` is ``e`` for an entry and ``c`` for a close."""
    return f"tt{kind}{hashlib.sha256(signal_id.encode()).hexdigest()[:32]}"


@dataclass(eq=False)
class PreparedIntent:
    message: Prepare
    side: Side
    expires_at_ms: int  # wall clock, for the strategy's reply
    deadline: float = math.inf  # trio.current_time() when it expires: what is checked
    ready: trio.Event = field(default_factory=trio.Event)
    size: Size | None = None
    entry_price: Decimal | None = None
    rules: PhaseRules | None = None
    rejection: tuple[Reason, str] | None = None
    claimed: bool = False  # a CONFIRM or ABORT has taken it
    received_ms: int | None = None  # wall clock when the PREPARE arrived (its age is from it)
    dropped: trio.Event = field(default_factory=trio.Event)  # gone from the router's table


class EntryChecks:
    def __init__(
        self,
        cfg: Config,
        instruments: dict[str, Instrument],
        hub: MarketHub,
        shadow: ShadowState,
        equity: Callable[[], Decimal],
        gate: Callable[[OrderPurpose], str | None],
    ) -> None:
        self.cfg = cfg
        self.instruments = instruments
        self.hub = hub
        self.shadow = shadow
        self.equity = equity
        self.gate = gate  # the risk controller's trading-state rule
        self.limits = RiskLimits.from_config(cfg.risk)
        self.l2 = L2Limits.from_config(cfg.execution.l2)

    def exposure(self) -> Exposure:
        """What the position and leverage gates count: open positions at their mark, and
        the part of entry orders not yet in a position at its price."""
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

    def check_trading_state(self) -> None:
        refusal = self.gate(OrderPurpose.ENTRY)
        if refusal is not None:
            raise EntryRejected(Reason.TRADING_HALTED, refusal)

    def check_signal_age(self, msg: Prepare, received_ms: int | None) -> None:
        """A PREPARE made longer than ``ipc.maxSignalAgeMs`` before it arrived (delayed
        in a queue, or captured and delivered late) trades on an old idea; one from
        further ahead than MAX_CLOCK_SKEW_MS comes from a clock that is wrong. Without a
        ``timestamp`` there is nothing to judge."""
        if msg.timestamp is None or received_ms is None:
            return
        age = received_ms - msg.timestamp
        limit = self.cfg.ipc.max_signal_age_ms
        if age > limit:
            raise EntryRejected(
                Reason.EXPIRED,
                f"signal made at {iso_utc(msg.timestamp)} arrived at {iso_utc(received_ms)}, "
                f"{age} ms later; a PREPARE older than {limit} ms is refused "
                "(ipc.maxSignalAgeMs): send a fresh signal",
            )
        if -age > MAX_CLOCK_SKEW_MS:
            raise EntryRejected(
                Reason.EXPIRED,
                f"signal made at {iso_utc(msg.timestamp)} is {-age} ms ahead of the service's "
                f"clock ({iso_utc(received_ms)}); at most {MAX_CLOCK_SKEW_MS} ms of clock skew "
                "is allowed: check the strategy's clock",
            )

    def check_price_band(self, msg: Prepare, mid: Decimal) -> None:
        """Every price of the signal within ``maxPriceDeviationPct`` of the market."""
        band = Decimal(repr(self.cfg.execution.max_price_deviation_pct)) / 100
        low, high = mid * (1 - band), mid * (1 + band)
        prices = [
            ("entry_zone.min", msg.entry_zone.min),
            ("entry_zone.max", msg.entry_zone.max),
            ("stop_loss", msg.stop_loss),
            *((f"take_profits[{n}]", tp) for n, tp in enumerate(msg.take_profits)),
        ]
        for name, value in prices:
            if not low <= Decimal(repr(value)) <= high:
                raise EntryRejected(
                    Reason.INVALID_SIGNAL,
                    f"{name}: {value} is more than {self.cfg.execution.max_price_deviation_pct:g}"
                    f" % away from the market ({mid}); allowed {low:.8g} to {high:.8g}",
                )

    def evaluate(self, intent: PreparedIntent) -> None:
        """PREPARE: gates and sizing on the current book, in SPEC §6's order (trading
        state, the signal's age, symbol, positions, leverage, L2); sets the intent's size,
        entry price and phase rules, or its rejection."""
        msg = intent.message
        try:
            self.check_trading_state()
            self.check_signal_age(msg, intent.received_ms)
            instrument = self.instruments.get(msg.symbol)
            if instrument is None:
                raise EntryRejected(
                    Reason.UNKNOWN_SYMBOL,
                    f"{msg.symbol} is not traded; traded: {', '.join(sorted(self.instruments))}",
                )
            quote = self.hub.book.get(msg.symbol)
            if quote is not None:
                self.check_price_band(msg, quote.mid)
            exposure = self.exposure()  # no await below: it cannot change meanwhile
            check_positions(
                msg.symbol,
                intent.side,
                exposure,
                self.limits.max_positions,
                self.limits.allow_pyramiding,
            )
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
            check_book(quote, self.hub.age_ms(msg.symbol), intent.side, size.qty, self.l2)
        except EntryRejected as exc:
            intent.rejection = (exc.reason, exc.message)
            return
        intent.size = size
        intent.entry_price = entry
        intent.rules = rules

    def entry_order(self, intent: PreparedIntent, size: Size, now: int) -> tuple[Order, EntryPlan]:
        """CONFIRM: the gates again on the book and exposure of now, the execution style
        and price, the room left under total leverage; the order to place, or
        EntryRejected."""
        prepare = intent.message
        self.check_trading_state()
        exposure = self.exposure()  # no await below: it cannot change meanwhile
        check_positions(
            prepare.symbol,
            intent.side,
            exposure,
            self.limits.max_positions,
            self.limits.allow_pyramiding,
        )
        quote = self.hub.book.get(prepare.symbol)
        zone_min = Decimal(repr(prepare.entry_zone.min))
        zone_max = Decimal(repr(prepare.entry_zone.max))
        equity = self.equity()
        rules = phase_rules(equity, self.limits)
        style = choose_style(rules.execution, prepare.velocity, self.cfg.execution.taker_velocity)
        price = (
            None if quote is None else entry_price(style, intent.side, quote, zone_min, zone_max)
        )
        # SPEC §6's order: the leverage cap before the L2 checks.
        if price is not None:
            room = equity * self.limits.max_total_leverage - exposure.notional
            if size.qty * price > room:
                raise EntryRejected(
                    Reason.LEVERAGE_CAP,
                    f"notional {size.qty * price:.2f} exceeds the room left under "
                    f"{self.limits.max_total_leverage}x total leverage ({room:.2f})",
                )
        check_book(quote, self.hub.age_ms(prepare.symbol), intent.side, size.qty, self.l2)
        assert quote is not None
        if price is None:
            raise EntryRejected(
                Reason.SLIPPAGE_TOO_HIGH,
                f"the book ({quote.bid}/{quote.ask}) has left the entry zone {zone_min}-{zone_max}",
            )
        leverage = min(
            Decimal(repr(prepare.leverage)),
            rules.max_leverage,
            self.instruments[prepare.symbol].max_leverage,
        )
        instrument = self.instruments[prepare.symbol]
        long = intent.side.sign > 0
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
            # on the tick grid as the exchange will hold them: what is recorded and
            # shown is what protects the position
            stop_loss=instrument.stop_price(Decimal(repr(prepare.stop_loss)), long),
            take_profits=tuple(
                instrument.target_price(Decimal(repr(tp)), long) for tp in prepare.take_profits
            ),
            trap_type=prepare.trap_type,
        )
        return order, plan
