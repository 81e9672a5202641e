"""Prometheus metrics (names fixed by SPEC §9).

Gauges that describe state (health, equity, drawdown, positions) are read from the live
objects at scrape time by a collector, so a scrape can never show a stale value that
some code path forgot to update. Event counts (signals, orders) are ordinary counters.
Each service instance has its own registry: nothing is module-global.
"""

from __future__ import annotations

import os
import resource
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ipc.protocol import Reply
from titan_trio.domain.orders import OrderStatus
from titan_trio.maintenance.backups import newest_backup_s

if TYPE_CHECKING:
    from titan_trio.domain.orders import Order
    from titan_trio.engine import Engine

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FILL_RATE_WINDOW = 100  # finished entry orders in the fill-rate window
disable_created_metrics()  # *_created series only confuse rate() users and dashboards


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_resident_memory_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        # Not Linux: ru_maxrss is the peak, in KiB, the best portable figure.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StateCollector(Collector):
    def __init__(self, engine_getter: Callable[[], Engine]) -> None:
        self._engine = engine_getter

    def collect(self) -> Iterable[Metric]:
        engine = self._engine()
        health = GaugeMetricFamily(
            "titan_health_status",
            "1 when the component is healthy, 0 when not",
            labels=["component"],
        )
        for component, info in engine.component_health().items():
            if info["status"] == "disabled":
                continue  # not part of this build: neither healthy nor failing
            health.add_metric([component], 1.0 if info["status"] == "healthy" else 0.0)
        yield health

        book = engine.hub.book
        shadow = engine.shadow
        equity = engine.equity_monitor.equity()
        tracker = engine.risk.tracker
        yield GaugeMetricFamily("titan_equity_usd", "Account equity in USDT", value=float(equity))
        yield GaugeMetricFamily(
            "titan_initial_capital_usd",
            "The equity reference (broker.initialCapital): equity below it is the guide's "
            "equity alert threshold",
            value=float(tracker.initial_capital),
        )
        yield GaugeMetricFamily(
            "titan_drawdown_percent",
            "Drawdown from peak equity, percent",
            value=float(tracker.drawdown_pct),
        )
        yield GaugeMetricFamily(
            "titan_open_positions", "Open positions", value=len(shadow.positions)
        )
        notional = shadow.total_notional(book)
        yield GaugeMetricFamily(
            "titan_total_leverage",
            "Sum of position notional / equity",
            value=float(notional / equity) if equity > 0 else 0.0,
        )
        pnl = GaugeMetricFamily(
            "titan_position_pnl_usd", "Unrealized P&L per open position", labels=["symbol"]
        )
        marks = shadow.marks(book)
        for symbol, rec in sorted(shadow.positions.items()):
            pnl.add_metric([symbol], float(rec.position.unrealized_pnl(marks[symbol])))
        yield pnl
        yield GaugeMetricFamily(
            "titan_order_fill_rate",
            f"Percent of the last {FILL_RATE_WINDOW} finished entry orders that filled, "
            "at least in part (NaN before any: no sample)",
            value=engine.metrics.fill_rate_pct(),
        )
        yield GaugeMetricFamily(
            "titan_circuit_breaker_tripped",
            "1 while the circuit breaker is tripped",
            value=1.0 if engine.risk.state.tripped else 0.0,
        )
        state = GaugeMetricFamily(
            "titan_trading_state", "1 for the current trading state", labels=["state"]
        )
        for name in ("ACTIVE", "REDUCING", "HALTED"):
            state.add_metric([name], 1.0 if engine.risk.trading_state.value == name else 0.0)
        yield state
        recon = engine.reconciliation_view()
        yield GaugeMetricFamily(
            "titan_reconciliation_drift",
            "Differences between the account and the broker found by the last reconciliation",
            value=0 if recon is None else len(recon["differences"]),
        )
        runs = CounterMetricFamily(
            "titan_reconciliations", "Reconciliations with the broker, by result", labels=["result"]
        )
        for result, count in ({} if recon is None else recon["runs"]).items():
            runs.add_metric([result], count)
        yield runs
        yield GaugeMetricFamily(
            "titan_ipc_connections",
            "Open IPC connections",
            value=0 if engine.ipc is None else engine.ipc.connections,
        )

        reconnects = CounterMetricFamily(
            "titan_ws_reconnects", "Market feed reconnections", labels=["exchange"]
        )
        age = GaugeMetricFamily(
            "titan_ws_last_message_age_seconds",
            "Seconds since the feed's last message",
            labels=["exchange"],
        )
        for name, feed in sorted(engine.hub.feeds.items()):
            reconnects.add_metric([name], feed.reconnects)
            last = feed.last_message_age_s()
            age.add_metric([name], last if last is not None else float("inf"))
        yield reconnects
        yield age

        yield CounterMetricFamily(
            "titan_database_write_failures",
            "Database writes that failed (disk full, write lock held, I/O error...); "
            "the cause is the database component's last_error in /api/health",
            value=engine.store.stats.write_failures,
        )

        yield GaugeMetricFamily(
            "titan_backup_last_success_timestamp_seconds",
            "Unix time of the newest finished backup in database.backupDir (0: none yet)",
            value=newest_backup_s(engine.cfg.database.backup_dir),
        )

        yield CounterMetricFamily(
            "titan_process_cpu_seconds",
            "CPU time used by the service",
            value=process_cpu_seconds(),
        )
        yield GaugeMetricFamily(
            "titan_process_resident_memory_bytes",
            "Resident memory of the service",
            value=process_resident_memory_bytes(),
        )


