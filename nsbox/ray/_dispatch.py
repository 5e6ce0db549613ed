"""A batch fanned out over the nodes' actors: by free capacity, bounded, retried once.

Each item goes to the live node with the most free slots (a node takes ``2 x capacity`` at
once: its workers busy and as many waiting, so none idles between items; past that, the
batch waits: back-pressure). Results come back as they finish (``Completed``), each naming
its node. An item whose node was lost while it ran (its actor died: the raylet, the host)
is run again once, on another node, and marked ``retried``; lost twice, it gets an error
result. A rate limit, if set, is the cluster's: every handle of the cluster (in any task or
actor) takes its starts from one ``RateLimiter`` actor.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import RayError, RayTaskError

_T = TypeVar("_T")
#: Items in flight per node, per unit of its capacity.
IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class Completed(Generic[_T]):
    """One item's result, as it finished: its place in the input, the node that ran it,
    and whether it ran again there because its first node was lost."""

    index: int
    result: _T
    node: str
    retried: bool = False


class ClusterResults(list[_T]):
    """Results in input order (a list, as ``Judge``'s); ``nodes[i]`` ran item ``i``;
    ``retried``: the indexes of the items run again after their node was lost."""

    def __init__(self, completed: Sequence[Completed[_T]]) -> None:
        ordered = sorted(completed, key=lambda c: c.index)
        super().__init__(c.result for c in ordered)
        self.nodes = [c.node for c in ordered]
        self.retried = [c.index for c in ordered if c.retried]


class RateLimiter:
    """The cluster's rate of starts (an actor): ``take(n)`` reserves ``n`` starts, one every
    ``interval`` s, and says (how long until the first, the interval)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.next = time.monotonic()

    def take(self, n: int) -> tuple[float, float]:
        now = time.monotonic()
        start = max(now, self.next)
        self.next = start + n * self.interval
        return start - now, self.interval


@dataclass
class Lane:
    """A node's actor as a batch sees it."""

    node: str
    actor: Any
    capacity: int
    in_flight: int = 0

    @property
    def free(self) -> int:
        return IN_FLIGHT_PER_WORKER * self.capacity - self.in_flight


def fan_out(
    lanes: Sequence[Lane],
    method: str,
    items: Sequence[Any],
    failed: Callable[[str], _T],
    on_lost: Callable[[str, BaseException], None],
    limiter: Any = None,
) -> Iterator[Completed[_T]]:
    """Each of ``items`` through ``actor.<method>``; ``on_lost(node, error)`` when a node's
    actor is found dead."""
    live = {lane.node: lane for lane in lanes}
    waiting = collections.deque(range(len(items)))
    retried: set[int] = set()
    in_flight: dict[Any, tuple[int, Lane]] = {}
    while waiting or in_flight:
        starts = _place(live, waiting)
        delay, interval = ray.get(limiter.take.remote(len(starts))) if starts and limiter is not None else (0.0, 0.0)
        first = time.monotonic() + delay
        for k, (index, lane) in enumerate(starts):
            time.sleep(max(0.0, first + k * interval - time.monotonic()))  # the rate's spacing, if one is set
            in_flight[getattr(lane.actor, method).remote(items[index])] = (index, lane)
        if not in_flight:  # items wait and no node is left
            for index in waiting:
                yield Completed(index, failed("no node of the cluster is left to run it"), "", index in retried)
            return
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            index, lane = in_flight.pop(ref)
            lane.in_flight -= 1
            try:
                result = ray.get(ref)
            except RayTaskError as exc:  # the actor raised: an engine error, said in the result
                result = failed(f"{type(exc.cause).__name__}: {exc.cause}")
            except RayError as exc:  # its actor died (its node, its process) or cannot be placed
                if live.pop(lane.node, None) is not None:
                    on_lost(lane.node, exc)
                if index not in retried:
                    retried.add(index)
                    waiting.appendleft(index)
                    continue
                result = failed(f"its node was lost twice (last {lane.node}): not run again")
            yield Completed(index, result, lane.node, index in retried)


def _place(live: Mapping[str, Lane], waiting: collections.deque[int]) -> list[tuple[int, Lane]]:
    """Waiting items to the nodes with the most free slots, while any has one."""
    starts = []
    while waiting and live:
        lane = max(live.values(), key=lambda lane: lane.free)
        if lane.free <= 0:
            break
        lane.in_flight += 1
        starts.append((waiting.popleft(), lane))
    return starts
