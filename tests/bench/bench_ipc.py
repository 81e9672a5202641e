"""IPC benchmark: PREPARE+CONFIRM and CLOSE round trips through the Unix socket of a real
service.

The service runs as its own process (``python -m titan_trio run``) on a temporary
configuration; this script is the client (a separate process): plain blocking sockets,
the sender on the main thread, a reader thread timestamping each received chunk with
``time.perf_counter_ns()``. Pacing is open-loop: pair k is due at t0 + k/rate whatever
the replies do, and each pair's CONFIRM is sent right after its PREPARE on the same
connection (the service admits one connection's requests in order).

Prints, measured in this run on this machine:
- per rate (1, 100, 1,000 pairs/s): PREPARE and CONFIRM round trip (send -> reply read)
  p50/p99/max; the service's own ``latency_us`` (frame received -> reply written) of the
  CONFIRM replies, exact; CONFIRM received -> order acknowledged by the broker from the
  service's ``titan_order_latency_seconds`` histogram (diffed around the rate, p50/p99
  interpolated inside buckets, so only as exact as the buckets); replies by status and
  reason; lost, duplicated and out-of-order replies;
- CLOSE at 50 cycles/s: each cycle a PREPARE+CONFIRM (which fills: the bench's equity
  is phase 3, taker entries) and, on a second connection as soon as the CONFIRM is
  answered, a CLOSE of the position (one reduce-only market order); CLOSE and CONFIRM
  round trips and ``latency_us`` of the same run side by side, with their ratio;
- the floor: a bare trio NDJSON echo server on a Unix socket (its own process), same
  client code and pacing, at 100 and 1,000 messages/s;
- the service's RSS after the warm-up (the rate runs) and after 100,000 more signals
  (50,000 pairs, closed loop with a fixed window of pairs in flight);
- the targets with PASS/FAIL. Exit status is 0 even when a target fails; it is 1 when
  the service does not start, dies, or does not stop cleanly on SIGINT.

Configuration differences from config/default.json, so that ~61,000 long entries on
BTCUSDT never hit a limit: pyramiding on, maxPositions and maxTotalLeverage large, the
circuit breaker's drawdown and daily-loss limits at 100 % (no flattening), a tiny risk
per trade (0.005 %), leverage 200 (instrument and phase maximum too) and a BTCUSDT qty
step / min qty of 0.0001, about 9.5 USDT per entry: at the real 0.001 the 50,000 entries
would need ~4.75M USDT notional, more margin than 10,000 USDT gives even at the
protocol's maximum leverage of 200.
Each PREPARE: BTCUSDT LONG, entry zone the current ask +-2 %, stop 1 % below the zone.

Run: `make bench` (or `.venv/bin/python tests/bench/bench_ipc.py`). Takes 1.5-3 min: the
100,000-signal RSS run is bound by how many pairs per second the service handles (about
800-1,150 closed loop on a 2-CPU machine); it stops after RSS_TIME_LIMIT_S and
extrapolates, clearly labelled. `--rate 100 --no-rss` runs one rate and the CLOSE run
without the RSS run (about 30 s), for iterating; `--no-close` leaves the CLOSE run out.
The last line compares this run's echo floor with the reference floor the latency target
was set against: on a shared host it moves 2-6x from hour to hour, and every latency of
the run with it.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "BTCUSDT"
RATES = ((1, 5.0), (100, 10.0), (1000, 10.0))  # pairs per second, seconds
FLOOR_RATES = ((100, 5.0), (1000, 5.0))  # messages per second, seconds
RSS_PAIRS = 50_000  # 100,000 signals
RSS_WINDOW = 32  # pairs in flight during the RSS run
RSS_SAMPLE_EVERY = 10_000
RSS_TIME_LIMIT_S = 180.0
RSS_TARGET_MB = 10.0
CONFIRM_P99_TARGET_US = 2000.0
CLOSE_RATE, CLOSE_DURATION = 50, 10.0  # cycles per second, seconds
CLOSE_TARGET_RATIO = 1.5  # CLOSE round trip p50 and p99 over the same run's CONFIRM's
# The floor for "these machines": a bare trio echo server's round trip at
# 100 msg/s. The same machine kind measures 2-6x that at busy times (shared hosts), and
# every figure of a run scales with it, so each run prints its own floor against this.
REFERENCE_FLOOR_US = (50.0, 120.0)  # p50, p99
START_LIMIT_S = 20.0
DRAIN_LIMIT_S = 30.0  # longest wait for the last replies after the last send
STOP_LIMIT_S = 10.0

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

ECHO_SERVER = r"""
import sys

import msgspec
import trio

decode = msgspec.json.Decoder().decode
encode = msgspec.json.Encoder().encode


async def serve(stream):
    buf = b""
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                reply = {"id": decode(line).get("id"), "status": "pong", "latency_us": 0}
                await stream.send_all(encode(reply) + b"\n")


