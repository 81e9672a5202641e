"""Client-side rate limits on trio's mock clock: never faster than the documented limit,
the exchange's own count believed, and a "too many" answer honoured until its reset."""

from __future__ import annotations

import random

import trio
import trio.testing

from titan_trio.brokers.bybit.limits import JITTER_S, RateLimits, TokenBucket


async def test_order_create_never_goes_faster_than_ten_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = RateLimits().bucket("/v5/order/create")
    sent: list[float] = []
    start = trio.current_time()
    for _ in range(45):
        await bucket.acquire()
        sent.append(trio.current_time() - start)
    # ten at once, the next ten a second later, and so on: never 11 in one second
    assert sent[9] == 0 and sent[10] == 1.0
    for i, t in enumerate(sent):
        assert sum(1 for u in sent if t <= u < t + 1.0) <= 10, (i, sent)
    assert sent[-1] == 4.0


async def test_the_exchange_count_and_its_refusal_are_believed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(50)
    bucket.observe(remaining=2)  # others (another process on the key) used the rest
    assert bucket.headroom == 2
    start = trio.current_time()
    await bucket.acquire()
    await bucket.acquire()
    await bucket.acquire()  # the third waits for a token
    assert trio.current_time() - start > 0
    until = bucket.back_off(3.0, random.Random(1))  # 10006: reset in 3 s
    assert bucket.headroom == 0
    before = trio.current_time()
    await bucket.acquire()
    assert trio.current_time() >= until >= before + 3.0
    assert until - before <= 3.0 + JITTER_S
    limits = RateLimits()
    limits.bucket("/v5/position/list")
    assert limits.headroom() == {"/v5/position/list": 50.0}
