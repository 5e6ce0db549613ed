"""SandboxPool: pre-started sandboxes, each handed to one user only, refilled, and gone
when the pool closes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

import nsbox
from tests.conftest import require_sandbox, sandbox_processes, wait_until


def _supervisor_pid(sandbox: nsbox.NsSandbox) -> int:
    pid = getattr(sandbox._backend, "supervisor_pid", None)
    assert isinstance(pid, int)
    return pid


@pytest.fixture
def pool() -> nsbox.SandboxPool:
    require_sandbox()
    with nsbox.SandboxPool(2, memory="256M", timeout=10) as pool:
        yield pool


def test_nothing_of_one_user_reaches_the_next(pool: nsbox.SandboxPool) -> None:
    seen = set()
    for user in range(4):
        with pool.acquire() as sandbox:
            assert sandbox.spec.limits.memory == 256 << 20
            probe = "ls -A /workspace /tmp; pgrep -c -f 'marker[-]sleep' || true"
            assert sandbox.run(["sh", "-c", probe], capture_output=True).stdout == b"/tmp:\n\n/workspace:\n0\n"
            assert sandbox.execute_code("'secret' in globals()").value == "False"
            sandbox.run(["sh", "-c", f"echo {user} > /workspace/mine; echo x > /tmp/mine"])
            daemon = "(setsid python3 -c 'import time; time.sleep(1000)' marker-sleep > /dev/null 2>&1 &)"
            sandbox.run(["sh", "-c", daemon])
            time.sleep(0.3)
            sandbox.execute_code("secret = 42")
            seen.add(_supervisor_pid(sandbox))
            # The premise: the probes see what this user left (so the next user's would too).
            left = sandbox.run(["sh", "-c", probe], capture_output=True).stdout
            assert left == b"/tmp:\nmine\n\n/workspace:\nmine\n1\n", left
            assert sandbox.execute_code("'secret' in globals()").value == "True"
    assert len(seen) == 4, "every user got a sandbox of its own"


def test_the_pool_refills_and_acquire_does_not_wait_when_ready(pool: nsbox.SandboxPool) -> None:
    assert wait_until(lambda: pool.ready == 2, timeout=10)
    taken = [pool.acquire(), pool.acquire()]
    try:
        assert wait_until(lambda: pool.ready == 2, timeout=10), "refilled to its size"
        assert len({_supervisor_pid(s) for s in taken} | {0}) == 3
    finally:
        for sandbox in taken:
            sandbox.close()


def test_a_sandbox_that_died_while_waiting_is_not_handed_out(pool: nsbox.SandboxPool) -> None:
    assert wait_until(lambda: pool.ready == 2, timeout=10)
    victim = pool._ready[0]
    os.kill(_supervisor_pid(victim), signal.SIGKILL)  # a supervisor this test's pool started
    time.sleep(0.2)
    for _ in range(3):
        with pool.acquire() as sandbox:
            assert sandbox.run(["true"]).ok


def test_close_leaves_nothing_and_refuses_more() -> None:
    require_sandbox()
    before = set(sandbox_processes())
    pool = nsbox.SandboxPool(3)
    assert wait_until(lambda: pool.ready == 3, timeout=10)
    taken = pool.acquire()
    pool.close()
    with pytest.raises(nsbox.SandboxError):
        pool.acquire()
    assert taken.run(["true"]).ok, "a sandbox already handed out is the caller's"
    taken.close()
    assert wait_until(lambda: set(sandbox_processes()) <= before), "every pooled sandbox is gone"


def test_bad_sizes_and_options_are_refused() -> None:
    for size in (0, 65, "2", True):
        with pytest.raises(nsbox.SpecError):
            nsbox.SandboxPool(size)  # type: ignore[arg-type]
    with pytest.raises(nsbox.SpecError):
        nsbox.SandboxPool(1, nsbox.SandboxSpec(), memory="1G")


def test_the_async_pool_and_a_pooled_client() -> None:
    require_sandbox()

    async def use() -> list[str | None]:
        async with nsbox.AsyncSandboxPool(2) as pool:
            first = await pool.acquire()
            values = [(await first.execute_code("x = 1; x")).value]
            await first.cleanup()
            async with nsbox.SandboxClient(pool=pool.pool) as second:
                values.append((await second.execute_code("'x' in globals()")).value)
            with pytest.raises(nsbox.SpecError):
                nsbox.SandboxClient(pool=pool.pool, memory_limit="1G")
            return values

    assert asyncio.run(use()) == ["1", "False"]