async def main(path):
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(128)
    print("ready", flush=True)
    await trio.serve_listeners(serve, [trio.SocketListener(sock)])


trio.run(main, sys.argv[1])
"""


class ServiceDied(Exception):
    pass


def exit_text(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


# ----- statistics ---------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the value below which a fraction p of values lie)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def us(x: float) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:,.0f}"


def triple(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{us(pct(values, 0.5))}/{us(pct(values, 0.99))}/{us(max(values))}"


def parse_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts by upper bound (inf for +Inf) of one Prometheus histogram."""
    out: dict[float, float] = {}
    prefix = f'{name}_bucket{{le="'
    for line in text.splitlines():
        if line.startswith(prefix):
            le, _, value = line[len(prefix) :].partition('"} ')
            out[float(le)] = float(value)
    return out


def parse_gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> str:
    """Quantile of the observations between two scrapes, interpolated linearly inside
    its bucket (as Prometheus' histogram_quantile does), in microseconds."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return "-"
    rank = q * counts[-1]
    i = bisect.bisect_left(counts, rank)
    if bounds[i] == float("inf"):
        return f">{us(bounds[i - 1] * 1e6)}"
    lower = bounds[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    inside = counts[i] - below
    value = lower + (bounds[i] - lower) * ((rank - below) / inside if inside else 1.0)
    return us(value * 1e6)


# ----- the client ---------------------------------------------------------------------


class Connection:
    """A blocking Unix-socket connection; a reader thread collects (receive time, line)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.lines: list[tuple[int, bytes]] = []
        self.count = 0
        self.eof = False
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        buf = b""
        recv = self.sock.recv
        clock = time.perf_counter_ns
        while True:
            try:
                data = recv(262144)
            except OSError:
                break
            t = clock()
            if not data:
                break
            buf += data
            if b"\n" not in data:
                continue
            *lines, buf = buf.split(b"\n")
            self.lines.extend([(t, line) for line in lines])
            with self.cond:
                self.count += len(lines)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n or self.eof, timeout) and (
                self.count >= n
            )

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.reader.join(2)


Frame = tuple[int, str, bytes]  # request id, kind, bytes
MakeFrames = Callable[[int], list[Frame]]


@dataclass
class RunResult:
    label: str
    sent: list[tuple[int, str, int]] = field(default_factory=list)  # id, kind, send ns
    due: list[int] = field(default_factory=list)  # each request's timetable slot, ns
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    first_send_ns: int = 0
    last_send_ns: int = 0
    max_lag_ns: int = 0  # how far a send ran behind its timetable slot
    complete: bool = True


def open_loop(path: str, rate: float, duration: float, make: MakeFrames, label: str) -> RunResult:
    """Send make(k)'s frames at t0 + k/rate for k < rate*duration; then wait for replies."""
    conn = Connection(path)
    result = RunResult(label)
    sent = result.sent
    clock = time.perf_counter_ns
    sendall = conn.sock.sendall
    n = max(1, round(rate * duration))
    interval = 1e9 / rate
    t0 = clock() + 2_000_000
    for k in range(n):
        frames = make(k)
        target = t0 + int(k * interval)
        now = clock()
        if target > now:
            time.sleep((target - now) / 1e9)
        first = 0
        for rid, kind, data in frames:
            t = clock()
            sendall(data)
            sent.append((rid, kind, t))
            result.due.append(target)
            first = first or t
        result.max_lag_ns = max(result.max_lag_ns, first - target)
    result.first_send_ns, result.last_send_ns = sent[0][2], sent[-1][2]
    result.complete = conn.wait_for(len(sent), DRAIN_LIMIT_S)
    conn.close()
    result.lines = conn.lines
    return result


@dataclass
class Analysis:
    rtt: dict[str, list[float]]  # kind -> microseconds
    rtt_from_slot: dict[str, list[float]]  # from the timetable slot instead of the send
    latency_us: dict[str, list[float]]
    outcomes: Counter[str]
    lost: int
    duplicated: int
    unexpected: int  # replies whose id was never sent
    out_of_order: int  # replies that arrived before an earlier request's reply
    last_reply_ns: int


