"""The Bybit v5 broker (linear USDT perpetuals, one-way mode): the broker interface of
brokers/base.py over REST (rest.py) and the private stream (stream.py).

Orders
- ``orderLinkId`` is our client order id (derived from the signal id, 35 characters):
  the same order can never be made twice, and every answer or event finds its order.
- ``submit`` returns the order as the exchange acknowledged it (ACCEPTED), raises
  BrokerRejected only when the answer proves the order was not taken, and otherwise
  returns it SUBMITTED (in flight): a timeout, a lost connection, a 5xx or 10016. The
  private stream, a status query or reconciliation settles it; it is never sent again
  under a new id. 110072 (the id exists) is settled at once by asking for the order.
  Too many requests: sent again with the same id after the reset time (at most
  PATIENCE_ATTEMPTS times); still refused, the order is looked up once, and only a
  "not found" makes it REJECTED (RATE_LIMITED).
- Before the first order of a symbol, and whenever the wanted leverage changes, the
  symbol's leverage is set (110043, already set, is fine).
- The stop loss is the position's own (``/v5/position/trading-stop``): held by the
  exchange, it works while this service is down. Take profits are reduce-only limit
  orders (execution/protection.py).

Events
- The private stream's ``order`` and ``execution`` items become OrderEvents and
  FillEvents, in the order they arrived; an execution already sent is not sent again.
  ``wallet`` items become a BalanceEvent only after WALLET_QUIET_S without executions:
  Bybit's topics are separate messages, and a balance taken before its fill arrives
  would count that fill's P&L twice.
- While the stream is down, REST polling (every POLL_INTERVAL_S) takes over: new
  executions since the last one seen, the open orders, and each order that left the
  open list asked for by its id (the balance waits for reconciliation). When the
  stream is back after a gap, ``on_reconnect`` asks for a reconciliation.

Reconciliation's snapshot (``account``) is read over several requests; executions are
read before and after the rest, and the snapshot is taken again when a fill landed in
between (a position read before a fill and the fill itself would disagree).
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import trio

from titan_trio.brokers.base import (
    AccountSnapshot,
    BalanceEvent,
    BrokerEvent,
    FillEvent,
    OrderEvent,
)
from titan_trio.brokers.bybit import convert
from titan_trio.brokers.bybit.answers import Answer, Outcome
from titan_trio.brokers.bybit.rest import BybitRest, TimeSyncFailed
from titan_trio.brokers.bybit.stream import PrivateStream
from titan_trio.clock import iso_utc, now_ms
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Fill, Order, OrderRequest, OrderStatus
from titan_trio.domain.positions import Position
from titan_trio.errors import BrokerRejected, BrokerUnavailable, StartupError

log = logging.getLogger("titan.broker.bybit")
T = TypeVar("T")
POLL_INTERVAL_S = 2.0
WALLET_QUIET_S = 1.0
INSTRUMENTS_REFRESH_S = 24 * 3600.0
INSTRUMENTS_RETRY_S = 60.0
START_ATTEMPTS = 3  # reaching the exchange at start: tries before starting without it
EXEC_PAGE = 100  # Bybit's maximum page for executions
EXEC_WINDOW_MS = 7 * 24 * 3600 * 1000  # Bybit answers at most 7 days per execution query
EXEC_HISTORY_MS = 730 * 24 * 3600 * 1000  # Bybit keeps two years of executions
EXEC_OVERLAP_MS = 60_000  # polling reads executions again this far back (late ones)
SNAPSHOT_ATTEMPTS = 3
SENT_EXEC_MEMORY = 20_000
FOUND_AFTER_AMBIGUOUS_S = 0.3  # an ambiguous create is looked up once after this


class BybitBroker:
    name = "bybit"
    # How late a fill may appear in /v5/execution/list after its events (reconciliation
    # waits this long before taking a position whole for want of its fills).
    history_lag_ms = 30_000

    def __init__(
        self,
        rest: BybitRest,
        ws_private_url: str,
        instruments: dict[str, Instrument],
        symbols: list[str],
        *,
        event_buffer: int = 1024,
        poll_interval_s: float = POLL_INTERVAL_S,
        rng: random.Random | None = None,
    ) -> None:
        self.rest = rest
        self.instruments = instruments  # shared with the service: updated in place
        self.symbols = list(symbols)
        self.poll_interval_s = poll_interval_s
        self._send, self.events = trio.open_memory_channel[BrokerEvent](event_buffer)
        self.events_sent = 0
        self.stream = PrivateStream(
            ws_private_url,
            rest.stream_auth,
            lambda: rest.clock.server_ms(now_ms()),
            self._on_items,
            on_up=self._stream_up,
            on_down=self._stream_down,
            rng=rng,
        )
        self.on_reconnect: Callable[[], None] = lambda: None
        self._leverage: dict[str, str] = {}
        self._open: dict[str, str] = {}  # client order id -> symbol, orders we saw open
        self._sent_execs: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_exec_ms = now_ms()
        self._wallet: Decimal | None = None
        self._last_exec_event = 0.0
        self._wallet_at = 0.0
        self._wallet_changed = trio.Event()
        self._stream_changed = trio.Event()
        self._had_gap = False
        self.instruments_loaded_ms: int | None = None
        self.polls = 0

    # ----- start and background work -------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reach the exchange (server time, instruments, a signed call that proves the
        keys), then start the stream, polling, wallet and instrument refresh. Keys the
        exchange refuses stop the start with a clear message; an exchange that cannot be
        reached does not: the service starts, health shows it, and everything retries."""
        for attempt in range(START_ATTEMPTS):
            try:
                await self._reach()
                break
            except BrokerUnavailable as exc:
                log.warning("Bybit not reachable at %s (%s)", self.rest.base_url, exc)
                if attempt + 1 < START_ATTEMPTS:
                    await trio.sleep(1.0)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.stream.run)
                nursery.start_soon(self._poll_loop)
                nursery.start_soon(self._wallet_loop)
                nursery.start_soon(self._instruments_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.rest.aclose()

    async def _reach(self) -> None:
        try:
            await self.rest.sync_time()
        except TimeSyncFailed as exc:
            raise BrokerUnavailable(str(exc)) from None
        log.info("Bybit server clock: local clock is %+d ms off", -self.rest.clock.skew_ms)
        await self._load_instruments()
        answer = await self.rest.call_patiently(
            "GET", "/v5/account/wallet-balance", {"accountType": "UNIFIED", "coin": "USDT"}
        )
        if answer.outcome is Outcome.AUTH:
            raise StartupError(
                f"Bybit refused the API key ({answer.message}); check TITAN_BYBIT_API_KEY / "
                "TITAN_BYBIT_API_SECRET, the key's permissions (Contract: Orders and "
                "Positions) and its IP whitelist"
            )
        self._expect_ok(answer, "wallet balance")

    async def _load_instruments(self) -> None:
        rows = await self._pages(
            "/v5/market/instruments-info", {"category": "linear", "limit": 1000}, signed=False
        )
        found: dict[str, Instrument] = {}
        for row in rows:
            if not isinstance(row, dict) or row.get("symbol") not in self.symbols:
                continue
            if row.get("status", "Trading") != "Trading":
                log.error("Bybit: %s is %s, not Trading", row.get("symbol"), row.get("status"))
            try:
                inst = convert.instrument(row)
            except convert.BadRow as exc:
                log.warning("Bybit instrument %s unreadable: %s", row.get("symbol"), exc)
                continue
            found[inst.symbol] = inst
        missing = [s for s in self.symbols if s not in found]
        if missing:
            log.error("Bybit lists no linear instrument %s", ", ".join(missing))
        self.instruments.update(found)
        self.instruments_loaded_ms = now_ms()
        log.info("Bybit instruments loaded: %s", ", ".join(sorted(found)))

    async def _instruments_loop(self) -> None:
        while True:
            await trio.sleep(
                INSTRUMENTS_REFRESH_S if self.instruments_loaded_ms else INSTRUMENTS_RETRY_S
            )
            try:
                if not self.rest.clock.synced:
                    await self.rest.sync_time()
                await self._load_instruments()
            except (BrokerUnavailable, TimeSyncFailed) as exc:
                log.warning("Bybit instruments not refreshed: %s", exc)

    # ----- orders --------------------------------------------------------------------

    async def submit(self, request: OrderRequest) -> Order:
        if not request.reduce_only:
            await self._set_leverage(request)
        params = convert.create_params(request)
        answer = await self.rest.call_patiently("POST", "/v5/order/create", params)
        order = _order_of(request)
        if answer.outcome is Outcome.OK:
            self._open[request.client_order_id] = request.symbol
            result = answer.result if isinstance(answer.result, dict) else {}
            order.exchange_order_id = str(result.get("orderId") or "") or None
            order.status = OrderStatus.ACCEPTED
            return order
        if answer.outcome is Outcome.EXISTS:
            log.warning(
                "order %s exists at Bybit already (110072): settling it", order.client_order_id
            )
            found, _answered = await self._look_up(request.symbol, request.client_order_id)
            return found or order
        if answer.outcome is Outcome.RATE_LIMITED:
            found, answered = await self._look_up(request.symbol, request.client_order_id)
            if found is not None:
                return found
            if answered:  # proven absent: the limit refused it
                raise BrokerRejected("RATE_LIMITED", f"Bybit: {answer.message}")
            self._open[request.client_order_id] = request.symbol  # polling asks about it
            return order
        if answer.proven_not_taken:
            raise BrokerRejected(answer.reason, f"Bybit: {answer.message}")
        # Ambiguous: maybe made. Left in flight; looked up once, the stream may settle it.
        log.warning(
            "order %s: Bybit's answer proves nothing (%s); in flight until the exchange "
            "tells (stream, status query, reconciliation)",
            order.client_order_id,
            answer.message,
        )
        self._open[request.client_order_id] = request.symbol
        await trio.sleep(FOUND_AFTER_AMBIGUOUS_S)
        found, _answered = await self._look_up(request.symbol, request.client_order_id)
        return found or order

    async def _set_leverage(self, request: OrderRequest) -> None:
        text = convert.leverage_text(request.leverage, self.instruments.get(request.symbol))
        if self._leverage.get(request.symbol) == text:
            return
        answer = await self.rest.call_patiently(
            "POST",
            "/v5/position/set-leverage",
            {
                "category": "linear",
                "symbol": request.symbol,
                "buyLeverage": text,
                "sellLeverage": text,
            },
        )
        if answer.outcome is Outcome.OK:
            self._leverage[request.symbol] = text
        elif answer.proven_not_taken:
            raise BrokerRejected(answer.reason, f"Bybit leverage {text}x: {answer.message}")
        else:
            log.warning(
                "Bybit leverage %s for %s not confirmed: %s", text, request.symbol, answer.message
            )

    async def _look_up(self, symbol: str, client_order_id: str) -> tuple[Order | None, bool]:
        """The order as the exchange has it (or None), and whether the exchange answered:
        (None, True) proves it has no such order; (None, False) proves nothing."""
        try:
            return await self.order_status(symbol, client_order_id), True
        except BrokerUnavailable as exc:
            log.warning("order %s: lookup failed (%s)", client_order_id, exc)
            return None, False

    async def cancel(self, symbol: str, client_order_id: str) -> Order:
        answer = await self.rest.call_patiently(
            "POST",
            "/v5/order/cancel",
            {"category": "linear", "symbol": symbol, "orderLinkId": client_order_id},
        )
        return await self._after_change(answer, symbol, client_order_id, "cancel")

    async def amend(self, symbol: str, client_order_id: str, price: Decimal) -> Order:
        inst = self.instruments.get(symbol)
        if inst is not None and not inst.is_on_tick(price):
            raise BrokerRejected("INVALID_PRICE", f"{price} is not on the tick {inst.tick_size}")
        answer = await self.rest.call_patiently(
            "POST",
            "/v5/order/amend",
            {
                "category": "linear",
                "symbol": symbol,
                "orderLinkId": client_order_id,
                "price": convert.plain(price),
            },
        )
        return await self._after_change(answer, symbol, client_order_id, "amend")

    async def _after_change(
        self, answer: Answer, symbol: str, client_order_id: str, what: str
    ) -> Order:
        if answer.outcome in (Outcome.NOT_FOUND, Outcome.FINISHED) or (
            answer.outcome is not Outcome.OK and answer.proven_not_taken
        ):
            raise BrokerRejected(answer.reason, f"Bybit {what}: {answer.message}")
        if answer.outcome is not Outcome.OK:
            raise BrokerUnavailable(f"Bybit {what} of {client_order_id}: {answer.message}")
        found = await self.order_status(symbol, client_order_id)
        if found is None:
            raise BrokerUnavailable(f"Bybit {what} of {client_order_id}: order not found after")
        return found

    async def cancel_all(self, symbol: str | None = None) -> list[str]:
        """Cancel every open order (of one symbol, or all USDT ones); the ids cancelled."""
        params: dict[str, Any] = {"category": "linear"}
        params.update({"symbol": symbol} if symbol else {"settleCoin": "USDT"})
        answer = await self.rest.call_patiently("POST", "/v5/order/cancel-all", params)
        return [
            coid
            for coid in parsed(convert.link_id, _rows(self._expect_ok(answer, "cancel-all")), "id")
        ]

    async def order_status(self, symbol: str, client_order_id: str) -> Order | None:
        """The exchange's view of one order, open or finished; None when it has none
        (open and recent orders first, then the order history)."""
        params = {"category": "linear", "symbol": symbol}
        if client_order_id.startswith(convert.EXCHANGE_MADE_PREFIX):
            params["orderId"] = client_order_id[len(convert.EXCHANGE_MADE_PREFIX) :]
        else:
            params["orderLinkId"] = client_order_id
        for path in ("/v5/order/realtime", "/v5/order/history"):
            answer = await self.rest.call_patiently("GET", path, params)
            if path == "/v5/order/history" and answer.reason in (
                "ROUTE_NOT_FOUND",
                "INVALID_REQUEST",
            ):
                return None  # (an exchange without the history endpoint)
            rows = _rows(self._expect_ok(answer, "order status"))
            for found in parsed(convert.listed_order, rows, "order"):
                if found.client_order_id == client_order_id:
                    return found
        return None

    async def open_orders(self) -> list[Order]:
        rows = await self._pages(
            "/v5/order/realtime",
            {"category": "linear", "settleCoin": "USDT", "openOnly": 0, "limit": 50},
        )
        return [o for o in parsed(convert.listed_order, rows, "order") if o.status.is_open]

    # ----- positions, stops, balance --------------------------------------------------

    async def _position_rows(self, symbol: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"category": "linear", "limit": 200}
        params.update({"symbol": symbol} if symbol else {"settleCoin": "USDT"})
        return await self._pages("/v5/position/list", params)

    async def positions(self) -> list[Position]:
        return parsed(convert.position, await self._position_rows(), "position")

    async def stop_loss(self, symbol: str) -> Decimal | None:
        for held in parsed(_stop_of, await self._position_rows(symbol), "position"):
            if held[0] == symbol:
                return held[1]
        return None

    async def set_stop_loss(self, symbol: str, stop_loss: Decimal | None) -> None:
        answer = await self.rest.call_patiently(
            "POST",
            "/v5/position/trading-stop",
            {
                "category": "linear",
                "symbol": symbol,
                "stopLoss": "0" if stop_loss is None else convert.plain(stop_loss),
                "tpslMode": "Full",
                "positionIdx": 0,
            },
        )
        if answer.outcome is Outcome.OK:
            return
        if answer.proven_not_taken:
            held = [p for p in await self.positions() if p.symbol == symbol]
            if not held:
                raise BrokerRejected("NO_POSITION", f"Bybit holds no {symbol} position")
            raise BrokerRejected(answer.reason, f"Bybit trading-stop: {answer.message}")
        raise BrokerUnavailable(f"Bybit trading-stop {symbol}: {answer.message}")

    async def balance(self) -> Decimal:
        answer = await self.rest.call_patiently(
            "GET", "/v5/account/wallet-balance", {"accountType": "UNIFIED", "coin": "USDT"}
        )
        try:
            return convert.usdt_balance(self._expect_ok(answer, "wallet balance"))
        except convert.BadRow as exc:
            raise BrokerUnavailable(f"Bybit wallet balance unreadable: {exc}") from None

    # ----- executions and the reconciliation snapshot ---------------------------------

    async def fills_since(self, since_ms: int) -> list[Fill]:
        """Every execution that moved a position since ``since_ms``, oldest first (read
        in Bybit's 7-day windows, every page)."""
        fills: dict[str, Fill] = {}
        now = now_ms() + 60_000
        start = max(since_ms, now - EXEC_HISTORY_MS)
        while start < now:
            end = min(start + EXEC_WINDOW_MS - 1, now)
            rows = await self._pages(
                "/v5/execution/list",
                {"category": "linear", "startTime": start, "endTime": end, "limit": EXEC_PAGE},
            )
            for f in parsed(convert.fill, rows, "execution"):
                if f.ts_ms >= since_ms:
                    fills[f.exec_id] = f
            start = end + 1
        return sorted(fills.values(), key=lambda f: (f.ts_ms, f.exec_id))

    async def account(self, fills_since_ms: int | None = None) -> AccountSnapshot:
        since = fills_since_ms if fills_since_ms is not None else now_ms() - EXEC_OVERLAP_MS
        for _attempt in range(SNAPSHOT_ATTEMPTS):
            before = await self.fills_since(since)
            positions = await self.positions()
            orders = await self.open_orders()
            balance = await self.balance()
            sent = self.events_sent
            after = await self.fills_since(max([since] + [f.ts_ms for f in before]))
            known = {f.exec_id for f in before}
            if all(f.exec_id in known for f in after):
                return AccountSnapshot(
                    positions=positions,
                    open_orders=orders,
                    balance=balance,
                    events_sent=sent,
                    fills=before if fills_since_ms is not None else [],
                )
        raise BrokerUnavailable("Bybit: fills kept landing during the snapshot; try later")

    # ----- the private stream and its fallback ----------------------------------------

    async def _emit(self, event: BrokerEvent) -> None:
        await self._send.send(event)
        self.events_sent += 1

    async def _on_items(self, topic: str, items: list[dict[str, Any]]) -> None:
        linear = [row for row in items if row.get("category") in (None, "linear")]
        if topic == "order":
            for order in parsed(convert.listed_order, linear, "order"):
                await self._send_order(order)
        elif topic == "execution":
            self._last_exec_event = trio.current_time()
            for f in parsed(convert.fill, linear, "execution"):
                await self._send_fill(f)
        elif topic == "wallet":
            try:
                self._wallet = convert.usdt_balance(items)
            except convert.BadRow as exc:
                log.warning("Bybit wallet item unreadable, skipped: %s", exc)
                return
            self._wallet_at = trio.current_time()
            self._wallet_changed.set()

    async def _send_order(self, order: Order) -> None:
        if order.status.is_open:
            self._open[order.client_order_id] = order.symbol
        else:
            self._open.pop(order.client_order_id, None)
        await self._emit(OrderEvent(order))

    async def _send_fill(self, f: Fill) -> bool:
        """A fill as an event, once (the stream and polling may both see it); whether
        it was sent now."""
        if f.exec_id in self._sent_execs:
            return False
        self._sent_execs[f.exec_id] = None
        while len(self._sent_execs) > SENT_EXEC_MEMORY:
            self._sent_execs.popitem(last=False)
        self._last_exec_ms = max(self._last_exec_ms, f.ts_ms)
        await self._emit(FillEvent(f))
        return True

    def _stream_up(self) -> None:
        self._stream_changed.set()
        self._stream_changed = trio.Event()
        if self._had_gap:
            self._had_gap = False
            log.info("Bybit private stream back: reconciling what happened meanwhile")
            self.on_reconnect()

    def _stream_down(self) -> None:
        self._had_gap = True
        self._stream_changed.set()
        self._stream_changed = trio.Event()

    async def _wallet_loop(self) -> None:
        """The newest wallet balance as an event, once executions have been quiet for
        WALLET_QUIET_S (so its fills are applied before it)."""
        while True:
            await self._wallet_changed.wait()
            self._wallet_changed = trio.Event()
            # quiet since the wallet item and the last execution, whichever came later:
            # its execution may follow it (Bybit does not order its topics)
            while (  # noqa: ASYNC110
                trio.current_time() < max(self._last_exec_event, self._wallet_at) + WALLET_QUIET_S
            ):
                await trio.sleep_until(max(self._last_exec_event, self._wallet_at) + WALLET_QUIET_S)
            if self._wallet is not None:
                await self._emit(BalanceEvent(self._wallet))

    async def _poll_loop(self) -> None:
        """While the stream is not connected: executions, open orders and finished ones
        over REST, every poll interval."""
        while True:
            if self.stream.connected:
                await self._stream_changed.wait()
                continue
            try:
                await self.poll_once()
            except BrokerUnavailable as exc:
                log.warning("Bybit polling: %s", exc)
            await trio.sleep(self.poll_interval_s)

    async def poll_once(self) -> None:
        """New fills, then the open orders and the ones that left the open list. No
        balance: read apart from the fills it cannot be ordered with them (a fill landing
        between the two reads would count twice); reconciliation compares it."""
        self.polls += 1
        new_fills: dict[str, str] = {}  # their orders, with the symbol
        for f in await self.fills_since(self._last_exec_ms - EXEC_OVERLAP_MS):
            if await self._send_fill(f):
                new_fills[f.client_order_id] = f.symbol
        still_open = {o.client_order_id: o for o in await self.open_orders()}
        for order in still_open.values():
            self._open[order.client_order_id] = order.symbol
            await self._emit(OrderEvent(order))
        # the orders of new fills that are neither open nor followed (a stop the exchange
        # triggered, an order placed by hand): their final state, so they are recorded
        for coid, symbol in new_fills.items():
            if coid not in still_open and coid not in self._open:
                finished = await self.order_status(symbol, coid)
                if finished is not None:
                    await self._emit(OrderEvent(finished))
        for coid, symbol in list(self._open.items()):
            if coid in still_open:
                continue
            finished = await self.order_status(symbol, coid)
            if finished is not None:
                if not finished.status.is_open:
                    self._open.pop(coid, None)
                await self._emit(OrderEvent(finished))

    # ----- helpers --------------------------------------------------------------------

    async def _pages(
        self, path: str, params: dict[str, Any], *, signed: bool = True
    ) -> list[dict[str, Any]]:
        """Every row of a listing, following ``nextPageCursor``."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        for _page in range(1000):
            query = dict(params)
            if cursor:
                query["cursor"] = cursor
            answer = await self.rest.call_patiently("GET", path, query, signed=signed)
            result = self._expect_ok(answer, path)
            rows += _rows(result)
            cursor = result.get("nextPageCursor") if isinstance(result, dict) else None
            if not cursor:
                break
        return rows

    @staticmethod
    def _expect_ok(answer: Answer, what: str) -> Any:
        if answer.outcome is not Outcome.OK:
            raise BrokerUnavailable(f"Bybit {what}: {answer.reason} ({answer.message})")
        return answer.result

    def health(self) -> dict[str, Any]:
        rest = self.rest
        stream = self.stream
        age = None if stream.last_message is None else trio.current_time() - stream.last_message
        ok = rest.reachable and stream.connected
        return {
            "status": "healthy" if ok else "unhealthy",
            "name": self.name,
            "reachable": rest.reachable,
            "last_latency_ms": None
            if rest.last_latency_s is None
            else round(rest.last_latency_s * 1000, 3),
            "last_error": rest.last_error,
            "rest": {
                "url": rest.base_url,
                "requests": rest.requests,
                "rate_limited": rest.rate_limited,
            },
            "stream": {
                "state": stream.state,
                "connected": stream.connected,
                "reconnects": stream.reconnects,
                "last_message_age_s": None if age is None else round(age, 3),
                "last_error": stream.last_error,
                "polling": not stream.connected,
            },
            "clock_skew_ms": rest.clock.skew_ms if rest.clock.synced else None,
            "rate_limit_headroom": rest.limits.headroom(),
            "instruments_loaded_at": None
            if self.instruments_loaded_ms is None
            else iso_utc(self.instruments_loaded_ms),
        }

    async def aclose(self) -> None:
        await self.rest.aclose()


def parsed(
    parse: Callable[[dict[str, Any]], T | None], rows: list[dict[str, Any]], what: str
) -> list[T]:
    """Each row parsed; a row that cannot be what it claims is logged and skipped (it
    never reaches the shadow state), and None (a flat position, a funding row) left out."""
    out: list[T] = []
    for row in rows:
        try:
            item = parse(row)
        except convert.BadRow as exc:
            log.warning("Bybit %s row unreadable, skipped: %s", what, exc)
            continue
        if item is not None:
            out.append(item)
    return out


def _stop_of(row: dict[str, Any]) -> tuple[str, Decimal | None] | None:
    """(symbol, stop loss) of a position row that holds something; None when flat."""
    held = convert.position(row)
    return None if held is None else (held.symbol, convert.stop_loss(row))


def _rows(result: Any) -> list[dict[str, Any]]:
    rows = result.get("list") if isinstance(result, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _order_of(request: OrderRequest) -> Order:
    """Our view of an order just sent: SUBMITTED until the exchange says more."""
    stamp = now_ms()
    return Order(
        client_order_id=request.client_order_id,
        symbol=request.symbol,
        side=request.side,
        order_type=request.order_type,
        qty=request.qty,
        price=request.price,
        time_in_force=request.time_in_force,
        reduce_only=request.reduce_only,
        leverage=request.leverage,
        signal_id=request.signal_id,
        status=OrderStatus.SUBMITTED,
        created_ms=stamp,
        updated_ms=stamp,
    )


__all__ = ["BybitBroker"]
