"""What a Bybit v5 answer means for the order or request it was about (EXCHANGES.md,
"retCodes worth mapping"; SPEC §6).

Every answer is an envelope ``{"retCode", "retMsg", "result", ...}``; ``retCode != 0`` is
an error even with HTTP 200. The one distinction that matters for money: did the answer
*prove* the exchange did not take the request (REJECTED: the order is REJECTED, nothing to
settle), or can it not tell (AMBIGUOUS, RATE_LIMITED: the order stays in flight for the
private stream, a status query or reconciliation, and is never sent again under a new
id)? An unreadable answer is ambiguous, never a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Outcome(Enum):
    OK = "ok"
    REJECTED = "rejected"  # proven not taken
    AMBIGUOUS = "ambiguous"  # may have been taken: settle by id, never resend
    RATE_LIMITED = "rate_limited"  # back off until the reset time; not proven either way
    CLOCK = "clock"  # timestamp outside the window (10002): re-sync, then retry once
    EXISTS = "exists"  # 110072: an order with this orderLinkId exists: settle it
    NOT_FOUND = "not_found"  # 110001
    FINISHED = "finished"  # 110008: already filled or cancelled
    AUTH = "auth"  # key, signature, permission, IP whitelist: the operator must act


# retCode -> (outcome, our reason); codes not listed are judged by HTTP status
RET_CODES: dict[int, tuple[Outcome, str]] = {
    0: (Outcome.OK, "OK"),
    10000: (Outcome.AMBIGUOUS, "EXCHANGE_TIMEOUT"),  # "Server Timeout": may have been done
    10001: (Outcome.REJECTED, "INVALID_REQUEST"),
    10002: (Outcome.CLOCK, "CLOCK_SKEW"),
    10003: (Outcome.AUTH, "INVALID_API_KEY"),
    10004: (Outcome.AUTH, "INVALID_SIGNATURE"),
    10005: (Outcome.AUTH, "PERMISSION_DENIED"),
    10006: (Outcome.RATE_LIMITED, "RATE_LIMITED"),
    10010: (Outcome.AUTH, "IP_NOT_WHITELISTED"),
    10016: (Outcome.AMBIGUOUS, "EXCHANGE_ERROR"),
    10017: (Outcome.REJECTED, "ROUTE_NOT_FOUND"),
    110001: (Outcome.NOT_FOUND, "ORDER_NOT_FOUND"),
    110003: (Outcome.REJECTED, "INVALID_PRICE"),
    110004: (Outcome.REJECTED, "INSUFFICIENT_BALANCE"),
    110007: (Outcome.REJECTED, "INSUFFICIENT_BALANCE"),
    110008: (Outcome.FINISHED, "ORDER_NOT_OPEN"),
    110012: (Outcome.REJECTED, "INSUFFICIENT_BALANCE"),
    110017: (Outcome.REJECTED, "REDUCE_ONLY_WOULD_NOT_REDUCE"),
    110020: (Outcome.REJECTED, "TOO_MANY_ORDERS"),
    110043: (Outcome.OK, "LEVERAGE_NOT_MODIFIED"),  # already at that leverage
    110072: (Outcome.EXISTS, "DUPLICATE_ORDER_ID"),
    110094: (Outcome.REJECTED, "NOTIONAL_TOO_SMALL"),
    34040: (Outcome.OK, "NOT_MODIFIED"),  # trading-stop: already so
}


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    reason: str
    message: str
    ret_code: int | None
    result: Any = None

    @property
    def proven_not_taken(self) -> bool:
        return self.outcome in (Outcome.REJECTED, Outcome.AUTH, Outcome.CLOCK)


def classify(http_status: int, body: Any) -> Answer:
    """The meaning of one answer: its HTTP status and its decoded JSON body (None when the
    body was not JSON)."""
    if http_status in (403, 429):
        return Answer(Outcome.RATE_LIMITED, "RATE_LIMITED", f"HTTP {http_status}", None)
    if http_status >= 500:
        return Answer(Outcome.AMBIGUOUS, "EXCHANGE_ERROR", f"HTTP {http_status}", None)
    if http_status == 401:
        return Answer(Outcome.AUTH, "INVALID_API_KEY", "HTTP 401", None)
    code = body.get("retCode") if isinstance(body, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        # no envelope: a proxy's page, a cut answer. A 4xx is the route refusing us; any
        # other unreadable answer may hide a request that was carried out.
        if 400 <= http_status < 500:
            return Answer(Outcome.REJECTED, "INVALID_REQUEST", f"HTTP {http_status}", None)
        return Answer(Outcome.AMBIGUOUS, "UNREADABLE_ANSWER", f"HTTP {http_status}", None)
    message = str(body.get("retMsg", ""))[:200]
    known = RET_CODES.get(code)
    if known is not None:
        outcome, reason = known
    elif 400 <= http_status < 500:
        outcome, reason = Outcome.REJECTED, "EXCHANGE_REJECTED"
    else:
        # an error code we do not know on a 200: it may say the back end timed out
        # after acting (10000 does), so it proves nothing; the order is settled by its id
        outcome, reason = Outcome.AMBIGUOUS, "EXCHANGE_ERROR"
    return Answer(outcome, reason, f"{code}: {message}", code, body.get("result"))