def analyse(result: RunResult) -> Analysis:
    index = {rid: i for i, (rid, _kind, _t) in enumerate(result.sent)}
    first_reply: dict[int, tuple[int, dict[str, Any]]] = {}
    duplicated = unexpected = out_of_order = 0
    previous = -1
    for t, line in result.lines:
        reply = _decoder.decode(line)
        rid = reply.get("id")
        if rid not in index:
            unexpected += 1
            continue
        if rid in first_reply:
            duplicated += 1
            continue
        first_reply[rid] = (t, reply)
        if index[rid] < previous:
            out_of_order += 1
        previous = max(previous, index[rid])
    rtt: dict[str, list[float]] = {}
    from_slot: dict[str, list[float]] = {}
    lat: dict[str, list[float]] = {}
    outcomes: Counter[str] = Counter()
    for i, (rid, kind, t_sent) in enumerate(result.sent):
        got = first_reply.get(rid)
        if got is None:
            continue
        t, reply = got
        rtt.setdefault(kind, []).append((t - t_sent) / 1000)
        if result.due:
            from_slot.setdefault(kind, []).append((t - result.due[i]) / 1000)
        lat.setdefault(kind, []).append(float(reply.get("latency_us", 0)))
        outcome = reply.get("status", "?")
        if reply.get("reason"):
            outcome += f"/{reply['reason']}"
        outcomes[f"{kind} {outcome}"] += 1
    return Analysis(
        rtt,
        from_slot,
        lat,
        outcomes,
        lost=len(result.sent) - len(first_reply),
        duplicated=duplicated,
        unexpected=unexpected,
        out_of_order=out_of_order,
        last_reply_ns=result.lines[-1][0] if result.lines else 0,
    )


def rejection_samples(result: RunResult, limit: int = 3) -> list[str]:
    out = []
    for _t, line in result.lines:
        reply = _decoder.decode(line)
        if reply.get("status") == "rejected":
            out.append(f"{reply.get('reason')}: {reply.get('message')}")
            if len(out) >= limit:
                break
    return out


def cpu_seconds(path: str) -> float:
    """utime + stime of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_written(pid: int) -> int:
    """Bytes the process caused to be written to storage (/proc/<pid>/io write_bytes)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class CpuMark:
    """CPU used so far by the service (all threads, and its trio thread) and by us, and
    what the service has written to disk."""

    wall: float
    service: float
    trio_thread: float
    client: float
    written: int

    @classmethod
    def take(cls, pid: int) -> CpuMark:
        t = os.times()
        return cls(
            time.monotonic(),
            cpu_seconds(f"/proc/{pid}/stat"),
            cpu_seconds(f"/proc/{pid}/task/{pid}/stat"),
            t.user + t.system,
            disk_written(pid),
        )

    def usage_since(self, start: CpuMark, pairs: int) -> str:
        wall = max(self.wall - start.wall, 1e-9)
        service = (self.service - start.service) / wall * 100
        trio_thread = (self.trio_thread - start.trio_thread) / wall * 100
        client = (self.client - start.client) / wall * 100
        written = self.written - start.written
        return (
            f"over {wall:.1f} s: service CPU {service:.0f} % (trio thread {trio_thread:.0f} %, "
            f"other threads {service - trio_thread:.0f} %), client CPU {client:.0f} %; "
            f"service wrote {written / 2**20:,.1f} MB to disk "
            f"({written / max(pairs, 1) / 1024:,.0f} KB per pair)"
        )


def stall_episodes(result: RunResult, threshold_us: int = 10_000) -> str:
    """Replies the service took longer than threshold_us over (its latency_us), grouped
    into episodes (replies read within 100 ms of each other)."""
    episodes: list[list[float]] = []  # start s, end s, longest us, count
    for t, line in result.lines:
        latency = _decoder.decode(line).get("latency_us", 0)
        if latency <= threshold_us:
            continue
        at = (t - result.first_send_ns) / 1e9
        if episodes and at - episodes[-1][1] < 0.1:
            e = episodes[-1]
            e[1], e[2], e[3] = at, max(e[2], latency), e[3] + 1
        else:
            episodes.append([at, at, latency, 1])
    if not episodes:
        return f"no reply took the service over {threshold_us / 1000:.0f} ms"
    slow = sum(int(e[3]) for e in episodes)
    longest = max(e[2] for e in episodes)
    shown = ", ".join(f"{e[0]:.1f} s ({e[2] / 1000:.0f} ms)" for e in episodes[:6])
    more = f" and {len(episodes) - 6} more" if len(episodes) > 6 else ""
    return (
        f"{slow} replies took the service over {threshold_us / 1000:.0f} ms, in "
        f"{len(episodes)} episodes (longest {longest / 1000:.0f} ms) at {shown}{more}"
    )


# ----- the floor ----------------------------------------------------------------------


def run_floor(tmp: Path) -> dict[int, list[float]]:
    path = str(tmp / "echo.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER, path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo server did not start")
        out: dict[int, list[float]] = {}
        for rate, duration in FLOOR_RATES:

            def make(k: int) -> list[Frame]:
                return [(k, "ECHO", _encoder.encode({"type": "PING", "id": k}) + b"\n")]

            result = open_loop(path, rate, duration, make, f"floor {rate}/s")
            a = analyse(result)
            out[rate] = a.rtt.get("ECHO", [])
            print(
                f"  floor {rate:>5,} msg/s: {len(result.sent):,} sent, lost {a.lost}, "
                f"rtt p50/p99/max {triple(out[rate])} us, "
                f"send lag max {result.max_lag_ns / 1e3:,.0f} us"
            )
        return out
    finally:
        proc.terminate()
        proc.wait(5)


