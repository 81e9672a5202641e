"""Instruments and top-of-book quotes of the fake exchange, and the public messages a
quote change produces on Bybit's and Binance's streams.

Choices where the documents leave room:
- The book is one level deep with a fixed size per side (1000 lots of the minimum
  quantity); the fake's own orders never consume it (fills are "in full at the touch").
- Last price and mark price are the mid, rounded half-up to the tick, so what a client
  reads on ``tickers`` is the very price that triggers a position's stop.
- ``u`` (Binance bookTicker, Bybit orderbook) and ``cs``/``seq`` grow by one per quote
  change, per symbol; a resent unchanged orderbook snapshot keeps its ``u``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

FUNDING_RATE = "0.0001"
FUNDING_PERIOD_MS = 8 * 3600 * 1000


def fmt(value: Decimal) -> str:
    """A decimal as the exchanges write it: plain digits, no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


@dataclass(frozen=True)
class Instrument:
    symbol: str
    tick: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    max_leverage: Decimal

    def as_bybit(self) -> dict[str, object]:
        """An item of /v5/market/instruments-info (linear)."""
        return {
            "symbol": self.symbol,
            "contractType": "LinearPerpetual",
            "status": "Trading",
            "baseCoin": self.symbol.removesuffix("USDT"),
            "quoteCoin": "USDT",
            "settleCoin": "USDT",
            "launchTime": "1585526400000",
            "deliveryTime": "0",
            "deliveryFeeRate": "",
            "priceScale": str(max(0, -self.tick.normalize().as_tuple().exponent)),
            "leverageFilter": {
                "minLeverage": "1",
                "maxLeverage": fmt(self.max_leverage),
                "leverageStep": "0.01",
            },
            "priceFilter": {
                "minPrice": fmt(self.tick),
                "maxPrice": "1999999.8",
                "tickSize": fmt(self.tick),
            },
            "lotSizeFilter": {
                "maxOrderQty": fmt(self.max_qty),
                "maxMktOrderQty": fmt(self.max_qty),
                "minOrderQty": fmt(self.min_qty),
                "qtyStep": fmt(self.step),
                "postOnlyMaxOrderQty": fmt(self.max_qty),
                "minNotionalValue": fmt(self.min_notional),
            },
            "unifiedMarginTrade": True,
            "fundingInterval": 480,
            "copyTrading": "both",
            "upperFundingRate": "0.005",
            "lowerFundingRate": "-0.005",
        }


def _instrument(symbol: str, tick: str, step: str, max_qty: str, leverage: str) -> Instrument:
    return Instrument(
        symbol=symbol,
        tick=Decimal(tick),
        step=Decimal(step),
        min_qty=Decimal(step),
        max_qty=Decimal(max_qty),
        min_notional=Decimal("5"),
        max_leverage=Decimal(leverage),
    )


KNOWN_INSTRUMENTS = {
    "BTCUSDT": _instrument("BTCUSDT", "0.10", "0.001", "1190", "100"),
    "ETHUSDT": _instrument("ETHUSDT", "0.01", "0.01", "7240", "100"),
    "SOLUSDT": _instrument("SOLUSDT", "0.010", "0.1", "79770", "50"),
}


def instrument_for(symbol: str) -> Instrument:
    """The known filters, or the brief's defaults for any other symbol."""
    return KNOWN_INSTRUMENTS.get(symbol) or _instrument(symbol, "0.01", "0.001", "1000000", "50")


@dataclass
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    bid_size: Decimal
    ask_size: Decimal
    update_id: int
    tick: Decimal

    @property
    def mid(self) -> Decimal:
        """Last and mark price: the mid, on the tick."""
        ticks = ((self.bid + self.ask) / 2 / self.tick).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return ticks * self.tick


