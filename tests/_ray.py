"""A real multi-node Ray cluster on this machine for nsbox.ray's tests:
``ray.cluster_utils.Cluster``, each node a raylet of its own (and its own workers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from tests.conftest import require_run_code

#: Each node's object store: Ray's least (the machine's /dev/shm holds three).
STORE = 78_643_200
#: A node's death is noticed in about a second (Ray's defaults take half a minute).
HEALTH = {
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "100",
    "RAY_health_check_period_ms": "300",
    "RAY_health_check_initial_delay_ms": "0",
}
#: The cluster's sandboxes (the limits any program of these tests needs).
OPTIONS: dict[str, Any] = {"memory": "256M", "timeout": 20}


@contextlib.contextmanager
def ray_cluster(nodes: int = 3) -> Iterator[Cluster]:
    """A head and ``nodes - 1`` more, each with one CPU, this process its driver; shut down
    after, its session folder removed."""
    require_run_code()
    folder = tempfile.mkdtemp(prefix="tmp-nsbox-ray-")
    settings = {**HEALTH, "RAY_TMPDIR": folder}  # its sessions' files, not /tmp/ray
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            connect=True,
            head_node_args={"num_cpus": 1, "object_store_memory": STORE},
        )
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def our_actors() -> list[dict[str, Any]]:
    """nsbox.ray's actors in the control store's table (plain ray has no state API without
    its dashboard)."""
    from ray._private import state

    return [a for a in state.actors().values() if a["ActorClassName"].endswith(("NodeSandboxes", "RateLimiter"))]


def sandbox_cgroups() -> list[str]:
    """Sandbox cgroups left in any hierarchy (nsbox names each ``nsbox-...`` below its parent;
    the rootless run's delegated folder is not one)."""
    return [
        str(path)
        for root in Path("/sys/fs/cgroup").iterdir()
        for path in root.rglob("nsbox-*")
        if path.is_dir() and not path.name.endswith("-rootless")
    ]