# ----- the service --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, port: int) -> Path:
    doc = json.loads((ROOT / "config" / "default.json").read_text())
    doc["api"]["port"] = port
    doc["ipc"]["socketPath"] = str(tmp / "titan-ipc.sock")
    doc["database"]["path"] = str(tmp / "titan.db")
    doc["logging"]["dir"] = str(tmp / "logs")
    risk_pct = 0.005
    doc["risk"].update(
        {
            "maxRiskPct": risk_pct,
            "phase1RiskPct": risk_pct,
            "phase2RiskPct": risk_pct,
            "phase3RiskPct": risk_pct,
            "phase1MaxLeverage": 200,
            "phase2MaxLeverage": 200,
            "phase3MaxLeverage": 200,
            "maxPositions": 1000,
            "allowPyramiding": True,
            "maxTotalLeverage": 1000,
            # ~580k USDT of longs move equity by thousands: the breaker must not trip.
            "maxDrawdownPct": 100,
            "maxDailyLossPct": 100,
            "maxConsecutiveLosses": 1_000_000,
            "flattenOnBreaker": False,
        }
    )
    doc["instruments"] = {
        SYMBOL: {
            "tickSize": "0.10",
            "qtyStep": "0.0001",
            "minQty": "0.0001",
            "minNotional": "5",
            "maxLeverage": 200,
        }
    }
    path = tmp / "bench-config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


class Service:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.config = write_config(tmp, self.port)
        self.cfg = json.loads(self.config.read_text())
        self.socket_path = self.cfg["ipc"]["socketPath"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = tmp / "service-stdout.log"
        self.http = httpx.Client(base_url=self.url, timeout=5)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        started = time.monotonic()
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "titan_trio", "run", "--config", str(self.config)],
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = started + START_LIMIT_S
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if self.http.get("/api/health").json().get("status") == "healthy":
                    return time.monotonic() - started
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        raise ServiceDied(f"the service was not healthy within {START_LIMIT_S:.0f} s")

    def check_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise ServiceDied(f"the service {exit_text(code)}")

    def ask(self) -> float:
        return float(self.http.get("/api/market").json()[SYMBOL]["ask"])

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def rss_bytes(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> tuple[int | None, float]:
        """SIGINT, then wait; returns the exit code (None if it had to be killed)."""
        self.http.close()
        if self.proc is None:
            return None, 0.0
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, time.monotonic() - started
        return code, time.monotonic() - started

    def log_problems(self) -> tuple[Counter[str], list[str]]:
        levels: Counter[str] = Counter()
        samples: list[str] = []
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            return levels, samples
        for line in text.splitlines():
            for level in ("WARNING", "ERROR", "CRITICAL", "Traceback"):
                if f" {level} " in line or line.startswith(level):
                    levels[level] += 1
                    if len(samples) < 8:
                        samples.append(line[:240])
        return levels, samples

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no output)"


class Signals:
    """PREPARE/CONFIRM frames with unique ids across the whole run."""

    def __init__(self) -> None:
        self.seq = 0
        self.run = f"b{os.getpid()}x{int(time.time())}"
        self.zone: tuple[float, float, float, list[float]] = (0.0, 0.0, 0.0, [])

    def around(self, ask: float) -> None:
        """Entry zone ask +-2 %, stop 1 % below the zone, targets above it."""
        lo, hi = round(ask * 0.98, 1), round(ask * 1.02, 1)
        self.zone = (lo, hi, round(lo * 0.99, 1), [round(ask * 1.03, 1), round(ask * 1.05, 1)])

    def pair(self, _k: int = 0) -> list[Frame]:
        k = self.seq
        self.seq += 1
        sid = f"{self.run}-{k}"
        lo, hi, stop, _targets = self.zone
        prepare = {
            "type": "PREPARE",
            "id": 2 * k,
            "signal_id": sid,
            "source": "bench",
            "symbol": SYMBOL,
            "direction": "LONG",
            "entry_zone": {"min": lo, "max": hi},
            "stop_loss": stop,
            # No take profits: each would leave resting reduce-only orders behind, and
            # 50,000 pyramided entries would measure an account of 100,000 resting orders
            # rather than the signal path. Protection runs after the reply either way.
            "take_profits": [],
            "confidence": 80,
            "leverage": 200,
            "timestamp": int(time.time() * 1000),
        }
        confirm = {"type": "CONFIRM", "id": 2 * k + 1, "signal_id": sid}
        return [
            (2 * k, "PREPARE", _encoder.encode(prepare) + b"\n"),
            (2 * k + 1, "CONFIRM", _encoder.encode(confirm) + b"\n"),
        ]

    def close(self, k: int) -> list[Frame]:
        """A CLOSE of the whole position, under a fresh signal id (request ids -1, -2, ...:
        apart from the pairs' ids)."""
        message = {
            "type": "CLOSE",
            "id": -(k + 1),
            "signal_id": f"{self.run}-close-{k}",
            "symbol": SYMBOL,
            "reason": "bench",
        }
        return [(-(k + 1), "CLOSE", _encoder.encode(message) + b"\n")]


