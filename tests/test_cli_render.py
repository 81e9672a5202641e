"""What ``titan`` prints for people, on realistic API answers.

Each answer is JSON text as the service writes it, decoded into the API's struct the way
the CLI decodes it, so the digits the renderer gets are the digits the service sent."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from titan_trio import cli_render
from titan_trio.api import schemas
from titan_trio.ops_client import decode_answer


def decoded(text: str, kind: Any) -> Any:
    return decode_answer(text, kind)


def columns_of(header: str, name: str) -> tuple[int, int]:
    start = header.index(name)
    return start, start + len(name)


# ----- positions ------------------------------------------------------------------------

POSITIONS = """[
 {"symbol":"BTCUSDT","side":"LONG","size":0.106,"entry_price":93749.90,"mark_price":93776.25,
  "unrealized_pnl":2.79310,"realized_pnl":0,"fees":5.47,"leverage":5.0,"stop_loss":92751.80,
  "take_profits":[95562.40,96000.00],"opened_at":"2026-11-30T12:09:01.691Z","signal_id":"s-1",
  "trap_type":null},
 {"symbol":"ETHUSDT","side":"SHORT","size":2.84,"entry_price":3518.45,"mark_price":3518.565,
  "unrealized_pnl":-0.32660,"realized_pnl":0,"fees":0.010,"leverage":3.0,"stop_loss":null,
  "take_profits":[],"opened_at":"2026-11-30T12:09:02.536Z","signal_id":null,"trap_type":null}
]"""


def test_positions_are_one_aligned_row_each_with_stop_and_targets() -> None:
    out = cli_render.render_positions(decoded(POSITIONS, list[schemas.Position]))
    header, btc, eth, footer = out.splitlines()
    for name in ("SYMBOL", "SIDE", "SIZE", "ENTRY", "MARK", "UNREALIZED", "STOP", "OPENED"):
        assert name in header
    assert btc.split()[:8] == [
        "BTCUSDT",
        "LONG",
        "0.106",
        "93749.90",  # the trailing zero the service wrote is kept
        "93776.25",
        "2.79310",
        "5.0",
        "92751.80",
    ]
    assert "95562.40,96000.00" in btc and "2026-11-30T12:09:01.691Z" in btc
    # numbers right-aligned under their header: they end where the header ends
    _start, size_end = columns_of(header, "SIZE")
    assert btc[size_end - len("0.106") : size_end] == "0.106"
    assert eth[size_end - len("2.84") : size_end] == "2.84"
    _start, pnl_end = columns_of(header, "UNREALIZED")
    assert eth[pnl_end - len("-0.32660") : pnl_end] == "-0.32660"
    # a missing stop, target or signal is "-", and the footer calls out the missing stop
    assert eth.split()[7] == "-"
    assert footer == "2 positions, unrealized P&L 2.46650; NO STOP LOSS on ETHUSDT"
    assert all(line == line.rstrip() for line in out.splitlines())


def test_no_positions_says_so() -> None:
    assert cli_render.render_positions([]) == "no open positions"


def test_amounts_keep_every_digit_and_never_use_exponents() -> None:
    answer = decoded(
        '[{"symbol":"X","side":"LONG","size":0.010,"entry_price":1E+3,'
        '"mark_price":0.1000000000000000055511151231257827,"unrealized_pnl":-1E-7,'
        '"realized_pnl":0,"fees":0,"leverage":1,"stop_loss":900,"take_profits":[],'
        '"opened_at":null,"signal_id":null,"trap_type":null}]',
        list[schemas.Position],
    )
    row = cli_render.render_positions(answer).splitlines()[1].split()
    assert row[2:6] == ["0.010", "1000", "0.1000000000000000055511151231257827", "-0.0000001"]


# ----- orders, trades, market -----------------------------------------------------------


def test_orders_table() -> None:
    orders = decoded(
        """[{"client_order_id":"ttt9630a3800fd36b","exchange_order_id":null,"symbol":"SOLUSDT",
        "side":"SELL","type":"LIMIT","time_in_force":"GTC","qty":54.6,"price":183.010,
        "filled_qty":0,"avg_fill_price":null,"reduce_only":true,"status":"ACCEPTED",
        "signal_id":"s-5","created_at":"2026-11-30T12:09:54.708Z",
        "updated_at":"2026-11-30T12:09:54.709Z"}]""",
        list[schemas.OpenOrder],
    )
    header, row, footer = cli_render.render_orders(orders).splitlines()
    assert header.split() == [
        "ORDER",
        "SYMBOL",
        "SIDE",
        "TYPE",
        "QTY",
        "PRICE",
        "FILLED",
        "STATUS",
        "FLAGS",
        "CREATED",
    ]
    assert row.split() == [
        "ttt9630a3800fd36b",
        "SOLUSDT",
        "SELL",
        "LIMIT",
        "54.6",
        "183.010",
        "0",
        "ACCEPTED",
        "GTC",
        "reduce-only",
        "2026-11-30T12:09:54.708Z",
    ]
    assert footer == "1 open order"
    assert cli_render.render_orders([]) == "no open orders"


def test_trades_table_with_the_net_total() -> None:
    trades = decoded(
        """[{"id":2,"symbol":"ETHUSDT","side":"SHORT","qty":2.84,"entry_price":3518.45,
        "exit_price":3500.00,"realized_pnl":52.398,"fees":3.99,"net_pnl":48.408,
        "opened_at":"2026-11-30T12:09:02.536Z","closed_at":"2026-11-30T13:00:00.000Z",
        "signal_id":"s-2","close_reason":"TAKE_PROFIT"},
        {"id":1,"symbol":"BTCUSDT","side":"LONG","qty":0.106,"entry_price":93749.90,
        "exit_price":93755.80,"realized_pnl":0.6254,"fees":10.93158231,"net_pnl":-10.30618231,
        "opened_at":"2026-11-30T12:09:01.691Z","closed_at":"2026-11-30T12:09:07.677Z",
        "signal_id":"s-1","close_reason":"CLOSE: manual"}]""",
        list[schemas.Trade],
    )
    header, newest, oldest, footer = cli_render.render_trades(trades).splitlines()
    assert header.split()[:4] == ["ID", "CLOSED", "SYMBOL", "SIDE"]
    assert "NET P&L" in header and "REASON" in header
    assert newest.split()[:3] == ["2", "2026-11-30T13:00:00.000Z", "ETHUSDT"]
    assert oldest.endswith("CLOSE: manual") and "-10.30618231" in oldest.split()
    assert footer == "2 trades, net P&L 38.10181769"  # exact: 48.408 - 10.30618231
    assert cli_render.render_trades([]) == "no closed trades"


def test_market_puts_the_venue_first_then_the_other_feeds() -> None:
    market = decoded(
        """{"BTCUSDT":{"bid":95008.80,"ask":95008.90,"bid_size":2.180,"ask_size":2.157,
        "last":95008.80,"spread_pct":0.000105,"age_ms":45,"source":"bybit","sources":{
        "binance":{"bid":95007.10,"ask":95007.20,"bid_size":1,"ask_size":1,"last":95007.1,
        "spread_pct":0.000105,"age_ms":120},
        "bybit":{"bid":95008.80,"ask":95008.90,"bid_size":2.180,"ask_size":2.157,
        "last":95008.80,"spread_pct":0.000105,"age_ms":45}}},
        "SOLUSDT":{"bid":null,"ask":null,"bid_size":null,"ask_size":null,"last":null,
        "spread_pct":null,"age_ms":null,"source":"bybit","sources":{}}}""",
        dict[str, schemas.MarketQuote],
    )
    header, venue, other, unquoted = cli_render.render_market(market).splitlines()
    assert header.split() == ["SYMBOL", "SOURCE", "BID", "ASK", "LAST", "SPREAD", "%", "AGE", "ms"]
    assert venue.split() == [
        "BTCUSDT",
        "bybit",
        "(venue)",
        "95008.80",
        "95008.90",
        "95008.80",
        "0.000105",
        "45",
    ]
    assert other.split()[:3] == ["BTCUSDT", "binance", "95007.10"]
    assert unquoted.split() == ["SOLUSDT", "bybit", "(venue)", "-", "-", "-", "-", "-"]


# ----- health -----------------------------------------------------------------------------

HEALTHY_PAPER = {
    "status": "healthy",
    "websocket": {
        "status": "healthy",
        "feeds": {
            "simulated": {
                "status": "healthy",
                "state": "connected",
                "connected": True,
                "last_message_age_s": 0.021,
                "reconnects": 0,
                "malformed": 0,
                "last_error": None,
                "venue": True,
            }
        },
    },
    "database": {
        "status": "healthy",
        "unsaved_changes": 0,
        "trading_limited_to": None,
        "path": "/var/lib/titan/titan.db",
        "writable": True,
        "not_writable_because": None,
        "last_commit_age_s": 3.19,
        "commits": 20,
        "last_error": None,
        "write_failures": 0,
    },
    "ipc": {
        "status": "healthy",
        "socket_path": "/run/titan/ipc.sock",
        "socket_file": "ours",
        "listening": True,
        "connections": 2,
        "max_connections": 16,
        "requests_in_progress": 0,
        "signed_frames": True,
        "prepared_intents": 0,
    },
    "broker": {"status": "healthy", "name": "paper", "reachable": True, "last_latency_ms": None},
    "reconciliation": {
        "first_run_done": True,
        "last_run_at": "2026-11-30T12:07:18.966Z",
        "age_s": 3.204,
        "differences": [],
        "actions": [],
        "errors": [],
        "runs": {"clean": 1, "healed": 0, "error": 0},
    },
    "uptime_s": 7384.5,
    "version": "0.1.0",
}


def health(**changes: Any) -> schemas.Health:
    doc = {**HEALTHY_PAPER, **changes}
    return decoded(msgspec.json.encode(doc).decode(), schemas.Health)


def test_health_says_the_overall_status_first_then_one_line_per_component() -> None:
    lines = cli_render.render_health(health()).splitlines()
    assert lines[0] == "healthy (titan 0.1.0, up 2 h 03 min)"
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert list(by_name) == ["websocket", "database", "ipc", "broker", "reconciliation"]
    assert by_name["websocket"].split()[1] == "healthy"
    assert "simulated (venue): connected, last message 21 ms ago, 0 reconnects" in lines[1]
    assert "writable, last commit 3.2 s ago" in by_name["database"]
    assert "2 of 16 connections" in by_name["ipc"] and "signed frames" in by_name["ipc"]
    assert "paper: reachable" in by_name["broker"]
    assert "last run 2026-11-30T12:07:18.966Z (3.2 s ago): no differences" in lines[5]


def test_unhealthy_health_names_the_reasons_on_the_component_lines() -> None:
    db = {
        **HEALTHY_PAPER["database"],
        "status": "unhealthy",
        "writable": False,
        "not_writable_because": "database or disk is full",
        "unsaved_changes": 3,
        "trading_limited_to": "REDUCING",
        "last_error": "SQLITE_FULL",
    }
    broker = {
        "status": "unhealthy",
        "name": "bybit",
        "reachable": True,
        "last_latency_ms": 45.125,
        "last_error": "stream closed by the exchange",
        "stream": {"state": "reconnecting", "connected": False, "reconnects": 4, "polling": True},
        "clock_skew_ms": -12,
    }
    feeds = {
        "status": "unhealthy",
        "feeds": {
            "bybit": {
                "status": "unhealthy",
                "state": "reconnecting",
                "connected": False,
                "last_message_age_s": 45.0,
                "reconnects": 1,
                "last_error": "connection reset",
                "venue": True,
            },
            "binance": {
                "status": "healthy",
                "state": "connected",
                "connected": True,
                "last_message_age_s": 0.5,
                "reconnects": 0,
                "last_error": "an old error",
                "venue": False,
            },
        },
    }
    rec = {
        **HEALTHY_PAPER["reconciliation"],
        "differences": ["Reconciliation: position BTCUSDT: here 0.1, broker 0.2"],
        "actions": ["position BTCUSDT adopted"],
    }
    out = cli_render.render_health(
        health(status="unhealthy", database=db, broker=broker, websocket=feeds, reconciliation=rec)
    )
    lines = out.splitlines()
    assert lines[0].startswith("unhealthy ")
    assert (
        "NOT writable: database or disk is full, last commit 3.2 s ago, 3 changes not saved, "
        "trading limited to REDUCING, last error: SQLITE_FULL" in out
    )
    assert (
        "bybit: reachable, stream reconnecting, polling, 4 stream reconnects, latency 45.125 ms, "
        "clock skew -12 ms, last error: stream closed by the exchange" in out
    )
    assert "bybit (venue): reconnecting, last message 45 s ago, 1 reconnect, " in out
    assert "last error: connection reset" in out
    assert "an old error" not in out  # a healthy feed's old error is noise
    # the second feed on a line of its own, under the first
    feed_lines = [line for line in lines if "binance:" in line]
    assert len(feed_lines) == 1 and feed_lines[0].index("binance") == lines[1].index("bybit")
    assert "1 difference, 0 errors" in out
    assert "difference: Reconciliation: position BTCUSDT: here 0.1, broker 0.2" in out
    assert "action: position BTCUSDT adopted" in out


def test_health_while_starting() -> None:
    rec = {**HEALTHY_PAPER["reconciliation"], "first_run_done": False, "last_run_at": None}
    out = cli_render.render_health(health(status="starting", reconciliation=rec, uptime_s=0.4))
    assert out.splitlines()[0] == "starting (titan 0.1.0, up 400 ms)"
    assert "first run in progress" in out


# ----- equity, risk -----------------------------------------------------------------------

EQUITY = """{"equity":9960.64019879,"balance":9957.87,"unrealized_pnl":2.77019879,
"realized_pnl_today":-39.35980121,"peak_equity":10017.00108083,"drawdown_pct":0.5627,
"initial_capital":10000.0,"phase":3,"trading_state":"REDUCING","breaker":{"tripped":false,
"cause":null,"message":null,"tripped_at":null,"consecutive_losses":1},"currency":"USDT"}"""


def test_equity_block() -> None:
    out = cli_render.render_equity(decoded(EQUITY, schemas.Equity))
    lines = dict(line.split("  ", 1) for line in out.splitlines())
    values = {label.strip(): value.strip() for label, value in lines.items()}
    assert values["equity"] == "9960.64019879 USDT"
    assert values["unrealized P&L"] == "2.77019879"
    assert values["today's P&L"] == "-39.35980121 realized"
    assert values["peak equity"] == "10017.00108083"
    assert values["drawdown"] == "0.5627 %"
    assert values["phase"] == "3"
    assert values["trading"] == "REDUCING (exits only, no new entries)"
    assert values["breaker"] == "not tripped, 1 consecutive loss"
    # the amounts end in one column
    ends = {len(line.split(" USDT")[0]) for line in out.splitlines()[:2]}
    assert len(ends) == 1


RISK = """{"trading_state":"HALTED","breaker":{"tripped":true,"cause":"DRAWDOWN",
"message":"drawdown 7.12% exceeds 7.0% (peak 10000.00, equity 9288.00)",
"tripped_at":"2026-11-30T14:00:00.125Z","consecutive_losses":2,
"figures":{"drawdown_pct":7.1200,"peak":10000.00}},"phase":3,"effective_risk_pct":1.0,
"phase_max_leverage":5.0,"execution_style":"taker","equity":9288.00,"peak_equity":10000.00,
"drawdown_pct":7.12,"day_start_equity":9900.00,"daily_pnl":-612.00,"open_positions":0,
"total_notional":0,"total_leverage":0.0000,"limits":{"maxRiskPct":2.0,"maxPositions":5,
"allowPyramiding":false,"maxTotalLeverage":50.0,"maxDrawdownPct":7.0,"maxDailyLossPct":5.0,
"maxConsecutiveLosses":5,"flattenOnBreaker":true},"history":[
{"action":"breaker_trip","by":"risk","at":"2026-11-30T14:00:00.125Z"}]}"""


def test_risk_summary_with_a_tripped_breaker() -> None:
    out = cli_render.render_risk(decoded(RISK, schemas.Risk))
    assert out.splitlines()[0].split() == ["trading", "HALTED", "(no", "new", "orders", "from",
                                           "strategies)"]  # fmt: skip
    assert (
        "TRIPPED at 2026-11-30T14:00:00.125Z: drawdown 7.12% exceeds 7.0% (peak 10000.00, "
        "equity 9288.00) [DRAWDOWN], 2 consecutive losses (limit 5)" in out
    )
    assert "trip figures    drawdown_pct 7.1200, peak 10000.00" in out
    assert "drawdown 7.12 % (limit 7.0 %)" in out
    assert "P&L -612.00 from 9900.00 (daily loss limit 5.0 %)" in out
    assert "0 open (limit 5), notional 0, leverage 0.0000x (limit 50.0x)" in out
    assert "pyramiding no, flatten on breaker yes" in out
    assert "recent actions  2026-11-30T14:00:00.125Z  breaker_trip by risk" in out


# ----- operator actions -------------------------------------------------------------------


def test_pause_resume_and_breaker_reset_say_what_trading_is_now() -> None:
    paused = schemas.TradingStateAnswer(trading_state="REDUCING")
    assert cli_render.render_trading_state(paused) == (
        "trading is REDUCING (exits only, no new entries)"
    )
    reset = schemas.BreakerReset(
        reset=True, message="circuit breaker reset", trading_state="ACTIVE"
    )
    assert cli_render.render_breaker_reset(reset) == (
        "circuit breaker reset; trading is ACTIVE (entries and exits allowed)"
    )


def test_flatten_lists_what_it_cancelled_closed_and_failed() -> None:
    closed = (
        '{"symbol":"SOLUSDT","side":"SELL","qty":54.6,"client_order_id":"tt1",'
        '"status":"FILLED","filled_qty":54.6}'
    )
    answer = decoded(
        f"""{{"cancelled_orders":["ttt9630a","ttt77b1"],"closed_positions":[{closed}],
        "errors":["closing BTCUSDT did not finish within 10 s"],"trading_state":"HALTED",
        "message":"cancelled 2 orders, closed 1 positions"}}""",
        schemas.Flattened,
    )
    assert cli_render.render_flattened(answer).splitlines() == [
        "cancelled 2 orders, closed 1 positions; trading is HALTED",
        "cancelled orders: ttt9630a, ttt77b1",
        "closed positions: SOLUSDT SELL 54.6 (FILLED)",
        "1 error, check the positions:",
        "  error: closing BTCUSDT did not finish within 10 s",
    ]


def test_reconcile_lists_differences_and_actions_or_says_none() -> None:
    clean = schemas.Reconciled(differences=[], actions=[], errors=[], message="no differences")
    assert cli_render.render_reconciled(clean) == "no differences"
    healed = schemas.Reconciled(
        differences=["Reconciliation: order tt1: here ACCEPTED, broker none"],
        actions=["order tt1 settled as lost"],
        errors=[],
        message="1 differences, 1 healed, 0 errors",
    )
    assert cli_render.render_reconciled(healed).splitlines() == [
        "1 differences, 1 healed, 0 errors",
        "  difference: Reconciliation: order tt1: here ACCEPTED, broker none",
        "  action: order tt1 settled as lost",
    ]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.0214, "21 ms"), (3.19, "3.2 s"), (33.4, "33 s"), (92, "1 min 32 s"),
     (7384.5, "2 h 03 min"), (200000, "2 d 7 h")],
)  # fmt: skip
def test_durations(seconds: float | None, shown: str) -> None:
    assert cli_render.duration(seconds) == shown
