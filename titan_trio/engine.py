"""The engine: one trio.run, one root nursery, every service started in order.

Start-up order (each with ``nursery.start``, so a service that fails to start stops the
whole service with a clear error): instance lock → store → market feeds → broker →
shadow state restore → risk controller → shadow sync → equity monitor → signal router
→ IPC listener → ops API. ``titan run`` takes the instance lock before it opens the log,
so a refused second start touches nothing; without it the engine takes the lock itself.
Each object is built from the restored state it depends on, in that order, never patched
after construction.
SIGINT and SIGTERM cancel the root scope; every service's cleanup is shielded and bounded,
so shutdown takes well under two seconds and leaves the database closed.

This module wires; it holds no trading logic.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from ipc.listener import IpcError, IpcListener
from titan_trio import __version__
from titan_trio.api.server import serve_api
from titan_trio.brokers.base import Broker
from titan_trio.brokers.bybit.broker import BybitBroker
from titan_trio.brokers.bybit.rest import BybitRest
from titan_trio.brokers.paper import PaperBroker
from titan_trio.clock import now_ms
from titan_trio.config import Config, bybit_endpoints
from titan_trio.domain.instruments import Instrument
from titan_trio.errors import BrokerUnavailable, StartupError, StoreError
from titan_trio.exchange_keys import MissingKeys, bybit_keys
from titan_trio.execution.executor import Executor
from titan_trio.execution.flatten import Flattener
from titan_trio.execution.placement import OrderPlacer
from titan_trio.execution.protection import Protector
from titan_trio.execution.router import SignalRouter
from titan_trio.feeds.binance import BinanceFeed
from titan_trio.feeds.bybit import BybitFeed
from titan_trio.feeds.hub import MarketHub
from titan_trio.feeds.simulated import SimulatedFeed
from titan_trio.maintenance.backup_job import BackupSchedule
from titan_trio.metrics import FILL_RATE_WINDOW, Metrics
from titan_trio.private_files import make_private_dirs, open_private
from titan_trio.risk.breaker import TradingState, most_restrictive
from titan_trio.risk.controller import RiskController
from titan_trio.state import records
from titan_trio.state.equity_monitor import EquityMonitor
from titan_trio.state.reconcile import Reconciler
from titan_trio.state.settle import settle_in_flight
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store
from titan_trio.state.sync import ShadowSync, restore_shadow

log = logging.getLogger("titan.engine")

# The simulated feed is stale when it has been silent this long (and at least 10 publish
# intervals).
FEED_STALE_S = 5.0
# An exchange feed silent this long makes the websocket component unhealthy (it has
# reconnected several times by then: its watchdog gives a silent connection up sooner).
REAL_FEED_SILENT_S = 60.0
# A clean stop lets the requests already admitted finish for at most this long.
DRAIN_S = 5.0
STOP_RECORD_S = 1.0  # the stop record's bound: shutdown never waits longer on the disk


def instruments_from_config(cfg: Config) -> dict[str, Instrument]:
    return {
        symbol: Instrument(
            symbol=symbol,
            tick_size=Decimal(i.tick_size),
            qty_step=Decimal(i.qty_step),
            min_qty=Decimal(i.min_qty),
            min_notional=Decimal(i.min_notional),
            max_leverage=Decimal(repr(i.max_leverage)),
        )
        for symbol, i in cfg.instruments.items()
        if symbol in cfg.symbols
    }


class InstanceLock:
    """An exclusive lock beside the database, so two services never share one account.
    The kernel releases it when the process dies, however it dies."""

    def __init__(self, db_path: str) -> None:
        self.path = os.path.abspath(db_path) + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            make_private_dirs(Path(self.path).parent)
            fd = open_private(self.path, os.O_RDWR)
        except OSError as exc:
            raise StartupError(f"cannot create the lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(
                    f"another titan instance (pid {holder}) is running on database "
                    f"{self.path[: -len('.lock')]}; stop it first"
                ) from None
            raise StartupError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Engine:
    def __init__(self, cfg: Config, lock: InstanceLock | None = None) -> None:
        """``lock``: the instance lock, already held by the caller (who releases it);
        without one the engine takes it first and releases it last."""
        self.cfg = cfg
        self._lock = lock
        self.started_monotonic = time.monotonic()
        self.instruments = instruments_from_config(cfg)
        self.store = Store(cfg.database.path, cfg.database.synchronous)
        self.hub = MarketHub(cfg.venue)
        self.metrics = Metrics(lambda: self)
        self.feeds: list[Any] = []
        self._feeds_scope: trio.CancelScope | None = None
        self.broker: Broker | None = None
        # Built during start-up from the restored state, in dependency order.
        self.shadow: ShadowState
        self.risk: RiskController
        self.sync: ShadowSync
        self.equity_monitor: EquityMonitor
        self.router: SignalRouter | None = None
        self.ipc: IpcListener | None = None
        self.api_url: str | None = None
        self.ready = trio.Event()

    # ----- start-up --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        lock = self._lock or InstanceLock(cfg.database.path)
        if self._lock is None:
            lock.acquire()
        try:
            # The store wraps every other service: it closes after they have stopped.
            async with self.store.opened():
                log.info("database open: %s", self.store.path)
                try:
                    async with trio.open_nursery() as nursery:
                        await self._start_services(nursery)
                        await self._journal("INFO", "start", f"started {__version__} ({cfg.mode})")
                        self.ready.set()
                        task_status.started(self)
                finally:
                    # Best effort, bounded, and never in place of what stopped the service:
                    # a full disk must neither fail a clean stop nor hide a crash's cause.
                    if self.ready.is_set():
                        with (
                            trio.CancelScope(shield=True),
                            trio.move_on_after(STOP_RECORD_S) as limit,
                        ):
                            try:
                                await self._journal("INFO", "stop", "stopped")
                            except StoreError as exc:
                                log.warning("the stop record could not be written: %s", exc)
                        if limit.cancelled_caught:
                            log.warning(
                                "the stop record could not be written within %s s", STOP_RECORD_S
                            )
        finally:
            if self._lock is None:
                lock.release()

    async def _start_services(self, nursery: trio.Nursery) -> None:
        cfg = self.cfg
        self._feeds_scope = await nursery.start(self._run_feeds)
        if cfg.broker.name == "bybit":
            self.broker = await self._bybit_broker()
        else:
            self.broker = PaperBroker(cfg.broker, self.instruments, self.hub, self.store)
        await nursery.start(self.broker.run)
        initial_capital = Decimal(repr(cfg.broker.initial_capital))
        try:
            balance = await self.broker.balance()
        except BrokerUnavailable as exc:
            # (a database of an earlier run keeps its balance; a first run starts from the
            # configured capital, and the first reconciliation takes the exchange's)
            log.warning("balance not known at start (%s); reconciliation takes it", exc)
            balance = initial_capital
        self.shadow = shadow = await restore_shadow(self.store, balance)
        try:
            await settle_in_flight(shadow, self.broker, self.store)
        except BrokerUnavailable as exc:  # reconciliation settles them (three asks)
            log.warning("orders in flight not settled at start (%s)", exc)
        self.risk = risk = RiskController(
            cfg.risk, self.store, initial_capital, lambda: shadow.equity(self.hub.book)
        )
        await nursery.start(risk.run)
        self.sync = sync = ShadowSync(shadow, self.store, self.broker.events)
        sync.on_storage_failure = lambda cause: risk.storage_failed(
            "shadow state", TradingState.REDUCING, cause
        )
        risk.storage_probe = sync.flush_unsaved
        placer = OrderPlacer(
            self.broker,
            shadow,
            self.store,
            self.metrics,
            gate=risk.refusal,
            storage_failed=risk.storage_failed,
        )
        flattener = Flattener(self.broker, shadow, placer, cfg.symbols)
        risk.flatten = flattener.flatten
        self.metrics.restore_fill_window(
            await self.store.call(records.recent_entry_outcomes, FILL_RATE_WINDOW)
        )
        sync.on_trade = risk.on_trade
        sync.order_finished_listeners.append(self.metrics.order_finished)
        self.protector = protector = Protector(
            self.broker,
            placer,
            self.instruments,
            self.hub,
            Decimal(repr(cfg.reconcile.adopted_stop_pct)),
        )
        await nursery.start(protector.run)
        sync.fill_listeners.append(protector.notice_fill)
        sync.order_finished_listeners.append(protector.notice_order_finished)
        await nursery.start(sync.run)
        self.executor = executor = Executor(cfg.execution, self.broker, placer, self.hub)
        await nursery.start(executor.run)
        executor.resume(list(shadow.orders.values()), now_ms())
        # The first reconciliation runs while the rest starts; until it has finished,
        # health says "starting" and the router refuses entries. It also protects every
        # held position.
        self.reconciler = Reconciler(
            shadow,
            self.broker,
            self.store,
            lambda: sync.events_done,
            lambda: sync.applying,
            placer.sending,
            cfg.reconcile.interval_s,
            mark=self.hub.book.mark,
            adopted_stop_pct=Decimal(repr(cfg.reconcile.adopted_stop_pct)),
            protect=lambda: protector.protect_held(shadow.positions),
            replay=sync.replay,
            adopt_unknown=cfg.reconcile.adopt_unknown,
            close=flattener.close_position,
            resume=lambda orders: executor.resume(orders, now_ms()),
            history_lag_ms=getattr(self.broker, "history_lag_ms", 0),
            instruments=self.instruments,
        )
        await nursery.start(self.reconciler.run)
        if isinstance(self.broker, BybitBroker):  # the private stream is back after a gap
            self.broker.on_reconnect = lambda: nursery.start_soon(self.reconciler.reconcile)
        self.equity_monitor = EquityMonitor(
            shadow,
            self.hub,
            self.store,
            lambda: risk.tracker,
            risk.mark,
            after=self.reconciler.ready,
        )
        await nursery.start(self.equity_monitor.run)
        self.router = SignalRouter(
            cfg,
            self.instruments,
            self.hub,
            self.shadow,
            self.broker,
            self.store,
            self.metrics,
            self.equity_monitor.equity,
            self.risk,
            self.executor,
            ready=self.reconciler.ready.is_set,
            events_applied=sync.applied,
        )
        await nursery.start(self.router.run)
        self.ipc = IpcListener(
            cfg.ipc.socket_path,
            cfg.socket_mode,
            self.router,
            max_connections=cfg.ipc.max_connections,
            max_connections_per_process=cfg.ipc.max_connections_per_process,
            idle_timeout_s=cfg.ipc.idle_timeout_s,
            max_frame_bytes=cfg.ipc.max_frame_bytes,
            secret=cfg.ipc.hmac_secret,
            observer=self.metrics.observe_reply,
        )
        try:
            await nursery.start(self.ipc.run)
        except IpcError as exc:
            raise StartupError(str(exc)) from None
        log.info(
            "IPC listening on %s (mode %s, %s)",
            cfg.ipc.socket_path,
            cfg.ipc.socket_mode,
            "signed frames required" if cfg.ipc.hmac_secret else "unsigned frames",
        )
        if cfg.database.backup_interval_min is not None:  # off the trio thread, never fatal
            await nursery.start(BackupSchedule(cfg, hold_wal=self.store.hold_wal_reset).run)
        binds = await nursery.start(serve_api, self)
        self.api_url = binds[0] if binds else None
        log.info(
            "titan-execution %s ready: mode %s, broker %s, equity %s USDT, API %s",
            __version__,
            cfg.mode,
            self.broker.name,
            _money(self.equity_monitor.equity()),
            self.api_url,
        )

    async def _bybit_broker(self) -> BybitBroker:
        """The Bybit broker, with its keys (never logged) and endpoints. The keys are read
        in a thread: from the credentials file that is a deliberately slow key derivation
        (scrypt, about half a second), which must not stall the feeds already running."""
        try:
            keys = await trio.to_thread.run_sync(bybit_keys, dict(os.environ))
        except MissingKeys as exc:
            raise StartupError(str(exc)) from None
        rest_url, _public, private_url = bybit_endpoints(self.cfg.exchanges.bybit)
        log.info("broker bybit: REST %s, private stream %s, key %s", rest_url, private_url, keys)
        return BybitBroker(
            BybitRest(rest_url, keys.key, keys.secret),
            private_url,
            self.instruments,
            self.cfg.symbols,
        )

    async def _run_feeds(
        self, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The market feeds, in a scope of their own: a clean stop ends them first, so
        no new price moves the (paper) account while the rest finishes.

        An exchange feed starts at once, connected or not: one that cannot reach its
        exchange keeps retrying and shows unhealthy, it never stops the service (the
        positions it holds still need their stops managed)."""
        cfg = self.cfg
        async with trio.open_nursery() as feeds:
            for name in cfg.feeds:
                feed: SimulatedFeed | BinanceFeed | BybitFeed
                if name == "binance":
                    feed = BinanceFeed(self.hub, cfg.symbols, cfg.exchanges.binance.ws_url)
                elif name == "bybit":
                    _, ws_public, _ = bybit_endpoints(cfg.exchanges.bybit)
                    feed = BybitFeed(self.hub, cfg.symbols, ws_public)
                else:
                    feed = SimulatedFeed(self.hub, self.instruments, cfg.symbols, cfg.simulation)
                await feeds.start(feed.run)
                self.feeds.append(feed)
                log.info("market feed started: %s (%s)", name, ", ".join(cfg.symbols))
            log.info("the venue's quotes (gates, marks, fills) come from the %s feed", cfg.venue)
            task_status.started(feeds.cancel_scope)
            await trio.sleep_forever()

    async def _journal(self, level: str, kind: str, message: str) -> None:
        """A line in the system_events table: the service's own history on disk."""
        await self.store.call(records.add_event, now_ms(), level, kind, message)

    async def drain(self, limit_s: float = DRAIN_S) -> bool:
        """The first part of a clean stop: admit nothing new, let the requests already
        admitted finish (their orders sent, their replies written) and the broker's
        events be committed, at most ``limit_s``. False (logged) when time ran out."""
        if self.ipc is not None:
            self.ipc.stop_admitting()
        if hasattr(self, "executor"):
            self.executor.stop_following()  # resting entries are the next start's
        with trio.move_on_after(limit_s):
            while not self._drained():  # noqa: ASYNC110 - work finishing in other tasks
                await trio.sleep(0.01)
            if self._feeds_scope is not None:
                self._feeds_scope.cancel()  # no new prices: nothing more fills or marks
            while not self._drained():  # noqa: ASYNC110 - the last events committed
                await trio.sleep(0.01)
            return True
        log.warning(
            "stopping with work unfinished after %g s: %d requests in progress, %d orders "
            "being sent; the next start settles them",
            limit_s,
            0 if self.ipc is None else self.ipc.pending,
            len(self.executor.placer.sending) if hasattr(self, "executor") else 0,
        )
        return False

    def _drained(self) -> bool:
        pending = 0 if self.ipc is None else self.ipc.pending
        sending = self.executor.placer.sending if hasattr(self, "executor") else set()
        sent = 0 if self.broker is None else self.broker.events_sent
        synced = self.sync.idle(sent) if hasattr(self, "sync") else True
        protecting = self.protector.active if hasattr(self, "protector") else 0
        return not pending and not sending and synced and not protecting

    # ----- health ----------------------------------------------------------------------

    def component_health(self) -> dict[str, dict[str, Any]]:
        return {
            "websocket": self._feeds_health(),
            "database": self._database_health(),
            "ipc": self._ipc_health(),
            "broker": self._broker_health(),
        }

    def reconciliation_view(self) -> dict[str, Any] | None:
        return self.reconciler.view() if hasattr(self, "reconciler") else None

    def _feeds_health(self) -> dict[str, Any]:
        """Per feed: healthy when connected and heard from recently (the simulated
        feed: within 10 of its intervals; an exchange feed: within 60 s). Any unhealthy
        feed makes the component unhealthy: the operator is told even about a feed that
        is not the venue."""
        feeds: dict[str, Any] = {}
        healthy = True
        simulated_stale = max(FEED_STALE_S, 10 * self.cfg.simulation.interval_ms / 1000)
        for name, feed in self.hub.feeds.items():
            age = feed.last_message_age_s()
            stale_after = simulated_stale if name == "simulated" else REAL_FEED_SILENT_S
            ok = feed.connected and age is not None and age <= stale_after
            healthy = healthy and ok
            feeds[name] = {
                "status": "healthy" if ok else "unhealthy",
                "state": feed.state,
                "connected": feed.connected,
                "last_message_age_s": None if age is None else round(age, 3),
                "reconnects": feed.reconnects,
                "rollovers": feed.rollovers,
                "messages": feed.messages,
                "malformed": feed.malformed,
                "last_error": feed.last_error,
                "venue": self.hub.book.is_venue(name),
            }
        healthy = healthy and bool(feeds)
        return {"status": "healthy" if healthy else "unhealthy", "feeds": feeds}

    def _database_health(self) -> dict[str, Any]:
        """Healthy when the database commits now (the store's write probe, at most one a
        second, never a guess from file permissions) and nothing waits to be saved."""
        stats = self.store.stats
        writable, why_not = self.store.takes_writes()
        age = self.store.last_commit_age_s
        # Changes kept in memory that the database refused, and what that stopped.
        unsaved = len(self.sync.unsaved) if hasattr(self, "sync") else 0
        faults = dict(self.risk.storage_faults) if hasattr(self, "risk") else {}
        ok = writable and not unsaved and not faults
        return {
            "status": "healthy" if ok else "unhealthy",
            "unsaved_changes": unsaved,
            "trading_limited_to": most_restrictive(*(st for st, _ in faults.values())).value
            if faults
            else None,
            "path": self.store.path,
            "writable": writable,
            "not_writable_because": why_not,
            "last_commit_age_s": None if age is None else round(age, 3),
            "commits": stats.commits,
            "last_error": stats.last_error,
            "write_failures": stats.write_failures,
        }

    def _ipc_health(self) -> dict[str, Any]:
        listening = self.ipc is not None and self.ipc.listening
        # the path must still be our socket: a deleted one reaches nobody (it is made
        # again within a second), something else there is reported until removed
        path = self.ipc.path_state().value if self.ipc is not None else None
        return {
            "status": "healthy" if listening and path == "ours" else "unhealthy",
            "socket_path": os.path.abspath(self.cfg.ipc.socket_path),
            "socket_file": path,
            "listening": listening,
            "connections": 0 if self.ipc is None else self.ipc.connections,
            "max_connections": self.cfg.ipc.max_connections,
            "requests_in_progress": 0 if self.ipc is None else self.ipc.pending,
            "signed_frames": self.cfg.ipc.hmac_secret is not None,
            "prepared_intents": 0 if self.router is None else len(self.router.intents),
        }

    def _broker_health(self) -> dict[str, Any]:
        if self.broker is None:
            return {"status": "unhealthy", "name": self.cfg.broker.name, "reachable": False}
        return self.broker.health()

    def health(self) -> dict[str, Any]:
        components = self.component_health()
        statuses = {name: c["status"] for name, c in components.items()}
        if statuses["database"] != "healthy" or statuses["broker"] != "healthy":
            overall = "unhealthy"
        elif not (hasattr(self, "reconciler") and self.reconciler.ready.is_set()):
            overall = "starting"  # no entries until the first reconciliation finished
        elif any(s not in ("healthy", "disabled") for s in statuses.values()):
            overall = "degraded"
        else:
            overall = "healthy"
        return {
            "status": overall,
            **components,
            "reconciliation": self.reconciliation_view(),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "version": __version__,
        }


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


async def run_service(cfg: Config, lock: InstanceLock | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly: first drain (nothing new is
    admitted; what was admitted finishes, is answered and committed; at most DRAIN_S),
    then cancel everything. A second signal stops at once. ``lock``: as for Engine."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            engine = Engine(cfg, lock)
            await nursery.start(engine.run)

            async def drain_then_stop() -> None:
                await engine.drain()
                nursery.cancel_scope.cancel()

            stopping = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if stopping:
                    log.warning("received %s again: stopping now", name)
                    nursery.cancel_scope.cancel()
                    break
                stopping = True
                log.info("received %s: shutting down", name)
                nursery.start_soon(drain_then_stop)
    log.info("stopped cleanly")
