"""The signing primitive against the Binance documentation's worked examples
(EXCHANGES.md, "Documented signature example"): the same HMAC-SHA256 hex digest Bybit's
rule is built on, and Binance's query-then-body concatenation with no ``&``."""

from __future__ import annotations

from titan_trio.brokers.signing import binance_signature, hmac_sha256_hex

SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"


def test_the_documented_query_string_example() -> None:
    query = (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
        "&recvWindow=5000&timestamp=1499827319559"
    )
    expected = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    assert binance_signature(SECRET, query=query) == expected
    assert binance_signature(SECRET, body=query) == expected  # all in the body: the same
    assert hmac_sha256_hex(SECRET, query.encode()) == expected


def test_the_documented_mixed_example_has_no_ampersand_between_query_and_body() -> None:
    query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC"
    body = "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    expected = "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
    assert binance_signature(SECRET, query, body) == expected
    assert binance_signature(SECRET, query + "&", body) != expected
