"""nsbox.ray on a real multi-node Ray cluster on this machine (tests/_ray.py): three nodes,
each its own raylet, shared by this module's tests.

Sandboxes are made on every node (each result names its node); 500 programs spread over all
of them and come back in order, all passing; a batch streams as it finishes and holds at most
two items per worker on a node; a rate limit spaces the starts; sessions are pinned to a node,
keep their state, and refuse a path outside the workspace; the cluster works from inside a
Ray task; an actor that Ray restarts comes back empty. (Node loss, a node left out and
shutdown: test_ray_nodes.py, each on a cluster of its own.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

ray = pytest.importorskip("ray", reason="the ray extra (make test installs it)")

import nsbox  # noqa: E402
from nsbox.ray import SandboxCluster  # noqa: E402
from tests._ray import OPTIONS, alive_nodes, ray_cluster  # noqa: E402
from tests.conftest import wait_until  # noqa: E402


@pytest.fixture(scope="module")
def sandboxes() -> Iterator[SandboxCluster]:
    with ray_cluster(), SandboxCluster(per_node=1, **OPTIONS) as sandboxes:
        yield sandboxes


def test_every_node_makes_sandboxes_and_each_result_names_its_node(sandboxes: SandboxCluster) -> None:
    shown = sandboxes.nodes()
    assert {n.node for n in shown} == alive_nodes() and len(shown) == 3, shown
    assert all(n.verdict == "ok" and n.capacity == 1 for n in shown), shown
    # Each program sees a sandbox: its pid 1 is nsbox's init, no network, and its own node's id.
    probe = "import os, socket; print(open('/proc/1/comm').read().strip(), socket.if_nameindex())"
    results = sandboxes.run_code_many([probe] * 30)
    assert set(results.nodes) == alive_nodes(), "all three nodes ran some"
    for result in results:
        assert result.status is nsbox.Status.OK and result.stdout == b"nsbox-init [(1, 'lo')]\n", result


def test_500_programs_spread_over_all_nodes_come_back_in_order(sandboxes: SandboxCluster) -> None:
    results = sandboxes.run_code_many([f"print({i} * {i})" for i in range(500)])
    assert [r.stdout for r in results] == [f"{i * i}\n".encode() for i in range(500)]
    assert all(r.status is nsbox.Status.OK for r in results)
    spread = {node: results.nodes.count(node) for node in set(results.nodes)}
    assert set(spread) == alive_nodes() and min(spread.values()) >= 50, spread
    assert results.retried == []


def test_a_batch_streams_as_it_finishes_and_holds_two_items_per_worker(sandboxes: SandboxCluster) -> None:
    # The first program is the slowest: streamed, it comes last; in order, it would be first.
    programs = ["import time; time.sleep(3); print('slow')"] + [f"print({i})" for i in range(1, 40)]
    seen = [done.index for done in sandboxes.as_completed(programs)]
    assert sorted(seen) == list(range(40)) and seen[0] != 0 and 0 in seen[-6:], seen
    # Back-pressure: no node ever had more than two of a batch's items running or waiting.
    peaks = [n for n in sandboxes.nodes()]
    assert all(n.peak <= 2 for n in peaks), peaks


def test_a_session_is_pinned_to_one_node_and_keeps_its_state(sandboxes: SandboxCluster) -> None:
    with sandboxes.session() as session:
        assert session.node in alive_nodes()
        assert session.execute_code("x = 41").status is nsbox.Status.OK
        assert session.execute_code("x + 1").value == "42"
        session.write_file("data.txt", "hello")
        assert session.read_file("data.txt") == b"hello"
        assert session.run(["cat", "data.txt"], capture_output=True).stdout == b"hello"
        with pytest.raises(nsbox.SecurityError, match="leads out of the workspace"):
            session.read_file("../../etc/shadow")
    with pytest.raises(nsbox.SandboxError, match="closed"):
        session.execute_code("x")
    with pytest.raises(nsbox.SpecError, match="memory"):
        sandboxes.session(memory="lots")


def test_submissions_are_judged_on_the_nodes_with_their_verdicts(sandboxes: SandboxCluster) -> None:
    tests = [{"input": f"{i}\n", "output": f"{2 * i}\n"} for i in range(5)]
    right, wrong = "print(int(input()) * 2)", "print(int(input()) + 2)"
    verdicts = sandboxes.judge_many([{"code": right, "tests": tests}, {"code": wrong, "tests": tests}] * 3)
    assert [v.verdict.value for v in verdicts] == ["accepted", "wrong_answer"] * 3, verdicts
    assert set(verdicts.nodes) <= alive_nodes()
    assert sandboxes.judge(right, tests).accepted


def test_the_cluster_works_from_inside_a_ray_task(sandboxes: SandboxCluster) -> None:

    @ray.remote(num_cpus=0)
    def reward(cluster: SandboxCluster, answers: list[str]) -> list[float]:
        results = cluster.run_code_many([f"assert {a} == 4" for a in answers])
        return [1.0 if r.status is nsbox.Status.OK else 0.0 for r in results]

    assert ray.get(reward.remote(sandboxes, ["2 + 2", "5", "2 * 2"])) == [1.0, 0.0, 1.0]
    assert len(sandboxes.nodes()) == 3, "the task's copy did not shut the cluster down"


def test_a_rate_limit_spaces_the_starts(sandboxes: SandboxCluster) -> None:
    with SandboxCluster(per_node=1, pool=0, rate=20, **OPTIONS) as limited:
        started = time.monotonic()
        results = limited.run_code_many(["pass"] * 30)
        took = time.monotonic() - started
        assert all(r.status is nsbox.Status.OK for r in results)
        assert took >= 29 / 20, f"30 starts at 20 a second take 1.45 s at least; took {took:.2f}"


def test_an_actor_restarted_by_ray_comes_back_empty(sandboxes: SandboxCluster) -> None:
    with SandboxCluster(per_node=1, pool=0, **OPTIONS) as mine:
        session = mine.session()
        session.execute_code("secret = 'mine'")
        lane = mine._lanes[session.node]
        before = ray.get(lane.actor.info.remote())
        os.kill(before["pid"], signal.SIGKILL)  # the actor's worker (our cluster's process)
        after = None

        def restarted() -> bool:
            nonlocal after
            with contextlib.suppress(ray.exceptions.RayActorError):
                after = ray.get(lane.actor.info.remote(), timeout=5)
            return after is not None and after["incarnation"] != before["incarnation"]

        assert wait_until(restarted, 60), "Ray restarted it"
        assert after is not None and after["sessions"] == 0
        with pytest.raises(nsbox.SandboxError, match=r"restarted|lost"):
            session.execute_code("secret")
        assert mine.run_code("print('again')").stdout == b"again\n"
