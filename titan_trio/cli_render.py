"""What the ``titan`` API commands print for people: tables and short summaries.

Each renderer takes one typed answer of the ops API (``titan_trio.api.schemas``) and returns
the text to print; none does I/O, so each is tested on a realistic answer without a
service. Choices the docs leave open:

- Amounts are the API's exact decimals, printed with every digit the service wrote
  (``0.010`` stays ``0.010``) and never in exponent notation (``1E+3`` prints ``1000``):
  no float ever touches them. The few figures the API sends as floats (drawdown, risk
  percentages) print as their shortest exact text, which is what the service wrote.
- Moments print as the API gives them (ISO 8601 UTC with milliseconds): one spelling in
  the CLI, the API, the logs and the runbook, so a moment can be searched for in the log.
- In tables, numbers are right-aligned and text left-aligned; a missing value is ``-``.
  Columns are separated by two spaces and lines carry no trailing blanks, so ``awk`` and
  ``column`` work on them; ``--json`` is there for anything sturdier.
- An empty list says so in words ("no open positions"): an empty table reads like a
  failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from titan_trio.api.schemas import (
    BreakerReset,
    ClosedPosition,
    Equity,
    Flattened,
    Health,
    MarketQuote,
    OpenOrder,
    Position,
    Reconciled,
    Risk,
    RiskBreaker,
    Trade,
    TradingStateAnswer,
)

MISSING = "-"
RECENT_ACTIONS = 5  # operator actions shown by `titan risk` (all of them in --json)

STATE_MEANING = {
    "ACTIVE": "entries and exits allowed",
    "REDUCING": "exits only, no new entries",
    "HALTED": "no new orders from strategies",
}


# ----- values ---------------------------------------------------------------------------


def number(value: Decimal | float | int | None) -> str:
    """An API number as text: a Decimal with every digit it came with, never exponent
    notation; a float as its shortest round-trip text (the text the service wrote)."""
    if value is None:
        return MISSING
    if isinstance(value, Decimal):
        return format(value, "f")
    return repr(value)  # a float: 7.0 stays 7.0, 0.0812 stays 0.0812


def text(value: object) -> str:
    return MISSING if value is None or value == "" else str(value)


def duration(seconds: float | None) -> str:
    """An age or an uptime for people: milliseconds below a second, tenths of a second
    below ten, then seconds, minutes, hours, days (the exact figure is in ``--json``)."""
    if seconds is None:
        return MISSING
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s"


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


# ----- layout ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False  # right-aligned


def table(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> str:
    """Aligned columns under their headers: numbers right, text left."""
    body = [list(row) for row in rows]
    widths = [max([len(c.header), *(len(row[i]) for row in body)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if column.numeric else cell.ljust(width)
            for column, cell, width in zip(columns, cells, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line([c.header for c in columns]), *(line(row) for row in body)])


def block(rows: Sequence[tuple[str, str]]) -> str:
    """Labelled lines, the values in one column."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}".rstrip() for label, value in rows)


