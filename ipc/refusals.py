"""One log line per refused IPC request or connection, rate-limited per reason.

Operators grep the log for rejections, so every ``rejected`` reply the listener makes is
one line, whatever refused it (framing, schema, signature, load, or the service's gates):

    refused PREPARE reason=MAX_POSITIONS signal=sig-1 symbol=BTCUSDT request=r2
    source=demo pid=4242 uid=1000 message="5 symbols held or being entered (max 5)"

INFO, except WARNING for the reasons an operator should look at even once: a strategy
still sending while trading is halted (TRADING_HALTED), a client that does not speak the
protocol (INVALID_FRAME), a frame that fails its signature (UNAUTHENTICATED) and a refused
connection (MAX_CONNECTIONS). Values a client chose (ids, source, the message that quotes
its fields) are quoted and escaped, so a client cannot forge log lines.

A misbehaving client must not flood the log (and the disk under it): each reason has a
token bucket of ``BURST`` lines that refills at ``PER_SECOND`` lines a second. A refusal
over the budget is counted, not logged; once the bucket has room again, a WARNING "N more
refusals suppressed" says how many went unlogged, for which reason and over how long, on
the next refusal of that reason or, if none comes, from ``run`` within a second. Replies
are never held back: only the log is limited.

It must never raise into the listener, and never log a secret (frames are not logged).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

import trio

from ipc.peers import Peer
from ipc.protocol import Reason, Reply

BURST = 10  # lines of one reason logged at once
PER_SECOND = 1.0  # then this many a second, per reason
MAX_MESSAGE_CHARS = 300
WARNING_REASONS = frozenset(
    {Reason.TRADING_HALTED, Reason.INVALID_FRAME, Reason.UNAUTHENTICATED, Reason.MAX_CONNECTIONS}
)
_PLAIN = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0
    suppressed_since: float = 0.0

    def take(self, now: float, burst: int, per_second: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.updated) * per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RefusalLog:
    def __init__(
        self, log: logging.Logger, *, burst: int = BURST, per_second: float = PER_SECOND
    ) -> None:
        self.log = log
        self.burst = burst
        self.per_second = per_second
        self._buckets: dict[Reason | None, _Bucket] = {}
        self._suppressing = trio.Event()  # set while some reason has unreported lines

    def refused(
        self,
        what: str,
        reply: Reply,
        peer: Peer,
        *,
        symbol: str | None = None,
        source: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Log the refusal ``reply`` to a request of type ``what`` (``PREPARE``, ...,
        ``frame`` when the type is unknown, ``connection``) from ``peer``; ``detail``
        is for the log only."""
        reason = reply.reason
        now = trio.current_time()
        bucket = self._buckets.get(reason)
        if bucket is None:
            bucket = self._buckets[reason] = _Bucket(self.burst, now)
        if not bucket.take(now, self.burst, self.per_second):
            if bucket.suppressed == 0:
                bucket.suppressed_since = now
            bucket.suppressed += 1
            self._suppressing.set()
            return
        self._report_suppressed(reason, bucket, now)
        fields = [f"reason={reason.value if reason is not None else '-'}"]
        if what != "connection":  # a refused connection has sent no request
            fields += [
                f"signal={_value(reply.signal_id)}",
                f"symbol={_value(symbol or reply.symbol)}",
                f"request={_value(reply.id)}",
            ]
        if source is not None:
            fields.append(f"source={_value(source)}")
        if peer.pid is not None:
            fields.append(f"pid={peer.pid} uid={peer.uid}")
        fields.append(f"message={_quoted(reply.message or '')}")
        if detail:
            fields.append(f"detail={_quoted(detail)}")
        level = logging.WARNING if reason in WARNING_REASONS else logging.INFO
        self.log.log(level, "refused %s %s", what, " ".join(fields))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report suppressed refusals once their reason may log again, even when no
        further refusal of that reason comes to carry the report."""
        task_status.started()
        while True:
            await self._suppressing.wait()
            await trio.sleep(1 / self.per_second)
            now = trio.current_time()
            for reason, bucket in self._buckets.items():
                if bucket.suppressed and bucket.take(now, self.burst, self.per_second):
                    self._report_suppressed(reason, bucket, now)
            if not any(bucket.suppressed for bucket in self._buckets.values()):
                self._suppressing = trio.Event()

    def _report_suppressed(self, reason: Reason | None, bucket: _Bucket, now: float) -> None:
        if not bucket.suppressed:
            return
        self.log.warning(
            "%d more refusals suppressed (reason=%s, over %.1f s; the log keeps %d lines at "
            "once and %g a second per reason)",
            bucket.suppressed,
            reason.value if reason is not None else "-",
            now - bucket.suppressed_since,
            self.burst,
            self.per_second,
        )
        bucket.suppressed = 0


def _value(value: object) -> str:
    """A field's value: as it is when plain, JSON-quoted otherwise; ``-`` when absent."""
    if value is None:
        return "-"
    text = str(value)
    return text if _PLAIN.match(text) else _quoted(text)


def _quoted(text: str) -> str:
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "..."
    # json.dumps escapes quotes, backslashes and control characters: one line, always.
    return (
        json.dumps(text, ensure_ascii=False)
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