@dataclass
class RateRow:
    rate: int
    result: RunResult
    analysis: Analysis
    hist_p50: str
    hist_p99: str
    hist_count: float
    achieved: float = 0.0  # pairs per second the client managed to send


HIST = "titan_order_latency_seconds"


def run_rate(service: Service, signals: Signals, rate: int, duration: float) -> RateRow:
    signals.around(service.ask())
    before = parse_histogram(service.metrics(), HIST)
    cpu0 = CpuMark.take(service.pid)
    result = open_loop(service.socket_path, rate, duration, signals.pair, f"{rate}/s")
    cpu1 = CpuMark.take(service.pid)
    service.check_alive()
    after = parse_histogram(service.metrics(), HIST)
    a = analyse(result)
    count = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    row = RateRow(
        rate,
        result,
        a,
        histogram_quantile(0.5, before, after),
        histogram_quantile(0.99, before, after),
        count,
    )
    span = (result.last_send_ns - result.first_send_ns) / 1e9
    pairs = len(result.sent) // 2
    achieved = (pairs - 1) / span if span > 0 else float(rate)
    row.achieved = achieved
    done = (a.last_reply_ns - result.first_send_ns) / 1e9
    print(
        f"  {rate:>5,} pairs/s: {pairs:,} pairs sent in {span:.2f} s (achieved "
        f"{achieved:,.0f} pairs/s; latest send {result.max_lag_ns / 1e6:,.1f} ms behind its "
        f"slot), last reply {done:.2f} s after the first send"
    )
    if achieved < 0.9 * rate:
        print(
            f"      RATE NOT SUSTAINED: the service took in only ~{achieved:,.0f} pairs/s; the "
            "client's sends were held back by the service's backpressure (it stops reading "
            "a connection with 256 requests unanswered)"
        )
        print(
            "      round trip from the timetable slot (includes the time held back), "
            f"p50/p99/max us: PREPARE {triple(a.rtt_from_slot.get('PREPARE', []))}, "
            f"CONFIRM {triple(a.rtt_from_slot.get('CONFIRM', []))}"
        )
    print(
        f"      {len(result.sent):,} requests: lost {a.lost}, duplicated {a.duplicated}, "
        f"out of order {a.out_of_order}, unknown ids {a.unexpected}; "
        f"{count:,.0f} orders in the latency histogram"
    )
    print(f"      replies: {', '.join(f'{k}: {v:,}' for k, v in sorted(a.outcomes.items()))}")
    for sample in rejection_samples(result):
        print(f"      rejected: {sample}")
    if achieved >= 0.9 * rate:
        print(f"      {stall_episodes(result)}")
    print(f"      {cpu1.usage_since(cpu0, pairs)}")
    return row


@dataclass
class CloseRow:
    pairs: Analysis
    closes: Analysis
    complete: bool

    def ratio(self, p: float, figures: str = "rtt") -> float:
        """CLOSE over CONFIRM at percentile p, of their round trips (or latency_us)."""
        close = getattr(self.closes, figures).get("CLOSE", [])
        confirm = pct(getattr(self.pairs, figures).get("CONFIRM", []), p)
        return pct(close, p) / confirm if confirm else float("nan")