def amounts(rows: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(label, amount, note) rows with the amounts right-aligned among themselves, so
    the digits of equity, balance and P&L line up."""
    width = max(len(amount) for _, amount, _ in rows)
    return [(label, f"{amount.rjust(width)} {note}".rstrip()) for label, amount, note in rows]


# ----- health ---------------------------------------------------------------------------


def render_health(health: Health) -> str:
    """The overall status first, then one line per component with its key facts; the
    reasons a component is not healthy are on its line, not only in ``--json``."""
    lines = [f"{health.status} (titan {health.version}, up {duration(health.uptime_s)})"]
    components: list[tuple[str, str, list[str]]] = [
        ("websocket", _status(health.websocket), _feeds(health.websocket)),
        ("database", _status(health.database), [_database(health.database)]),
        ("ipc", _status(health.ipc), [_ipc(health.ipc)]),
        ("broker", _status(health.broker), [_broker(health.broker)]),
    ]
    rec_status, rec_lines = _reconciliation(health.reconciliation)
    components.append(("reconciliation", rec_status, rec_lines))
    name_w = max(len(name) for name, _, _ in components)
    status_w = max(len(status) for _, status, _ in components)
    for name, status, details in components:
        first, *more = details or [""]
        lines.append(f"  {name.ljust(name_w)}  {status.ljust(status_w)}  {first}".rstrip())
        lines.extend(f"  {'':{name_w}}  {'':{status_w}}  {detail}" for detail in more)
    return "\n".join(lines)


def _status(component: dict[str, Any]) -> str:
    return text(component.get("status"))


def _feeds(websocket: dict[str, Any]) -> list[str]:
    feeds: dict[str, dict[str, Any]] = websocket.get("feeds") or {}
    if not feeds:
        return ["no feeds"]
    out = []
    for name, feed in feeds.items():
        facts = [str(feed.get("state") or ("connected" if feed.get("connected") else "down"))]
        age = feed.get("last_message_age_s")
        facts.append("no message yet" if age is None else f"last message {duration(age)} ago")
        facts.append(plural(feed.get("reconnects") or 0, "reconnect"))
        if feed.get("malformed"):
            facts.append(plural(feed["malformed"], "malformed message"))
        if feed.get("status") != "healthy" and feed.get("last_error"):
            facts.append(f"last error: {feed['last_error']}")
        venue = " (venue)" if feed.get("venue") else ""
        out.append(f"{name}{venue}: {', '.join(facts)}")
    return out


def _database(db: dict[str, Any]) -> str:
    facts = (
        ["writable"]
        if db.get("writable")
        else [f"NOT writable: {db.get('not_writable_because') or 'unknown reason'}"]
    )
    age = db.get("last_commit_age_s")
    facts.append("no commit yet" if age is None else f"last commit {duration(age)} ago")
    if db.get("unsaved_changes"):
        facts.append(f"{plural(db['unsaved_changes'], 'change')} not saved")
    if db.get("trading_limited_to"):
        facts.append(f"trading limited to {db['trading_limited_to']}")
    if db.get("write_failures"):
        facts.append(plural(db["write_failures"], "write failure"))
    if db.get("status") != "healthy" and db.get("last_error"):
        facts.append(f"last error: {db['last_error']}")
    if db.get("path"):
        facts.append(str(db["path"]))
    return ", ".join(facts)


def _ipc(ipc: dict[str, Any]) -> str:
    facts = ["listening" if ipc.get("listening") else "NOT listening"]
    if ipc.get("socket_file") not in (None, "ours"):
        facts.append(f"socket file {ipc['socket_file']}")
    facts.append(f"{ipc.get('connections', 0)} of {ipc.get('max_connections', '?')} connections")
    if ipc.get("requests_in_progress"):
        facts.append(f"{ipc['requests_in_progress']} in progress")
    if ipc.get("prepared_intents"):
        facts.append(plural(ipc["prepared_intents"], "prepared signal"))
    facts.append("signed frames" if ipc.get("signed_frames") else "unsigned frames")
    if ipc.get("socket_path"):
        facts.append(str(ipc["socket_path"]))
    return ", ".join(facts)


def _broker(broker: dict[str, Any]) -> str:
    facts = ["reachable" if broker.get("reachable") else "NOT reachable"]
    stream = broker.get("stream")
    if isinstance(stream, dict):
        if stream.get("connected"):
            facts.append("stream connected")
        else:
            polling = ", polling" if stream.get("polling") else ""
            facts.append(f"stream {stream.get('state') or 'down'}{polling}")
        if stream.get("reconnects"):
            facts.append(plural(stream["reconnects"], "stream reconnect"))
    if broker.get("last_latency_ms") is not None:
        facts.append(f"latency {number(broker['last_latency_ms'])} ms")
    if broker.get("clock_skew_ms") is not None:
        facts.append(f"clock skew {number(broker['clock_skew_ms'])} ms")
    if broker.get("status") != "healthy" and broker.get("last_error"):
        facts.append(f"last error: {broker['last_error']}")
    return f"{text(broker.get('name'))}: {', '.join(facts)}"


def _reconciliation(rec: dict[str, Any] | None) -> tuple[str, list[str]]:
    if rec is None:
        return MISSING, ["not started"]
    if rec.get("last_run_at") is None:
        return "running" if not rec.get("first_run_done") else "done", ["first run in progress"]
    differences = rec.get("differences") or []
    errors = rec.get("errors") or []
    outcome = (
        "no differences"
        if not differences and not errors
        else f"{plural(len(differences), 'difference')}, {plural(len(errors), 'error')}"
    )
    first = f"last run {rec['last_run_at']} ({duration(rec.get('age_s'))} ago): {outcome}"
    details = [first]
    details += [f"difference: {d}" for d in differences]
    details += [f"action: {a}" for a in rec.get("actions") or []]
    details += [f"error: {e}" for e in errors]
    return ("errors" if errors else "done"), details


# ----- account --------------------------------------------------------------------------


def _breaker_line(tripped: bool, cause: str | None, message: str | None, at: str | None) -> str:
    if not tripped:
        return "not tripped"
    return f"TRIPPED at {text(at)}: {message or cause or 'no reason recorded'}"


def render_equity(e: Equity) -> str:
    money = amounts(
        [
            ("equity", number(e.equity), e.currency),
            ("balance", number(e.balance), ""),
            ("unrealized P&L", number(e.unrealized_pnl), ""),
            ("today's P&L", number(e.realized_pnl_today), "realized"),
            ("peak equity", number(e.peak_equity), ""),
            ("initial capital", number(e.initial_capital), ""),
        ]
    )
    b = e.breaker
    breaker = _breaker_line(b.tripped, b.cause, b.message, b.tripped_at)
    streak = plural(b.consecutive_losses, "consecutive loss", "consecutive losses")
    return block(
        [
            *money,
            ("drawdown", f"{number(e.drawdown_pct)} %"),
            ("phase", str(e.phase)),
            ("trading", f"{e.trading_state} ({STATE_MEANING.get(e.trading_state, '')})"),
            ("breaker", f"{breaker}, {streak}"),
        ]
    )


def render_risk(r: Risk) -> str:
    """State, breaker and the limits that apply now, one topic a line."""
    lim = r.limits
    b = r.breaker
    rows = [
        ("trading", f"{r.trading_state} ({STATE_MEANING.get(r.trading_state, '')})"),
        ("breaker", _risk_breaker(b, lim)),
    ]
    if b.tripped and b.figures:
        figures = ", ".join(f"{k} {_any(v)}" for k, v in b.figures.items())
        rows.append(("trip figures", figures))
    rows += [
        (
            "phase",
            f"{r.phase}: risk {number(r.effective_risk_pct)} % a trade, leverage up to "
            f"{number(r.phase_max_leverage)}x, {r.execution_style} execution",
        ),
        (
            "equity",
            f"{number(r.equity)}, peak {number(r.peak_equity)}, drawdown "
            f"{number(r.drawdown_pct)} % (limit {_any(lim.get('maxDrawdownPct'))} %)",
        ),
        (
            "today",
            f"P&L {number(r.daily_pnl)} from {number(r.day_start_equity)} "
            f"(daily loss limit {_any(lim.get('maxDailyLossPct'))} %)",
        ),
        (
            "positions",
            f"{r.open_positions} open (limit {_any(lim.get('maxPositions'))}), notional "
            f"{number(r.total_notional)}, leverage {number(r.total_leverage)}x "
            f"(limit {_any(lim.get('maxTotalLeverage'))}x)",
        ),
        (
            "limits",
            f"risk at most {_any(lim.get('maxRiskPct'))} % a trade, pyramiding "
            f"{_yes(lim.get('allowPyramiding'))}, flatten on breaker "
            f"{_yes(lim.get('flattenOnBreaker'))}",
        ),
    ]
    recent = r.history[-RECENT_ACTIONS:]
    for i, h in enumerate(recent):
        rows.append(("recent actions" if i == 0 else "", f"{text(h.at)}  {h.action} by {h.by}"))
    return block(rows)


def _risk_breaker(b: RiskBreaker, limits: dict[str, Any]) -> str:
    streak = (
        f"{plural(b.consecutive_losses, 'consecutive loss', 'consecutive losses')} "
        f"(limit {_any(limits.get('maxConsecutiveLosses'))})"
    )
    cause = f" [{b.cause}]" if b.tripped and b.cause else ""
    return f"{_breaker_line(b.tripped, b.cause, b.message, b.tripped_at)}{cause}, {streak}"


def _any(value: Any) -> str:
    if isinstance(value, (Decimal, float, int)) and not isinstance(value, bool):
        return number(value)
    return text(value)


def _yes(value: Any) -> str:
    return MISSING if value is None else ("yes" if value else "no")


# ----- tables ---------------------------------------------------------------------------


def render_positions(positions: list[Position]) -> str:
    if not positions:
        return "no open positions"
    columns = [
        Column("SYMBOL"),
        Column("SIDE"),
        Column("SIZE", True),
        Column("ENTRY", True),
        Column("MARK", True),
        Column("UNREALIZED", True),
        Column("LEV", True),
        Column("STOP", True),
        Column("TAKE PROFIT"),
        Column("OPENED"),
        Column("SIGNAL"),
    ]
    rows = [
        [
            p.symbol,
            p.side,
            number(p.size),
            number(p.entry_price),
            number(p.mark_price),
            number(p.unrealized_pnl),
            number(p.leverage),
            number(p.stop_loss),
            ",".join(number(tp) for tp in p.take_profits) or MISSING,
            text(p.opened_at),
            text(p.signal_id),
        ]
        for p in positions
    ]
    total = sum((p.unrealized_pnl for p in positions), Decimal(0))
    footer = f"{plural(len(positions), 'position')}, unrealized P&L {number(total)}"
    unprotected = [p.symbol for p in positions if p.stop_loss is None]
    if unprotected:
        footer += f"; NO STOP LOSS on {', '.join(unprotected)}"
    return f"{table(columns, rows)}\n{footer}"


def render_orders(orders: list[OpenOrder]) -> str:
    if not orders:
        return "no open orders"
    columns = [
        Column("ORDER"),
        Column("SYMBOL"),
        Column("SIDE"),
        Column("TYPE"),
        Column("QTY", True),
        Column("PRICE", True),
        Column("FILLED", True),
        Column("STATUS"),
        Column("FLAGS"),
        Column("CREATED"),
    ]
    rows = [
        [
            o.client_order_id,
            o.symbol,
            o.side,
            o.type,
            number(o.qty),
            number(o.price),
            number(o.filled_qty),
            o.status,
            " ".join([o.time_in_force, *(["reduce-only"] if o.reduce_only else [])]),
            text(o.created_at),
        ]
        for o in orders
    ]
    return f"{table(columns, rows)}\n{plural(len(orders), 'open order')}"


def render_trades(trades: list[Trade]) -> str:
    if not trades:
        return "no closed trades"
    columns = [
        Column("ID", True),
        Column("CLOSED"),
        Column("SYMBOL"),
        Column("SIDE"),
        Column("QTY", True),
        Column("ENTRY", True),
        Column("EXIT", True),
        Column("NET P&L", True),
        Column("FEES", True),
        Column("REASON"),
    ]
    rows = [
        [
            str(t.id),
            text(t.closed_at),
            t.symbol,
            t.side,
            number(t.qty),
            number(t.entry_price),
            number(t.exit_price),
            number(t.net_pnl),
            number(t.fees),
            text(t.close_reason),
        ]
        for t in trades
    ]
    total = sum((t.net_pnl for t in trades), Decimal(0))
    return f"{table(columns, rows)}\n{plural(len(trades), 'trade')}, net P&L {number(total)}"


def render_market(market: dict[str, MarketQuote]) -> str:
    """One row per symbol and feed: the venue's quote (what gates and marks use) first,
    marked, then the other feeds' for comparison."""
    if not market:
        return "no market data"
    columns = [
        Column("SYMBOL"),
        Column("SOURCE"),
        Column("BID", True),
        Column("ASK", True),
        Column("LAST", True),
        Column("SPREAD %", True),
        Column("AGE ms", True),
    ]
    rows = []
    for symbol, q in market.items():
        rows.append(
            [
                symbol,
                f"{q.source} (venue)",
                number(q.bid),
                number(q.ask),
                number(q.last),
                number(q.spread_pct),
                number(q.age_ms),
            ]
        )
        for source, s in q.sources.items():
            if source == q.source:
                continue
            rows.append(
                [
                    symbol,
                    source,
                    number(s.bid),
                    number(s.ask),
                    number(s.last),
                    number(s.spread_pct),
                    number(s.age_ms),
                ]
            )
    return table(columns, rows)


# ----- operator actions -----------------------------------------------------------------


def render_trading_state(answer: TradingStateAnswer) -> str:
    state = answer.trading_state
    return f"trading is {state} ({STATE_MEANING.get(state, '')})"


def render_breaker_reset(answer: BreakerReset) -> str:
    state = answer.trading_state
    return f"{answer.message}; trading is {state} ({STATE_MEANING.get(state, '')})"


def _listed(label: str, items: Sequence[str]) -> list[str]:
    return [f"  {label}: {item}" for item in items]


def _closed_position(closed: ClosedPosition) -> str:
    """A closed position as the flatten reports it: the close order's symbol, side,
    quantity and status."""
    return f"{closed.symbol} {closed.side} {text(closed.qty)} ({closed.status})"


def render_flattened(answer: Flattened) -> str:
    lines = [f"{answer.message}; trading is {answer.trading_state}"]
    if answer.cancelled_orders:
        lines.append(f"cancelled orders: {', '.join(answer.cancelled_orders)}")
    if answer.closed_positions:
        closed = ", ".join(_closed_position(p) for p in answer.closed_positions)
        lines.append(f"closed positions: {closed}")
    if answer.errors:
        lines.append(f"{plural(len(answer.errors), 'error')}, check the positions:")
        lines += _listed("error", answer.errors)
    return "\n".join(lines)


def render_reconciled(answer: Reconciled) -> str:
    lines = [answer.message]
    lines += _listed("difference", answer.differences)
    lines += _listed("action", answer.actions)
    lines += _listed("error", answer.errors)
    return "\n".join(lines)
