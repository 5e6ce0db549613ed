"""nsbox.ray's batch placement and rate limiter, without a cluster (the real cluster's tests:
tests/integration/test_ray.py and test_ray_nodes.py)."""

from __future__ import annotations

import collections

import pytest

pytest.importorskip("ray", reason="the ray extra (make test installs it)")

from nsbox.ray._dispatch import IN_FLIGHT_PER_WORKER, Lane, RateLimiter, _place


def test_items_go_to_the_most_free_node_and_no_node_takes_more_than_its_bound() -> None:
    big, small = Lane("big", None, capacity=3), Lane("small", None, capacity=1)
    waiting = collections.deque(range(20))
    starts = _place({"big": big, "small": small}, waiting)
    taken = collections.Counter(lane.node for _, lane in starts)
    assert taken == {"big": IN_FLIGHT_PER_WORKER * 3, "small": IN_FLIGHT_PER_WORKER * 1}
    assert [index for index, _ in starts] == list(range(len(starts))), "in input order"
    assert list(waiting) == list(range(len(starts), 20)), "the rest wait (back-pressure)"
    big.in_flight -= 1  # one finished: one more goes, to that node
    more = _place({"big": big, "small": small}, waiting)
    assert [(i, lane.node) for i, lane in more] == [(len(starts), "big")]


def test_no_live_node_places_nothing() -> None:
    waiting = collections.deque(range(3))
    assert _place({}, waiting) == [] and len(waiting) == 3


def test_the_rate_limiter_spaces_reservations() -> None:
    limiter = RateLimiter(10.0)  # 0.1 s a start
    assert limiter.take(5) == (pytest.approx(0.0, abs=0.01), pytest.approx(0.1))
    assert limiter.take(1)[0] == pytest.approx(0.5, abs=0.01), "after the 5 reserved"
    assert limiter.take(2)[0] == pytest.approx(0.6, abs=0.01)