def run_close(service: Service, signals: Signals, rate: int, duration: float) -> CloseRow:
    """Cycle k's PREPARE+CONFIRM at t0 + k/rate on one connection; its CLOSE on another
    as soon as the CONFIRM's reply is read, as a strategy getting out at once would (the
    entry's fill is then still being recorded and protected). Each pair waits for the
    CLOSE before it: a CLOSE always finds one filled entry to close, never another CLOSE
    of the symbol at work (a slow reply holds the timetable back instead; how often is
    printed). Round trips are from the send."""
    signals.around(service.ask())
    time.sleep(1.0)  # let the previous run's broker events settle
    conns = (Connection(service.socket_path), Connection(service.socket_path))
    results = (RunResult("close run: pairs"), RunResult("close run: closes"))
    makers: tuple[MakeFrames, MakeFrames] = (signals.pair, signals.close)
    clock = time.perf_counter_ns
    n = round(rate * duration)
    interval = 1e9 / rate
    held_back = 0  # pairs that waited for a CLOSE's reply past their slot
    stalled = False
    cpu0 = CpuMark.take(service.pid)
    t0 = clock() + 2_000_000
    for k in range(n):
        for which in (0, 1):
            # before a CLOSE, its cycle's 2 replies; before a pair, the CLOSE before it
            if not conns[1 - which].wait_for(2 * (k + 1) if which else k, DRAIN_LIMIT_S):
                stalled = True
                break
            target = now = clock()
            if not which:
                target = t0 + int(k * interval)
                if target > now:
                    time.sleep((target - now) / 1e9)
                elif now - target > 1_000_000:
                    held_back += 1
            result = results[which]
            for rid, kind, data in makers[which](k):
                t = clock()
                conns[which].sock.sendall(data)
                result.sent.append((rid, kind, t))
                result.due.append(target)
        if stalled:
            break
    complete = not stalled
    for conn, result in zip(conns, results, strict=True):
        result.first_send_ns, result.last_send_ns = result.sent[0][2], result.sent[-1][2]
        complete = conn.wait_for(len(result.sent), DRAIN_LIMIT_S) and complete
        conn.close()
        result.lines = conn.lines
    cpu1 = CpuMark.take(service.pid)
    service.check_alive()
    pairs, closes = analyse(results[0]), analyse(results[1])
    print(
        f"  CLOSE run, {rate:,} cycles/s for {duration:.0f} s (PREPARE+CONFIRM, then a CLOSE "
        f"on a second connection once the CONFIRM is answered): {held_back} of {n:,} pairs "
        "went over 1 ms past their slot, waiting for the CLOSE before them"
        + (" STALLED: a reply did not come" if stalled else "")
    )
    for a in (pairs, closes):
        print(
            f"      lost {a.lost}, duplicated {a.duplicated}, out of order {a.out_of_order}; "
            f"replies: {', '.join(f'{k}: {v:,}' for k, v in sorted(a.outcomes.items()))}"
        )
    for result in results:
        for sample in rejection_samples(result):
            print(f"      rejected: {sample}")
    print(f"      {cpu1.usage_since(cpu0, n)}")
    return CloseRow(pairs, closes, complete)


@dataclass
class RssResult:
    baseline: int
    final: int
    pairs: int
    elapsed: float
    samples: list[tuple[int, int]]
    outcomes: Counter[str]
    lost: int
    out_of_order: int
    stalled: bool

    @property
    def growth_mb(self) -> float:
        return (self.final - self.baseline) / 2**20

    @property
    def projected_mb(self) -> float:
        return self.growth_mb * RSS_PAIRS / self.pairs if self.pairs else float("nan")


def run_rss(service: Service, signals: Signals) -> RssResult:
    """Closed loop: at most RSS_WINDOW pairs unanswered; RSS sampled as it goes."""
    signals.around(service.ask())
    time.sleep(1.0)  # let the previous run's broker events settle
    baseline = service.rss_bytes()
    conn = Connection(service.socket_path)
    result = RunResult("rss")
    sendall = conn.sock.sendall
    samples = [(0, baseline)]
    cpu0 = CpuMark.take(service.pid)
    started = time.monotonic()
    stalled = False
    pairs = 0
    for k in range(RSS_PAIRS):
        if k >= RSS_WINDOW and not conn.wait_for(2 * (k - RSS_WINDOW + 1), DRAIN_LIMIT_S):
            stalled = True
            break
        if k and k % 2000 == 0:
            signals.around(service.ask())  # follow the market (zone is +-2 %)
        for rid, kind, data in signals.pair():
            result.sent.append((rid, kind, time.perf_counter_ns()))
            sendall(data)
        pairs = k + 1
        if pairs % RSS_SAMPLE_EVERY == 0:
            samples.append((pairs, service.rss_bytes()))
            service.check_alive()
        if time.monotonic() - started > RSS_TIME_LIMIT_S:
            break
    if not stalled:
        stalled = not conn.wait_for(len(result.sent), DRAIN_LIMIT_S)
    elapsed = time.monotonic() - started
    cpu1 = CpuMark.take(service.pid)
    conn.close()
    result.lines = conn.lines
    service.check_alive()
    time.sleep(1.0)  # the broker's events for the last orders
    final = service.rss_bytes()
    metric = parse_gauge(service.metrics(), "titan_process_resident_memory_bytes")
    if samples[-1][0] != pairs:
        samples.append((pairs, final))
    a = analyse(result)
    print(
        f"  RSS run: {pairs:,} pairs ({2 * pairs:,} signals) in {elapsed:.1f} s "
        f"({pairs / elapsed:,.0f} pairs/s closed loop, window {RSS_WINDOW}); lost {a.lost}, "
        f"out of order {a.out_of_order}{', STALLED' if stalled else ''}"
    )
    print(f"      replies: {', '.join(f'{k}: {v:,}' for k, v in sorted(a.outcomes.items()))}")
    for sample in rejection_samples(result):
        print(f"      rejected: {sample}")
    print(
        "      RSS (VmRSS) by pairs sent: "
        + ", ".join(f"{p:,}: {b / 2**20:.1f} MB" for p, b in samples)
        + (f"; /metrics gauge at the end: {metric / 2**20:.1f} MB" if metric else "")
    )
    print(f"      {cpu1.usage_since(cpu0, pairs)}")
    return RssResult(
        baseline,
        final,
        pairs,
        elapsed,
        samples,
        a.outcomes,
        a.lost,
        a.out_of_order,
        stalled,
    )


