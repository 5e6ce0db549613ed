"""nsbox.ray, each test on a Ray cluster of its own (tests/_ray.py): a raylet killed
mid-batch (the batch completes, its retries reported; a session there raises), a node whose
operator's caps refuse the cluster's limits (left out, loudly), shutdown (no sandbox, actor or
cgroup left on any node), and bad options (refused before anything starts).
"""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the ray extra (make test installs it)")

import nsbox  # noqa: E402
from nsbox.ray import SandboxCluster  # noqa: E402
from tests._ray import OPTIONS, STORE, alive_nodes, our_actors, ray_cluster  # noqa: E402
from tests.conftest import sandbox_processes, wait_until  # noqa: E402
from tests.integration.test_limits import nsbox_cgroups  # noqa: E402


def test_a_raylet_killed_mid_batch_the_batch_completes_with_retries_and_its_session_raises() -> None:
    with ray_cluster() as nodes:
        with SandboxCluster(per_node=1, **OPTIONS) as sandboxes:
            victim = nodes.list_all_nodes()[-1]  # not the head: it holds the cluster's control store
            victim_id = victim.node_id
            doomed = _session_on(sandboxes, victim_id)
            assert doomed.execute_code("1").status is nsbox.Status.OK
            programs = [f"print({i})" for i in range(500)]
            got: list[Any] = []
            for done in sandboxes.as_completed(programs):
                got.append(done)
                if len(got) == 100:
                    nodes.remove_node(victim, allow_graceful=False)  # SIGKILLs its raylet
            assert sorted(d.index for d in got) == list(range(500))
            assert all(d.result.status is nsbox.Status.OK for d in got), [d for d in got if not d.result.ok]
            assert all(d.result.stdout == f"{d.index}\n".encode() for d in got)
            retried = [d for d in got if d.retried]
            assert retried and all(d.node != victim_id for d in retried), "the lost node's items ran again elsewhere"
            assert {d.node for d in got[-100:]} <= alive_nodes(), "none went to the lost node after"
            with pytest.raises(nsbox.SandboxError, match="lost"):
                doomed.execute_code("1")
            shown = {n.node: n.verdict for n in sandboxes.nodes()}
            assert shown[victim_id].startswith("lost"), shown
        assert wait_until(lambda: not sandbox_processes(), 20), "the lost node's sandboxes went with its worker"


def _session_on(sandboxes: SandboxCluster, node: str) -> Any:
    """Sessions until one lands on ``node`` (they go to the node with fewest); the others closed."""
    made = [sandboxes.session() for _ in range(3)]
    (mine,) = [s for s in made if s.node == node]
    for other in made:
        if other is not mine:
            other.close()
    return mine


def test_nodes_that_join_later_get_work_and_one_that_cannot_sandbox_is_left_out_loudly() -> None:
    with ray_cluster(nodes=1) as nodes, SandboxCluster(per_node=1, **OPTIONS) as sandboxes:
        assert len(sandboxes.nodes()) == 1
        nodes.add_node(num_cpus=1, object_store_memory=STORE)
        # This node's operator caps a sandbox's memory below the cluster's 256 MiB.
        nodes.add_node(num_cpus=1, object_store_memory=STORE, env_vars={"NSBOX_MAX_MEMORY": "64M"})
        nodes.wait_for_nodes()
        with pytest.warns(RuntimeWarning, match=r"left out, it gets no work: cannot sandbox: .*memory"):
            results = sandboxes.run_code_many(["pass"] * 20)
        shown = {n.node: n for n in sandboxes.nodes()}
        assert set(shown) == alive_nodes() and len(shown) == 3, shown
        usable = {node for node, info in shown.items() if info.usable}
        assert len(usable) == 2, shown
        assert set(results.nodes) == usable, "both good nodes got work; the one left out none"
        assert all(r.status is nsbox.Status.OK for r in results)


def test_shutdown_leaves_no_sandbox_actor_or_cgroup_on_any_node() -> None:
    with ray_cluster():
        sandboxes = SandboxCluster(per_node=1, **OPTIONS)
        sessions = [sandboxes.session() for _ in range(3)]
        sessions[0].execute_code("x = 1")
        assert len(sandboxes.run_code_many(["pass"] * 20)) == 20
        assert sandbox_processes() and our_actors()
        sandboxes.shutdown()
        assert wait_until(lambda: not sandbox_processes(), 20), sandbox_processes()
        assert wait_until(lambda: all(a["State"] == "DEAD" for a in our_actors()), 20), our_actors()
        assert wait_until(lambda: not nsbox_cgroups(), 10), nsbox_cgroups()
        with pytest.raises(nsbox.SandboxError, match=r"closed|lost|no session"):
            sessions[1].execute_code("1")


def test_the_cluster_refuses_bad_options_before_starting_anything() -> None:
    for options, named in (
        ({"per_node": 0}, "per_node"),
        ({"pool": -1}, "pool"),
        ({"rate": 0}, "rate"),
        ({"memory": "lots"}, "memory"),
    ):
        with pytest.raises(nsbox.SpecError, match=named):
            SandboxCluster(**options)
    assert not ray.is_initialized() or not our_actors()
