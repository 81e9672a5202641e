"""What every exchange feed checks before a quote reaches the book.

A quote the book takes is acted on: the L2 gates pass or refuse on it, paper orders fill
at it, positions are marked with it. So an implausible value (a price that is not a
positive finite number, a negative size, a crossed or locked book) is refused here as a
malformed message, never clamped or guessed at.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from titan_trio.domain.quotes import Quote


class BadMessage(ValueError):
    """A message the feed cannot use; it never reaches the book."""


def decimal_field(text: object, name: str, *, positive: bool) -> Decimal:
    """A price (``positive``: > 0) or size (>= 0) from the exchange's decimal string."""
    if not isinstance(text, str):
        raise BadMessage(f"{name} is not a decimal string: {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadMessage(f"{name} is not a number: {text!r}") from None
    if not value.is_finite() or value < 0 or (positive and value == 0):
        raise BadMessage(f"{name} out of range: {text!r}")
    return value


def touch_quote(
    symbol: str,
    bid: Decimal,
    ask: Decimal,
    bid_size: Decimal,
    ask_size: Decimal,
    last: Decimal | None,
    ts_ms: int,
    source: str,
) -> Quote:
    """A top-of-book quote (``last`` None: the mid), refused when crossed or locked."""
    if bid >= ask:
        raise BadMessage(f"crossed book for {symbol}: bid {bid} >= ask {ask}")
    if last is None:
        last = (bid + ask) / 2
    return Quote(symbol, bid, ask, bid_size, ask_size, last, ts_ms, source)