# ----- report -------------------------------------------------------------------------


def print_table(rows: list[RateRow], floor: dict[int, list[float]]) -> None:
    print()
    print("IPC round trips, microseconds (rtt: send -> reply read by the client; latency_us:")
    print("frame received -> reply written, by the service, exact; order latency: CONFIRM")
    print("received -> broker ack, from the service's histogram, BUCKETED: interpolated)")
    header = (
        f"{'rate pairs/s':>12} | {'PREPARE rtt p50/p99/max':>27} | "
        f"{'CONFIRM rtt p50/p99/max':>27} | {'CONFIRM latency_us p50/p99/max':>30} | "
        f"{'order latency p50/p99 (hist)':>28} | {'floor rtt p50/p99':>17}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        a = row.analysis
        fl = floor.get(row.rate)
        floor_txt = f"{us(pct(fl, 0.5))}/{us(pct(fl, 0.99))}" if fl else "-"
        print(
            f"{row.rate:>12,} | {triple(a.rtt.get('PREPARE', [])):>27} | "
            f"{triple(a.rtt.get('CONFIRM', [])):>27} | "
            f"{triple(a.latency_us.get('CONFIRM', [])):>30} | "
            f"{row.hist_p50 + '/' + row.hist_p99:>28} | {floor_txt:>17}"
        )
    print(
        "PREPARE latency_us p50/p99/max: "
        + "; ".join(
            f"{r.rate:,}/s {triple(r.analysis.latency_us.get('PREPARE', []))}" for r in rows
        )
    )
    print("(floor: bare trio NDJSON echo server, one message per tick at that rate, same client)")


def print_close(row: CloseRow, floor: dict[int, list[float]]) -> None:
    print()
    print(
        f"CLOSE against CONFIRM, same run ({CLOSE_RATE} cycles/s), microseconds: "
        "rtt p50/p99/max, latency_us p50/p99/max"
    )
    for label, a, kind in (
        ("PREPARE", row.pairs, "PREPARE"),
        ("CONFIRM", row.pairs, "CONFIRM"),
        ("CLOSE", row.closes, "CLOSE"),
    ):
        print(
            f"  {label:>8}: rtt {triple(a.rtt.get(kind, [])):>25}   "
            f"latency_us {triple(a.latency_us.get(kind, [])):>25}"
        )
    fl = floor.get(100, [])
    print(
        f"  CLOSE / CONFIRM rtt: p50 {row.ratio(0.5):.2f}x, p99 {row.ratio(0.99):.2f}x; "
        f"latency_us: p50 {row.ratio(0.5, 'latency_us'):.2f}x, "
        f"p99 {row.ratio(0.99, 'latency_us'):.2f}x (a CONFIRM's figures include the end of "
        "the PREPARE sent right before it; floor rtt p50/p99 at 100 msg/s: "
        f"{us(pct(fl, 0.5))}/{us(pct(fl, 0.99))})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="IPC benchmark (see the module docstring).")
    parser.add_argument(
        "--rate",
        type=int,
        action="append",
        choices=[r for r, _ in RATES],
        help="run only this rate (repeatable); the default runs all of them",
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the 100,000-signal RSS run")
    parser.add_argument("--no-close", action="store_true", help="skip the CLOSE run")
    args = parser.parse_args(argv)
    rates = [(r, d) for r, d in RATES if not args.rate or r in args.rate]
    bench_started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="titan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print("IPC benchmark: PREPARE+CONFIRM pairs through the Unix socket of a real service")
        print("floor (bare trio echo server, separate process):")
        floor = run_floor(tmp)

        service = Service(tmp)
        rows: list[RateRow] = []
        close: CloseRow | None = None
        rss: RssResult | None = None
        failure: str | None = None
        try:
            took = service.start()
            print(
                f"service pid {service.pid} healthy in {took:.1f} s, RSS "
                f"{service.rss_bytes() / 2**20:.1f} MB; rates (open loop, PREPARE then "
                "CONFIRM per tick):"
            )
            signals = Signals()
            for rate, duration in rates:
                rows.append(run_rate(service, signals, rate, duration))
            if not args.no_close:
                close = run_close(service, signals, CLOSE_RATE, CLOSE_DURATION)
            if not args.no_rss:
                rss = run_rss(service, signals)
        except ServiceDied as exc:
            failure = str(exc)
        except (OSError, httpx.HTTPError) as exc:
            failure = f"client error: {exc!r}"
            if service.proc is not None:
                try:
                    died = service.proc.wait(2)
                except subprocess.TimeoutExpired:
                    died = None
                if died is not None:
                    failure += f"; the service {exit_text(died)}"
        finally:
            code, stop_s = service.stop()
            levels, samples = service.log_problems()
            tail = service.tail()

    if failure is not None:
        print(f"\nFAILED: {failure}")
        print(f"service output (last lines):\n{tail}")
        return 1

    print_table(rows, floor)
    if close is not None:
        print_close(close, floor)
    print()
    by_rate = {r.rate: r for r in rows}
    targets: list[tuple[str, bool, str]] = []
    r100 = by_rate.get(100)
    if r100 is not None:
        p99 = pct(r100.analysis.rtt.get("CONFIRM", []), 0.99)
        targets.append(
            (
                "p99 CONFIRM round trip < 2 ms at 100 pairs/s",
                p99 < CONFIRM_P99_TARGET_US and r100.analysis.lost == 0,
                f"p99 {us(p99)} us (floor p99 at 100 msg/s: "
                f"{us(pct(floor.get(100, []), 0.99))} us)",
            )
        )
    r1000 = by_rate.get(1000)
    if r1000 is not None:
        a = r1000.analysis
        ok = a.lost == 0 and a.out_of_order == 0 and a.duplicated == 0 and r1000.result.complete
        targets.append(
            (
                "no reply lost or reordered at 1,000 pairs/s",
                ok,
                f"{len(r1000.result.sent):,} requests, lost {a.lost}, duplicated "
                f"{a.duplicated}, out of order {a.out_of_order} (offered 1,000 pairs/s; "
                f"sent at {r1000.achieved:,.0f} pairs/s, held back by backpressure)"
                if r1000.achieved < 900
                else f"{len(r1000.result.sent):,} requests, lost {a.lost}, duplicated "
                f"{a.duplicated}, out of order {a.out_of_order}",
            )
        )
    if close is not None:
        p50, p99 = close.ratio(0.5), close.ratio(0.99)
        targets.append(
            (
                f"CLOSE round trip within {CLOSE_TARGET_RATIO}x the CONFIRM's (same run, "
                f"{CLOSE_RATE} cycles/s)",
                p50 <= CLOSE_TARGET_RATIO
                and p99 <= CLOSE_TARGET_RATIO
                and close.closes.lost == 0
                and close.complete,
                f"p50 {p50:.2f}x, p99 {p99:.2f}x; CLOSE p50/p99 "
                f"{us(pct(close.closes.rtt.get('CLOSE', []), 0.5))}/"
                f"{us(pct(close.closes.rtt.get('CLOSE', []), 0.99))} us",
            )
        )
    if rss is not None:
        full = rss.pairs == RSS_PAIRS
        growth = rss.growth_mb if full else rss.projected_mb
        label = (
            f"{rss.growth_mb:+.1f} MB over {2 * rss.pairs:,} signals "
            f"({rss.baseline / 2**20:.1f} -> {rss.final / 2**20:.1f} MB)"
        )
        if not full:
            label += f"; EXTRAPOLATED linearly to 100,000 signals: {growth:+.1f} MB"
        targets.append(
            (
                f"RSS growth < {RSS_TARGET_MB:.0f} MB over 100,000 signals",
                growth < RSS_TARGET_MB,
                label,
            )
        )
    print("targets:")
    for name, ok, detail in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    floor100 = floor.get(100, [])
    if floor100:
        f50, f99 = pct(floor100, 0.5), pct(floor100, 0.99)
        print(
            f"machine: this run's echo floor at 100 msg/s is p50 {us(f50)} / p99 {us(f99)} us, "
            f"{f50 / REFERENCE_FLOOR_US[0]:.1f}x / {f99 / REFERENCE_FLOOR_US[1]:.1f}x the "
            f"reference {REFERENCE_FLOOR_US[0]:.0f} / {REFERENCE_FLOOR_US[1]:.0f} us the "
            "latency target was set against"
        )

    print()
    print(f"service stopped with SIGINT: exit code {code} in {stop_s:.2f} s")
    if code != 0:
        print(f"FAILED: the service did not exit 0 on SIGINT; its last lines:\n{tail}")
    if levels:
        print("service log: " + ", ".join(f"{k} {v}" for k, v in sorted(levels.items())))
        for s in samples:
            print(f"  {s}")
    else:
        print("service log: no WARNING, ERROR, CRITICAL or Traceback lines")
    print(f"bench took {time.monotonic() - bench_started:.1f} s")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
