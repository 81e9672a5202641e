"""NDJSON framing (SPEC §5): whatever way the bytes are chunked, every complete line comes
out once, in order; an over-long line comes out as one TOO_LONG and costs no more than
the limit in memory; a trailing incomplete line waits for its newline; CRLF works."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipc.framing import TOO_LONG, LineDecoder

# Bytes a line may hold: anything but the newline, with \r and JSON punctuation common.
line_bytes = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.lists(st.sampled_from([b"a", b"\r", b"{", b"}", b'"', b"\xff", b" "]), max_size=40).map(
        b"".join
    ),
)


def expected_item(raw: bytes, limit: int) -> bytes | None:
    """What the decoder must yield for one complete line ``raw`` (without its \\n)."""
    line = raw[:-1] if raw.endswith(b"\r") else raw
    return TOO_LONG if len(line) > limit else line


def expected_so_far(stream: bytes, limit: int) -> list[bytes | None]:
    """Everything the decoder may have yielded once ``stream`` has been fed: one item per
    complete line, plus TOO_LONG for a trailing incomplete line already known too long
    (longer than limit + 1: the one byte of slack is for a \\r that may precede \\n)."""
    *complete, partial = stream.split(b"\n")
    out = [expected_item(raw, limit) for raw in complete]
    if len(partial) > limit + 1:
        out.append(TOO_LONG)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, start = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


@settings(max_examples=300)
@given(
    limit=st.integers(min_value=1, max_value=24),
    lines=st.lists(st.tuples(line_bytes, st.booleans()), max_size=12),
    tail=line_bytes,
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=30),
)
@example(limit=4, lines=[(b"abcd", True)], tail=b"", cuts=[4])  # CR right at the limit
@example(limit=4, lines=[(b"abcde", False)], tail=b"", cuts=[5])  # limit+1 held, then \n
@example(limit=4, lines=[(b"abcd\r", True)], tail=b"", cuts=[])  # only one \r is dropped
@example(limit=3, lines=[], tail=b"abcdefgh", cuts=[2, 4, 6])  # endless line
def test_any_chunking_yields_each_line_once_in_order(
    limit: int, lines: list[tuple[bytes, bool]], tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(body + (b"\r\n" if crlf else b"\n") for body, crlf in lines) + tail
    decoder = LineDecoder(limit)
    fed = 0
    got: list[bytes | None] = []
    for chunk in split_at(stream, cuts):
        got += decoder.feed(chunk)
        fed += len(chunk)
        # Each line comes out as soon as its newline has arrived, never before.
        assert got == expected_so_far(stream[:fed], limit)
        assert decoder.pending_bytes <= limit + 1

    complete = [expected_item(body + (b"\r" if crlf else b""), limit) for body, crlf in lines]
    assert got[: len(complete)] == complete
    # The trailing incomplete line yields nothing until its newline arrives, unless it is
    # already known to be too long (then exactly one TOO_LONG, early).
    early = [TOO_LONG] if len(tail) > limit + 1 else []
    assert got[len(complete) :] == early

    rest = decoder.feed(b"\n")
    assert rest == ([] if early else [expected_item(tail, limit)])
    assert decoder.pending_bytes == 0


def test_crlf_and_lf_lines_give_the_same_frames() -> None:
    decoder = LineDecoder(64)
    assert decoder.feed(b'{"a":1}\r\n{"b":2}\n\r\n') == [b'{"a":1}', b'{"b":2}', b""]


def test_cr_split_from_its_newline_is_still_dropped() -> None:
    decoder = LineDecoder(64)
    assert decoder.feed(b"PING\r") == []
    assert decoder.feed(b"\nnext") == [b"PING"]
    assert decoder.pending_bytes == 4


def test_endless_line_costs_at_most_the_limit_and_is_reported_once() -> None:
    decoder = LineDecoder(100)
    reported = []
    for _ in range(1000):  # 1 MB without a newline, in 1 kB pieces
        reported += decoder.feed(b"x" * 1024)
        assert decoder.pending_bytes <= 101
    assert reported == [TOO_LONG]
    # The rest of it is discarded up to its newline; the next line is intact.
    assert decoder.feed(b"tail of the long line\nok\n") == [b"ok"]


def test_line_of_exactly_the_limit_passes_and_one_more_byte_does_not() -> None:
    decoder = LineDecoder(8)
    assert decoder.feed(b"12345678\n123456789\n") == [b"12345678", TOO_LONG]
    assert decoder.feed(b"12345678\r\n") == [b"12345678"]
