"""The ops HTTP API (SPEC §8) on Quart-Trio.

Reads only: every answer is built from the engine's live objects or the store. Money and
quantities are exact decimals written as JSON numbers. Every error is JSON
``{"error", "message"}`` with a 4xx code; a 5xx is a bug and is logged with its traceback.

Query strings are parsed before an endpoint runs, against the parameters it declares in
``query_specs`` (api/query.py: unknown or malformed parameters answer 400). The endpoints
take no path parameters, and the POST endpoints read no body (one sent is ignored; their
only parameter, ``trading_state`` of the breaker reset, is in the query string). The
bearer token and its throttle are api/auth.py.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from titan_trio.api import schemas
from titan_trio.api.auth import TokenThrottle, token_matches
from titan_trio.api.openapi import OPENAPI
from titan_trio.api.query import IsoDate, OneOf, QueryError, QuerySpec, WholeNumber, parse_query
from titan_trio.api.schemas import MUTATING, ROUTES
from titan_trio.clock import iso_utc, now_ms
from titan_trio.risk.breaker import TradingState
from titan_trio.risk.sizing import RiskLimits, phase_rules
from titan_trio.state import records
from titan_trio.state.shadow import utc_day

if TYPE_CHECKING:
    from titan_trio.engine import Engine

log = logging.getLogger("titan.api")
_encoder = msgspec.json.Encoder(decimal_format="number")
MAX_TRADES_LIMIT = 1000
DEFAULT_TRADES_LIMIT = 100


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status=status, content_type="application/json")


def error_response(status: int, error: str, message: str) -> Response:
    return json_response(schemas.Error(error=error, message=message), status)


def _state(engine: Engine) -> Any:
    return engine.risk.trading_state.value


# Probes take no parameters and ignore what they get: an uptime monitor's cache-buster
# (``/api/health?_=1700000000``) or a Prometheus job's ``params`` must not turn them red.
PROBES = frozenset({"/api/health", "/metrics"})


def query_specs(symbols: list[str]) -> dict[str, QuerySpec]:
    """The query parameters each endpoint takes, by route; an endpoint not listed takes none."""
    return {
        "/api/trades": {
            "date": IsoDate(),
            "limit": WholeNumber(1, MAX_TRADES_LIMIT, default=DEFAULT_TRADES_LIMIT),
            "symbol": OneOf(tuple(symbols)),
        },
        "/api/risk/breaker/reset": {
            "trading_state": OneOf(
                (TradingState.ACTIVE.value, TradingState.REDUCING.value),
                default=TradingState.ACTIVE.value,
            ),
        },
    }


def create_app(engine: Engine) -> QuartTrio:
    app = QuartTrio("titan_trio")
    app.config["JSON_SORT_KEYS"] = False
    specs = query_specs(engine.cfg.symbols)
    throttle = TokenThrottle(log)

    @app.before_request
    async def parse_query_string() -> None:
        """``g.query``: the request's query parameters, parsed for its endpoint (a request
        for no endpoint goes on to its 404 or 405)."""
        if request.url_rule is not None:
            rule = request.url_rule.rule
            g.query = {} if rule in PROBES else parse_query(request.args, specs.get(rule, {}))

    @app.errorhandler(QueryError)
    async def bad_query(exc: QueryError) -> Response:
        return error_response(400, exc.error, exc.message)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        if code == 404:
            message = f"no endpoint at {request.path}; see /api/openapi.json"
        elif code == 405:
            message = f"{request.method} is not allowed on {request.path}"
        else:
            message = exc.description or name
        return error_response(code, name, message)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.error("API error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "internal_error", "the service failed to answer; see logs")

    def operator() -> str:
        """Who asked, for the logs: the CLI names the user; otherwise the peer address."""
        named = request.headers.get("X-Titan-Operator", "")
        named = "".join(ch for ch in named if ch.isprintable())[:64].strip()
        return named or f"api {request.remote_addr}"

    def authorized() -> Response | None:
        """None when the request may go on; else the refusal: 401 for a missing or wrong
        token, 429 instead while its client is throttled. A right token always passes:
        on a loopback API every local process shares one address, and a process guessing
        must never keep the operator out of an emergency flatten."""
        token = engine.cfg.api.token
        if token is None:
            return None
        client = request.remote_addr or "unknown"
        if token_matches(request.headers.get("Authorization", ""), token):
            throttle.succeeded(client)
            return None
        wait_s = throttle.retry_after(client)
        if wait_s is not None:
            refusal = error_response(
                429,
                "too_many_attempts",
                f"too many wrong or missing bearer tokens from {client}; try again in {wait_s} s",
            )
            refusal.headers["Retry-After"] = str(wait_s)
            return refusal
        throttle.failed(client, f"{request.method} {request.path}")
        return error_response(
            401, "unauthorized", "this endpoint needs Authorization: Bearer <api.token>"
        )

    @app.before_request
    async def guard_mutating() -> Response | None:
        """The one place that guards every mutating endpoint (schemas.MUTATING)."""
        rule = request.url_rule
        if rule is not None and rule.rule in MUTATING and request.method == "POST":
            return authorized()
        return None

    async def health() -> Response:
        body = engine.health()
        answer = msgspec.convert(body, schemas.Health)
        return json_response(answer, 503 if body["status"] in ("unhealthy", "starting") else 200)

    async def equity() -> Response:
        return json_response(await equity_view(engine))

    async def positions() -> Response:
        return json_response(positions_view(engine))

    async def orders() -> Response:
        return json_response(orders_view(engine))

    async def market() -> Response:
        return json_response(market_view(engine))

    async def trades() -> Response:
        q = g.query
        rows = await engine.store.call(records.list_trades, q["date"], q["limit"], q["symbol"])
        return json_response([schemas.Trade(**row) for row in rows])

    async def risk() -> Response:
        return json_response(risk_view(engine))

    async def pause() -> Response:
        await engine.risk.pause(operator())
        return json_response(schemas.TradingStateAnswer(trading_state=_state(engine)))

    async def resume() -> Response:
        problem = await engine.risk.resume(operator())
        if problem is not None:
            return error_response(409, "conflict", problem)
        return json_response(schemas.TradingStateAnswer(trading_state=_state(engine)))

    async def breaker_reset() -> Response:
        wanted = TradingState(g.query["trading_state"])
        was_tripped = await engine.risk.reset_breaker(operator(), wanted)
        return json_response(
            schemas.BreakerReset(
                reset=was_tripped,
                message="circuit breaker reset"
                if was_tripped
                else "the circuit breaker was not tripped; nothing to reset",
                trading_state=_state(engine),
            )
        )

    async def flatten_all() -> Response:
        report = await engine.risk.flatten_all(operator())
        return json_response(
            schemas.Flattened(
                cancelled_orders=list(report.cancelled_orders),
                closed_positions=msgspec.convert(
                    report.closed_positions, list[schemas.ClosedPosition], strict=False
                ),
                errors=list(report.errors),
                trading_state=_state(engine),
                message="nothing to do: no open orders or positions"
                if report.nothing_to_do
                else f"cancelled {len(report.cancelled_orders)} orders, closed "
                f"{len(report.closed_positions)} positions",
            )
        )

    async def reconcile() -> Response:
        log.warning("reconciliation requested by %s", operator())
        report = await engine.reconciler.reconcile()
        return json_response(
            schemas.Reconciled(
                differences=list(report.differences),
                actions=list(report.actions),
                errors=list(report.errors),
                message="no differences"
                if not report.differences and not report.errors
                else f"{len(report.differences)} differences, {len(report.actions)} healed, "
                f"{len(report.errors)} errors",
            )
        )

    async def openapi() -> Response:
        return json_response(OPENAPI)

    async def metrics() -> Response:
        return Response(
            engine.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    handlers = {
        "/api/health": health,
        "/api/state/equity": equity,
        "/api/state/positions": positions,
        "/api/state/orders": orders,
        "/api/market": market,
        "/api/trades": trades,
        "/api/risk": risk,
        "/api/trading/pause": pause,
        "/api/trading/resume": resume,
        "/api/risk/breaker/reset": breaker_reset,
        "/api/emergency/flatten-all": flatten_all,
        "/api/state/reconcile": reconcile,
        "/api/openapi.json": openapi,
        "/metrics": metrics,
    }
    # Served exactly as the route table says (the table the OpenAPI document is made of).
    for route in ROUTES:
        app.add_url_rule(route.path, route.path, handlers.pop(route.path), methods=[route.method])
    assert not handlers, f"handlers without a route: {sorted(handlers)}"

    return app


async def equity_view(engine: Engine) -> schemas.Equity:
    shadow = engine.shadow
    book = engine.hub.book
    tracker = engine.risk.tracker
    equity = engine.equity_monitor.equity()
    realized_today = await engine.store.call(records.realized_pnl_on, utc_day(now_ms()))
    return schemas.Equity(
        equity=equity,
        balance=shadow.balance,
        unrealized_pnl=shadow.unrealized_pnl(book),
        realized_pnl_today=realized_today,
        peak_equity=tracker.peak_equity,
        drawdown_pct=round(float(tracker.drawdown_pct), 4),
        initial_capital=tracker.initial_capital,
        phase=phase_rules(equity, RiskLimits.from_config(engine.cfg.risk)).phase,
        trading_state=_state(engine),
        breaker=schemas.Breaker(**breaker_view(engine)),
        currency="USDT",
    )


def _number(text: str) -> Decimal | str:
    """A figure recorded as text, as a number when it is one."""
    try:
        number = Decimal(text)
    except ArithmeticError:
        return text
    return number if number.is_finite() else text  # NaN is no JSON number


def breaker_view(engine: Engine) -> dict[str, Any]:
    state = engine.risk.state
    return {
        "tripped": state.tripped,
        "cause": None if state.trip is None else state.trip.cause,
        "message": None if state.trip is None else state.trip.message,
        "tripped_at": iso_utc(state.tripped_at_ms),
        "consecutive_losses": state.consecutive_losses,
    }


def risk_view(engine: Engine) -> schemas.Risk:
    cfg = engine.cfg
    r = cfg.risk
    tracker = engine.risk.tracker
    equity = engine.equity_monitor.equity()
    rules = phase_rules(equity, RiskLimits.from_config(r))
    book = engine.hub.book
    notional = engine.shadow.total_notional(book)
    return schemas.Risk(
        trading_state=_state(engine),
        breaker=schemas.RiskBreaker(
            **breaker_view(engine),
            figures=None
            if engine.risk.state.trip is None
            else {k: _number(v) for k, v in engine.risk.state.trip.figures.items()},
        ),
        phase=rules.phase,
        effective_risk_pct=float(rules.risk_pct),
        phase_max_leverage=float(rules.max_leverage),
        execution_style=str(rules.execution),
        equity=equity,
        peak_equity=tracker.peak_equity,
        drawdown_pct=round(float(tracker.drawdown_pct), 4),
        day_start_equity=tracker.day_start_equity,
        daily_pnl=tracker.daily_pnl,
        open_positions=len(engine.shadow.positions),
        total_notional=notional,
        total_leverage=round(notional / equity, 4) if equity > 0 else None,
        limits={
            "maxRiskPct": r.max_risk_pct,
            "phaseRiskPct": [r.phase1_risk_pct, r.phase2_risk_pct, r.phase3_risk_pct],
            "phaseMaxEquity": [r.phase1_max_equity, r.phase2_max_equity],
            "phaseMaxLeverage": [
                r.phase1_max_leverage,
                r.phase2_max_leverage,
                r.phase3_max_leverage,
            ],
            "maxPositions": r.max_positions,
            "allowPyramiding": r.allow_pyramiding,
            "maxTotalLeverage": r.max_total_leverage,
            "maxDrawdownPct": r.max_drawdown_pct,
            "maxDailyLossPct": r.max_daily_loss_pct,
            "maxConsecutiveLosses": r.max_consecutive_losses,
            "flattenOnBreaker": r.flatten_on_breaker,
        },
        history=[
            schemas.RiskHistory(action=h["action"], by=h["by"], at=iso_utc(h["at"]))
            for h in engine.risk.state.history
        ],
    )


def positions_view(engine: Engine) -> list[schemas.Position]:
    shadow = engine.shadow
    marks = shadow.marks(engine.hub.book)
    out = []
    for symbol, rec in sorted(shadow.positions.items()):
        p = rec.position
        side = p.side
        out.append(
            schemas.Position(
                symbol=symbol,
                side="LONG" if side is not None and side.sign > 0 else "SHORT",
                size=p.abs_size,
                entry_price=p.entry_price,
                mark_price=marks[symbol],
                unrealized_pnl=p.unrealized_pnl(marks[symbol]),
                realized_pnl=p.realized_pnl,
                fees=p.fees,
                leverage=p.leverage,
                stop_loss=rec.stop_loss,
                take_profits=list(rec.take_profits),
                opened_at=iso_utc(p.opened_ms),
                signal_id=rec.signal_id,
                trap_type=rec.trap_type,
            )
        )
    return out


def orders_view(engine: Engine) -> list[schemas.OpenOrder]:
    return [
        schemas.OpenOrder(
            client_order_id=o.client_order_id,
            exchange_order_id=o.exchange_order_id,
            symbol=o.symbol,
            side=o.side.value,  # type: ignore[arg-type]
            type=o.order_type.value,  # type: ignore[arg-type]
            time_in_force=o.time_in_force.value,
            qty=o.qty,
            price=o.price,
            filled_qty=o.filled_qty,
            avg_fill_price=o.avg_fill_price,
            reduce_only=o.reduce_only,
            status=o.status.value,
            signal_id=o.signal_id,
            created_at=iso_utc(o.created_ms),
            updated_at=iso_utc(o.updated_ms),
        )
        for o in sorted(engine.shadow.orders.values(), key=lambda o: o.created_ms)
    ]


def market_view(engine: Engine) -> dict[str, schemas.MarketQuote]:
    """Per symbol: the venue's quote in the top-level fields (what the gates and marks
    use; None before the venue has quoted it) and every feed's under ``sources``."""
    hub = engine.hub
    book = hub.book
    out: dict[str, schemas.MarketQuote] = {}
    for symbol in book.symbols():
        q = book.get(symbol)
        sources = {
            source: schemas.SourceQuote(
                bid=s.bid,
                ask=s.ask,
                bid_size=s.bid_size,
                ask_size=s.ask_size,
                last=s.last,
                spread_pct=round(s.spread_pct, 6),
                age_ms=hub.age_ms(symbol, source),
            )
            for source, s in book.quotes(symbol).items()
        }
        out[symbol] = schemas.MarketQuote(
            bid=None if q is None else q.bid,
            ask=None if q is None else q.ask,
            bid_size=None if q is None else q.bid_size,
            ask_size=None if q is None else q.ask_size,
            last=None if q is None else q.last,
            spread_pct=None if q is None else round(q.spread_pct, 6),
            age_ms=hub.age_ms(symbol),
            source=book.venue if q is None else q.source,
            sources=sources,
        )
    return out
