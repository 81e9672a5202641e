"""HMAC-SHA256 request signing, the primitive both exchanges use (EXCHANGES.md).

Bybit signs ``timestamp + apiKey + recvWindow + payload`` (brokers/bybit/auth.py); Binance
signs its "total parameter string": the query string immediately followed by the
form-encoded body, with no ``&`` between them. Both want the lowercase hex digest. The
Binance rule is here for the Binance user-data stream and order endpoints (listenKey,
``/fapi/v1/order``); its documented worked examples are the test of the primitive.
"""

from __future__ import annotations

import hashlib
import hmac


def hmac_sha256_hex(secret: str, text: str | bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``text`` (UTF-8) under ``secret``."""
    data = text.encode() if isinstance(text, str) else text
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def binance_signature(secret: str, query: str = "", body: str = "") -> str:
    """Binance's ``signature``: of the query string followed directly by the body."""
    return hmac_sha256_hex(secret, query + body)