class Market:
    """Every symbol's quote. Changing one is done by the exchange (it also matches and
    publishes); this class only keeps the numbers straight."""

    def __init__(self, prices: dict[str, Decimal]) -> None:
        self.instruments = {symbol: instrument_for(symbol) for symbol in prices}
        self.quotes: dict[str, Quote] = {}
        for symbol, price in prices.items():
            inst = self.instruments[symbol]
            bid = price.quantize(inst.tick)
            self.quotes[symbol] = Quote(
                symbol, bid, bid + inst.tick, inst.min_qty * 1000, inst.min_qty * 1000, 1, inst.tick
            )

    def set_price(self, symbol: str, bid: Decimal, ask: Decimal | None = None) -> Quote:
        inst = self.instruments.get(symbol)
        if inst is None:
            raise KeyError(f"unknown symbol {symbol}")
        ask = bid + inst.tick if ask is None else ask
        if bid <= 0 or ask < bid:
            raise ValueError(f"bad quote for {symbol}: bid {bid} ask {ask}")
        if bid % inst.tick or ask % inst.tick:
            raise ValueError(f"quote for {symbol} off the tick {inst.tick}")
        quote = self.quotes[symbol]
        quote.bid, quote.ask = bid, ask
        quote.update_id += 1
        return quote


def bybit_ticker(quote: Quote, now_ms: int) -> dict[str, str]:
    """The full data of a Bybit ``tickers`` snapshot (deltas are computed from two of
    these by the exchange)."""
    mid = fmt(quote.mid)
    return {
        "symbol": quote.symbol,
        "tickDirection": "ZeroPlusTick",
        "lastPrice": mid,
        "markPrice": mid,
        "indexPrice": mid,
        "bid1Price": fmt(quote.bid),
        "bid1Size": fmt(quote.bid_size),
        "ask1Price": fmt(quote.ask),
        "ask1Size": fmt(quote.ask_size),
        "fundingRate": FUNDING_RATE,
        "nextFundingTime": str(next_funding_ms(now_ms)),
        "openInterest": "0",
        "volume24h": "0",
        "turnover24h": "0",
    }


def bybit_orderbook(quote: Quote, now_ms: int) -> dict[str, object]:
    return {
        "topic": f"orderbook.1.{quote.symbol}",
        "type": "snapshot",
        "ts": now_ms,
        "data": {
            "s": quote.symbol,
            "b": [[fmt(quote.bid), fmt(quote.bid_size)]],
            "a": [[fmt(quote.ask), fmt(quote.ask_size)]],
            "u": quote.update_id,
            "seq": quote.update_id,
        },
        "cts": now_ms,
    }


def binance_book_ticker(quote: Quote, now_ms: int) -> dict[str, object]:
    return {
        "e": "bookTicker",
        "u": quote.update_id,
        "E": now_ms,
        "T": now_ms,
        "s": quote.symbol,
        "b": fmt(quote.bid),
        "B": fmt(quote.bid_size),
        "a": fmt(quote.ask),
        "A": fmt(quote.ask_size),
    }


def binance_mark_price(quote: Quote, now_ms: int) -> dict[str, object]:
    mid = fmt(quote.mid)
    return {
        "e": "markPriceUpdate",
        "E": now_ms,
        "s": quote.symbol,
        "p": mid,
        "i": mid,
        "P": mid,
        "r": FUNDING_RATE,
        "T": next_funding_ms(now_ms),
    }


def binance_agg_trade(
    symbol: str, trade_id: int, price: Decimal, qty: Decimal, buyer_maker: bool, now_ms: int
) -> dict[str, object]:
    return {
        "e": "aggTrade",
        "E": now_ms,
        "a": trade_id,
        "s": symbol,
        "p": fmt(price),
        "q": fmt(qty),
        "f": trade_id,
        "l": trade_id,
        "T": now_ms,
        "m": buyer_maker,
    }


def next_funding_ms(now_ms: int) -> int:
    return (now_ms // FUNDING_PERIOD_MS + 1) * FUNDING_PERIOD_MS