class Metrics:
    """The registry and the event counters other components increment."""

    def __init__(self, engine_getter: Callable[[], Engine]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(engine_getter))
        self.signals = Counter(
            "titan_signals",
            "Signals received, by type and outcome",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.orders = Counter(
            "titan_orders",
            "Orders by the status they reached",
            ["status"],
            registry=self.registry,
        )
        self.protection_failures = Counter(
            "titan_protection_failures",
            "Stop loss or take profit placements that failed (the position may be unprotected)",
            registry=self.registry,
        )
        self.recent_orders: deque[bool] = deque(maxlen=FILL_RATE_WINDOW)
        self.order_latency = Histogram(
            "titan_order_latency_seconds",
            "CONFIRM received to exchange acknowledged",
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
            ),
            registry=self.registry,
        )

    def order_finished(self, order: Order) -> None:
        """An order reached a final status: count it; an entry order the exchange took
        feeds the fill-rate window (SPEC §9: take profits and stops cancelled with their
        position, and orders refused before or by the exchange, do not count)."""
        self.orders.labels(status=order.status.value).inc()
        if not order.reduce_only and order.status not in (OrderStatus.REJECTED, OrderStatus.DENIED):
            self.recent_orders.append(order.filled_qty > 0)

    def restore_fill_window(self, outcomes: list[bool]) -> None:
        """The window as it was before a restart (records.recent_entry_outcomes)."""
        self.recent_orders.extend(outcomes)

    def fill_rate_pct(self) -> float:
        """Percent of the last FILL_RATE_WINDOW finished entry orders that filled at
        least in part. NaN when no entry order has ever finished (the window is restored
        at start, so only a new account has none): every PromQL comparison with NaN is
        false, so `titan_order_fill_rate < 80` stays silent without a sample."""
        if not self.recent_orders:
            return float("nan")
        return 100.0 * sum(self.recent_orders) / len(self.recent_orders)

    def observe_reply(self, message_type: str | None, reply: Reply) -> None:
        """Count one IPC reply: outcome is the status, or the reason when rejected."""
        outcome = reply.reason.value if reply.reason is not None else reply.status.value
        self.signals.labels(type=message_type or "INVALID", outcome=outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
