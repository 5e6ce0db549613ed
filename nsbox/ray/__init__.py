"""nsbox.ray: sandboxes on every node of a Ray cluster (the ``ray`` extra: ``pip install nsbox[ray]``).

``SandboxCluster(per_node=N, **sandbox_options)``: one actor per alive node, each owning that
node's ``Judge`` and ``SandboxPool``; ``run_code_many`` / ``judge_many`` / ``as_completed``
fan one-shot work out over them; ``session()`` is a sandbox pinned to one node.

Modules:
  _node      NodeSandboxes, the actor: a node's judge, pool and sessions; its check verdict
  _dispatch  a batch over the nodes: by free capacity, bounded, rate-limited, retried once
  _session   ClusterSession: a sandbox on one node, with NsSandbox's methods
  _cluster   SandboxCluster: its nodes, batches, sessions and shutdown
"""

from ._cluster import NodeInfo, SandboxCluster
from ._dispatch import ClusterResults, Completed
from ._session import ClusterSession

__all__ = ["ClusterResults", "ClusterSession", "Completed", "NodeInfo", "SandboxCluster"]
