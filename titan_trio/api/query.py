"""The one parser of the ops API's query strings.

Every endpoint declares the query parameters it takes (a ``QuerySpec``: name to kind) and
the app parses each request's query string against it before the endpoint runs. What it
accepts, each a decision:

- **Unknown parameters are refused** (400 ``unknown_parameter``): an operator who types
  ``?limt=5`` or ``?sybmol=BTCUSDT`` gets an error, not an answer to a question they did
  not ask. Endpoints without parameters refuse any, except the probes (``/api/health``,
  ``/metrics``; app.PROBES), which ignore them: monitors add cache-busters.
- A parameter given twice is refused (which one was meant?), and so is an empty value.
- Whole numbers are ASCII digits only, within the endpoint's bounds: no sign, no spaces,
  no other scripts' digits (``str.isdigit`` takes "²" and "١٠", and ``int`` takes "١٠").
- Dates are ``YYYY-MM-DD`` in ASCII digits, of a day that exists.
- Choices (a traded symbol, a trading state) are one of the listed values exactly, case
  included; the message lists them.

A refusal is a ``QueryError``: HTTP 400 with ``{"error": "invalid_<parameter>" or
"unknown_parameter", "message"}``, the message naming the parameter, what was wrong and
what is expected. The parser must never raise anything else, whatever the input
(a property test holds it to that).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from werkzeug.datastructures import MultiDict

_ASCII_DIGITS = re.compile(r"[0-9]+")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
SHOWN_CHARS = 40  # a value quoted in an error message is cut to this


class QueryError(Exception):
    """A query string the endpoint refuses: answered 400 ``{"error", "message"}``."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


def shown(value: str) -> str:
    """``value`` quoted for an error message: escaped, and cut if long."""
    if len(value) > SHOWN_CHARS:
        return repr(value[:SHOWN_CHARS]) + f"... ({len(value)} characters)"
    return repr(value)


class Param(Protocol):
    """One kind of query parameter: its default when absent, and how a value is read."""

    @property
    def default(self) -> Any: ...

    def parse(self, name: str, raw: str) -> Any:
        """The value of ``raw``, or QueryError naming ``name``."""
        ...


def _invalid(name: str, expected: str, raw: str) -> QueryError:
    return QueryError(f"invalid_{name}", f"{name} must be {expected}, got {shown(raw)}")


@dataclass(frozen=True)
class WholeNumber:
    low: int
    high: int
    default: int | None = None

    def parse(self, name: str, raw: str) -> int:
        expected = f"a whole number from {self.low} to {self.high} in ASCII digits"
        if not _ASCII_DIGITS.fullmatch(raw):
            raise _invalid(name, expected, raw)
        digits = raw.lstrip("0") or "0"
        # A huge number is out of range without converting it (int() refuses > 4300 digits).
        if len(digits) > len(str(self.high)) or not self.low <= int(digits) <= self.high:
            raise _invalid(name, expected, raw)
        return int(digits)


@dataclass(frozen=True)
class IsoDate:
    """A calendar day, answered as its ``YYYY-MM-DD`` text (what the store keys days by)."""

    default: str | None = None

    def parse(self, name: str, raw: str) -> str:
        match = _ISO_DATE.fullmatch(raw)
        if match is None:
            raise _invalid(name, "a date as YYYY-MM-DD in ASCII digits", raw)
        year, month, day = (int(part) for part in match.groups())
        try:
            dt.date(year, month, day)
        except ValueError:
            raise _invalid(name, "a day that exists (YYYY-MM-DD)", raw) from None
        return raw


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]
    default: str | None = None

    def parse(self, name: str, raw: str) -> str:
        if raw not in self.choices:
            raise _invalid(name, f"one of {', '.join(self.choices)}", raw)
        return raw


QuerySpec = Mapping[str, Param]


def parse_query(args: MultiDict[str, str], spec: QuerySpec) -> dict[str, Any]:
    """Every parameter of ``spec``, read from ``args`` or defaulted; QueryError for a
    parameter ``spec`` does not name, one given twice or empty, or a bad value."""
    unknown = [name for name in args if name not in spec]
    if unknown:
        takes = ", ".join(spec) if spec else "no query parameters"
        names = ", ".join(shown(name) for name in unknown[:5])
        raise QueryError(
            "unknown_parameter",
            f"unknown query parameter {names}; this endpoint takes: {takes}",
        )
    values: dict[str, Any] = {}
    for name, param in spec.items():
        given = args.getlist(name)
        if not given:
            values[name] = param.default
        elif len(given) > 1:
            raise QueryError(f"invalid_{name}", f"{name} is given {len(given)} times; give it once")
        elif given[0] == "":
            raise QueryError(f"invalid_{name}", f"{name} is empty; leave it out or give a value")
        else:
            values[name] = param.parse(name, given[0])
    return values
