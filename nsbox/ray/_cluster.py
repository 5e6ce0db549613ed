"""SandboxCluster: sandboxes on every node of a Ray cluster, with one host's API.

``SandboxCluster(per_node=N, **sandbox_options)`` starts one ``NodeSandboxes`` actor on each
alive node (hard node affinity; it takes no CPU of Ray's: the sandboxes' work is bounded by
``per_node``, the node's CPUs by default). A node whose actor says it cannot sandbox is
left out, with a warning, and never gets work. Nodes that join later get an actor at the
next batch (or ``refresh()``).

The handle can be passed to Ray tasks and actors (a reward function): a copy uses the same
actors, and only the handle that made the cluster shuts it down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nsbox._errors import SandboxError, SpecError
from nsbox._judge import PROGRAM_KEYS, SUBMISSION_KEYS, JudgeResult, _checked, _failed_judge, _failed_run
from nsbox._result import RunResult
from nsbox._sandbox import spec_from_options

from ._dispatch import IN_FLIGHT_PER_WORKER, ClusterResults, Completed, Lane, RateLimiter, fan_out
from ._node import NodeSandboxes
from ._session import ClusterSession, NodeLost, remote_result

log = logging.getLogger("nsbox.ray")
#: How long a node's actor may take to start and prove its sandboxes.
START_TIMEOUT = 120.0
#: Calls an actor takes at once beyond its one-shot work (sessions, info).
EXTRA_CONCURRENCY = 16


@dataclass(frozen=True)
class NodeInfo:
    """A node as ``nodes()`` shows it: ``verdict`` is ``ok`` or why it cannot sandbox
    (then it is left out); ``capacity`` its workers; ``running`` its one-shot items now."""

    node: str
    host: str
    verdict: str
    capacity: int
    running: int  #: one-shot items it holds now (running, or waiting for a worker)
    peak: int  #: the most it ever held at once (a batch's bound: 2 per worker)
    done: int
    sessions: int

    @property
    def usable(self) -> bool:
        return self.verdict == "ok"


class SandboxCluster:
    """``SandboxCluster(per_node=None, pool=1, rate=None, **sandbox_options)``.

    ``per_node``: workers per node (default: the node's CPUs); ``pool``: sandboxes each node
    keeps started for sessions; ``rate``: one-shot items started per second, cluster-wide."""

    def __init__(
        self, per_node: int | None = None, *, pool: int = 1, rate: float | None = None, **sandbox_options: Any
    ) -> None:
        if per_node is not None and (isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1):
            raise SpecError("per_node", f"{per_node!r}: workers per node, a whole number from 1")
        if isinstance(pool, bool) or not isinstance(pool, int) or not 0 <= pool <= 64:
            raise SpecError("pool", f"{pool!r}: sandboxes kept started per node, 0 to 64")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0):
            raise SpecError("rate", f"{rate!r}: one-shot items started per second, above 0")
        self.spec = spec_from_options(**sandbox_options)
        if not ray.is_initialized():
            raise SandboxError("Ray is not initialized: call ray.init() (address='auto' on a cluster's node) first")
        self.per_node = per_node
        self.pool = pool
        self._lanes: dict[str, Lane] = {}
        self._left_out: dict[str, str] = {}  #: node -> why it is not used
        self._restarting: dict[str, Lane] = {}  #: lost nodes still alive: their actor may come back
        self._owner = True
        self._lock = threading.Lock()
        self._limiter: Any = ray.remote(RateLimiter).options(num_cpus=0).remote(rate) if rate else None
        try:
            self.refresh()
        except BaseException:
            self.shutdown()
            raise
        if not self._lanes:
            why = "; ".join(f"{node}: {verdict}" for node, verdict in self._left_out.items()) or "no alive node"
            self.shutdown()
            raise SandboxError(f"no node of the Ray cluster can sandbox ({why})")

    # -- nodes -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """An actor on each alive node that has none yet (nodes that joined since). Only the
        handle that made the cluster starts actors: a copy's would end with its task."""
        if not self._owner:
            return
        with self._lock:
            seen: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]  # ray leaves it unannotated
            alive = {n["NodeID"]: n for n in seen if n.get("Alive")}
            self._take_back(set(alive))
            known = set(self._lanes) | set(self._left_out)
            new = [n for node, n in alive.items() if node not in known]
            started = {n["NodeID"]: self._start_actor(n) for n in new}
            for node, (actor, capacity) in started.items():
                try:
                    info = ray.get(actor.info.remote(), timeout=START_TIMEOUT)
                except RayError as exc:
                    info = {"verdict": f"its actor did not start: {type(exc).__name__}"}
                if info["verdict"] == "ok":
                    self._lanes[node] = Lane(node, actor, capacity)
                    continue
                self._left_out[node] = info["verdict"]
                ray.kill(actor)
                message = f"nsbox.ray: node {node} is left out, it gets no work: {info['verdict']}"
                log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _start_actor(self, node: Mapping[str, Any]) -> tuple[Any, int]:
        capacity = self.per_node or max(1, int(node.get("Resources", {}).get("CPU", 1)))
        actor = (
            ray.remote(NodeSandboxes)
            .options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                num_cpus=0,
                max_concurrency=IN_FLIGHT_PER_WORKER * capacity + EXTRA_CONCURRENCY,
                max_restarts=1,  # a restarted actor starts empty (see NodeSandboxes)
            )
            .remote(self.spec.to_dict(), capacity, self.pool)
        )
        return actor, capacity

    def nodes(self) -> list[NodeInfo]:
        """Every node seen: those in use (capacity, load), those left out (and why), those lost."""
        self.refresh()
        shown = []
        for node, lane in list(self._lanes.items()):
            try:
                info = ray.get(lane.actor.info.remote(), timeout=START_TIMEOUT)
            except RayError as exc:
                self._lost(node, exc)
                continue
            counts = (info["running"], info["peak"], info["done"], info["sessions"])
            shown.append(NodeInfo(node, info["host"], "ok", lane.capacity, *counts))
        shown += [NodeInfo(node, "", verdict, 0, 0, 0, 0, 0) for node, verdict in self._left_out.items()]
        return shown

    def _lost(self, node: str, error: BaseException) -> None:
        """A call to the node's actor failed: the node gets no more work. If the node is still
        alive, Ray may be restarting the actor (its process died): the next ``refresh()``
        asks it, and takes the node back if it answers (empty, as a restarted actor is)."""
        with self._lock:
            lane = self._lanes.pop(node, None)
            if lane is not None:
                self._left_out[node] = f"lost: its actor died ({type(error).__name__})"
                self._restarting[node] = lane
                log.warning("nsbox.ray: node %s was lost: %s", node, type(error).__name__)

    def _take_back(self, alive: set[str]) -> None:
        """Lost nodes whose actor answers again (restarted by Ray) get work again."""
        for node, lane in list(self._restarting.items()):
            del self._restarting[node]
            if node not in alive:
                continue  # the node is gone: so is its actor
            try:
                info = ray.get(lane.actor.info.remote(), timeout=START_TIMEOUT)
            except RayError:
                continue  # dead for good
            if info["verdict"] == "ok":
                self._lanes[node] = lane
                self._left_out.pop(node, None)

    # -- one-shot work ---------------------------------------------------------------------------
    def run_code(self, code: str, **program: Any) -> RunResult:
        """One program (run_code's arguments) on the least loaded node."""
        return self.run_code_many([{"code": code, **program}])[0]

    def judge(self, code: str, tests: Any, **submission: Any) -> JudgeResult:
        """One submission (judge's arguments) on the least loaded node."""
        return self.judge_many([{"code": code, "tests": tests, **submission}])[0]

    def run_code_many(self, programs: Iterable[str | Mapping[str, Any]]) -> ClusterResults[RunResult]:
        """Results in input order; ``.nodes``: who ran each; ``.retried``: run again after a node was lost."""
        return ClusterResults(list(self.as_completed(programs)))

    def judge_many(self, submissions: Iterable[Mapping[str, Any]]) -> ClusterResults[JudgeResult]:
        return ClusterResults(list(self.as_completed(submissions, judge=True)))

    def as_completed(self, items: Iterable[Any], *, judge: bool = False) -> Iterator[Completed[Any]]:
        """Programs (or, with ``judge=True``, submissions) as each finishes: ``Completed``
        (``index``, ``result``, ``node``, ``retried``)."""
        checked: list[Any]
        if judge:
            checked = [_checked(s, SUBMISSION_KEYS, "submission") for s in items]
        else:
            checked = [p if isinstance(p, str) else _checked(p, PROGRAM_KEYS, "program") for p in items]
        self.refresh()
        failed = _failed_judge if judge else _failed_run
        lanes = [Lane(lane.node, lane.actor, lane.capacity) for lane in self._lanes.values()]
        return fan_out(lanes, "judge_one" if judge else "run_code", checked, failed, self._lost, self._limiter)

    # -- sessions --------------------------------------------------------------------------------
    def session(self, **sandbox_options: Any) -> ClusterSession:
        """A started sandbox on the node with the fewest sessions for its capacity (the
        cluster's options and the node's pool when none are given)."""
        if sandbox_options:
            spec_from_options(**dict(sandbox_options))  # a bad option is refused here, not on a node
        for info in sorted(self.nodes(), key=lambda i: (i.sessions / max(i.capacity, 1), i.running)):
            if not info.usable:
                continue
            lane = self._lanes.get(info.node)
            if lane is None:
                continue
            try:
                opened = remote_result(lane.actor.open_session.remote(sandbox_options or None), lane.node)
            except NodeLost as exc:
                self._lost(lane.node, exc)
                continue  # lost meanwhile: the next node
            return ClusterSession(lane.actor, lane.node, opened)
        raise SandboxError("no node of the cluster can take a session")

    # -- the end ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Destroy every sandbox on every node and end the actors (only the handle that made
        the cluster does; a copy in a task or actor does nothing)."""
        if not self._owner:
            return
        with self._lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        ends = [(lane, lane.actor.shutdown.remote()) for lane in lanes]
        for lane, ref in ends:
            with contextlib.suppress(RayError):  # lost: its sandboxes went with its process
                ray.get(ref, timeout=START_TIMEOUT)
            ray.kill(lane.actor)
        if self._limiter is not None:
            ray.kill(self._limiter)
            self._limiter = None

    def __enter__(self) -> SandboxCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
        state["_owner"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
