import random

import pytest

from titan_trio.feeds.backoff import Backoff


def test_delays_double_within_equal_jitter_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(7))
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.attempt == len(ceilings)


def test_reset_starts_again_from_the_base_delay() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(1))
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_the_same_seed_gives_the_same_delays_and_jitter_varies_them() -> None:
    first, again = Backoff(rng=random.Random(3)), Backoff(rng=random.Random(3))
    assert [first.next_delay() for _ in range(5)] == [again.next_delay() for _ in range(5)]
    spread = {Backoff(rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(spread) == 20  # jittered: twenty services do not retry in step


def test_a_long_outage_never_overflows() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(0))
    for _ in range(5000):
        assert backoff.next_delay() <= 30.0


def test_nonsense_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 30)
    with pytest.raises(ValueError):
        Backoff(5, 1)
