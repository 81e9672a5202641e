"""Bybit v5 request signing (EXCHANGES.md, "Authentication headers").

The signed string is ``timestamp + apiKey + recvWindow + payload``: for GET the URL query
string, for POST the exact body bytes. The signature is the lowercase hex HMAC-SHA256 of
it under the API secret. What is signed is what is sent: ``encode_body`` and
``query_string`` produce the bytes once, and the caller sends those very bytes.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from titan_trio.brokers.signing import hmac_sha256_hex

DEFAULT_RECV_WINDOW_MS = 5000


def encode_body(params: Mapping[str, Any]) -> bytes:
    """A POST body as the bytes to sign and send (compact JSON, keys in the given order)."""
    return json.dumps(dict(params), separators=(",", ":")).encode()


def query_string(params: Mapping[str, Any]) -> str:
    """A GET query string as the text to sign and send (in the given order)."""
    return urlencode([(k, v) for k, v in params.items() if v is not None])


def signature(
    secret: str, timestamp_ms: int, api_key: str, recv_window_ms: int, payload: str | bytes
) -> str:
    body = payload if isinstance(payload, str) else payload.decode()
    return hmac_sha256_hex(secret, f"{timestamp_ms}{api_key}{recv_window_ms}{body}")


def signed_headers(
    api_key: str,
    secret: str,
    timestamp_ms: int,
    payload: str | bytes,
    recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
) -> dict[str, str]:
    """The authentication headers of one request whose payload is ``payload``."""
    return {
        "X-BAPI-API-KEY": api_key,
        "X-BAPI-TIMESTAMP": str(timestamp_ms),
        "X-BAPI-RECV-WINDOW": str(recv_window_ms),
        "X-BAPI-SIGN": signature(secret, timestamp_ms, api_key, recv_window_ms, payload),
        "X-BAPI-SIGN-TYPE": "2",
    }


def stream_auth_args(api_key: str, secret: str, expires_ms: int) -> list[str]:
    """The private WebSocket's ``auth`` arguments: the key, the expiry (ms) and the hex
    HMAC-SHA256 of ``"GET/realtime" + expires`` under the secret (EXCHANGES.md)."""
    return [api_key, str(expires_ms), hmac_sha256_hex(secret, f"GET/realtime{expires_ms}")]


def verify(headers: Mapping[str, str], secret: str, payload: str | bytes) -> bool:
    """Whether ``headers`` sign ``payload`` under ``secret`` (the fake exchange's check)."""
    try:
        expected = signature(
            secret,
            int(headers["X-BAPI-TIMESTAMP"]),
            headers["X-BAPI-API-KEY"],
            int(headers["X-BAPI-RECV-WINDOW"]),
            payload,
        )
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(expected, headers.get("X-BAPI-SIGN", ""))
