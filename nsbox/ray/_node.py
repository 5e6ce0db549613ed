"""NodeSandboxes: one node's sandboxes, as the Ray actor the cluster pins to that node.

It owns the node's ``Judge`` (``per_node`` workers: one-shot programs and submissions), a
``SandboxPool`` for sessions of the cluster's options, and the sessions opened on it, each
under an id of its own. It starts by proving the node can sandbox: ``nsbox check``'s
required checks pass, and each worker's sandbox runs a program. A node that cannot is
reported by ``info()``; the cluster leaves it out and never sends it work.

A restarted actor (Ray restarts it once if its process died) starts empty, under a new
``incarnation``: it never holds a sandbox of its earlier life, nor anyone else's.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from nsbox._errors import NsboxError, SandboxError, SpecError
from nsbox._host import probe
from nsbox._judge import Judge, JudgeResult
from nsbox._pool import SandboxPool
from nsbox._result import RunResult, Status
from nsbox._sandbox import NsSandbox, spec_from_options
from nsbox._spec import SandboxSpec

_T = TypeVar("_T")
#: NsSandbox's methods a session handle may call (upload and download name host paths,
#: which would be the node's: not offered).
SESSION_METHODS = frozenset(
    (
        "run",
        "execute_code",
        "execute_ai_code",
        "run_code",
        "judge",
        "write_file",
        "read_file",
        "list_files",
        "remove",
        "install_packages",
    )
)
#: Sessions one node holds at most.
MAX_SESSIONS = 64
#: What each worker's sandbox runs to prove the node can sandbox.
PROOF = "print('sandboxed')"


class NodeSandboxes:
    """``NodeSandboxes(spec, per_node, pool)``: ``spec`` a SandboxSpec's dict."""

    def __init__(self, spec: Mapping[str, Any], per_node: int, pool: int) -> None:
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.incarnation = secrets.token_hex(8)
        self.per_node = per_node
        self._pool_size = pool
        self.spec: SandboxSpec | None = None
        self.judge: Judge | None = None
        self.pool: SandboxPool | None = None
        self._sessions: dict[str, NsSandbox] = {}
        self._lock = threading.Lock()
        self._running = 0
        self._peak = 0  #: the most one-shot items it held at once
        self._done = 0
        self.verdict = self._check(spec)

    def _check(self, spec: Mapping[str, Any]) -> str:
        """``ok``, or why this node cannot sandbox."""
        failing = [c for c in probe() if c.required and not c.ok]
        if failing:
            return "cannot sandbox: " + "; ".join(f"{c.name}: {c.detail}" for c in failing)
        try:
            self.spec = SandboxSpec.from_dict(spec)  # this node's caps (NSBOX_MAX_MEMORY...) may refuse it
            self.judge = Judge(self.per_node, spec=self.spec)
            proofs = self.judge.run_code_many([PROOF] * self.per_node)
        except NsboxError as exc:
            return f"cannot sandbox: {exc}"
        for result in proofs:
            if result.status is not Status.OK or result.stdout != b"sandboxed\n":
                said = result.error or (result.stderr or b"").decode("utf-8", "replace")[-300:]
                return f"cannot sandbox: a test program ended {result.status.value}: {said}"
        if self._pool_size:
            self.pool = SandboxPool(self._pool_size, self.spec)
        return "ok"

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {
                "node": self.node,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "incarnation": self.incarnation,
                "verdict": self.verdict,
                "capacity": self.per_node,
                "running": self._running,
                "peak": self._peak,
                "done": self._done,
                "sessions": len(self._sessions),
            }

    # -- one-shot work ---------------------------------------------------------------------------
    def run_code(self, program: str | Mapping[str, Any]) -> RunResult:
        return self._one(lambda judge: judge.run_code_many([program])[0])

    def judge_one(self, submission: Mapping[str, Any]) -> JudgeResult:
        return self._one(lambda judge: judge.judge_many([submission])[0])

    def _one(self, call: Callable[[Judge], _T]) -> _T:
        if self.judge is None:
            raise SandboxError(f"node {self.node} cannot sandbox: {self.verdict}")
        with self._lock:
            self._running += 1
            self._peak = max(self._peak, self._running)
        try:
            return call(self.judge)
        finally:
            with self._lock:
                self._running -= 1
                self._done += 1

    # -- sessions --------------------------------------------------------------------------------
    def open_session(self, options: Mapping[str, Any] | None) -> str:
        """A started sandbox (the pool's, when ``options`` is None); its id."""
        if self.judge is None:
            raise SandboxError(f"node {self.node} cannot sandbox: {self.verdict}")
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                raise SandboxError(f"node {self.node} holds {MAX_SESSIONS} sessions, its most")
        if options is None:
            sandbox = self.pool.acquire() if self.pool is not None else NsSandbox(self.judge.spec).start()
        else:
            sandbox = NsSandbox(spec_from_options(**options)).start()
        session = secrets.token_hex(16)
        with self._lock:
            self._sessions[session] = sandbox
        return session

    def call(self, session: str, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        if method not in SESSION_METHODS:
            raise SpecError("method", f"{method!r}: a cluster session offers {', '.join(sorted(SESSION_METHODS))}")
        sandbox = self._sessions.get(session)
        if sandbox is None:
            raise SandboxError(
                f"no session {session[:8]}... on node {self.node}: it was closed, or its actor restarted"
            )
        return getattr(sandbox, method)(*args, **kwargs)

    def close_session(self, session: str) -> bool:
        with self._lock:
            sandbox = self._sessions.pop(session, None)
        if sandbox is None:
            return False
        sandbox.close()
        return True

    def shutdown(self) -> int:
        """Destroy every sandbox of this node (the pool's, the judge's, the sessions'); how
        many sessions were still open."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for sandbox in sessions:
            sandbox.close()
        if self.pool is not None:
            self.pool.close()
        if self.judge is not None:
            self.judge.close()
        return len(sessions)
