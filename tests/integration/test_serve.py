"""nsbox serve as its users meet it: a real uvicorn on 127.0.0.1, real HTTP (issue 20).

The verl test sends exactly what verl's SandboxFusion reward client sends for a test case
and classifies the answer by verl's rules (``_verl_verdict``: Success + matching stdout is
a pass; Failed with a run that timed out is a timeout; Failed with a run that exited non-zero
is a runtime error; Failed with a compile result that failed is a compile error). The other
tests: bounded load (every request answered, no 5xx), expiry waited out, the SIGTERM drain,
the batch endpoint, metrics, server-sent events, the schema, and SandboxClient(url=...).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import nsbox
from tests._serve import Served, served
from tests.conftest import require_sandbox, sandbox_processes, wait_until
from tests.integration._session_api import descendants

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}


@pytest.fixture(scope="module")
def server() -> Any:
    require_sandbox()
    with served("--workers", "2", tokens=TOKENS) as s:
        yield s


# -- what verl sends, and how it reads the answer ---------------------------------------------------
def _verl_payload(code: str, stdin: str, timeout: int = 10, language: str = "python") -> dict[str, Any]:
    """verl's call_sandbox_api body for one test case: these fields, these values, JSON."""
    return {
        "compile_timeout": timeout,
        "run_timeout": timeout,
        "code": code,
        "stdin": stdin,
        "language": language,
        "files": {},
        "fetch_files": [],
    }


def _verl_verdict(answer: dict[str, Any], expected: str) -> str:
    """verl's classification of an answer (its _process_single_case rules)."""
    status, compiled, ran = answer.get("status"), answer.get("compile_result"), answer.get("run_result")
    if status == "SandboxError":
        return "sandbox_error"
    if status == "Failed":
        if compiled and (
            compiled.get("status") in ("Error", "TimeLimitExceeded")
            or (compiled.get("status") == "Finished" and compiled.get("return_code") != 0)
        ):
            return "compile_error"
        if ran:
            if ran.get("status") == "TimeLimitExceeded":
                return "timeout"
            if ran.get("status") == "Error" or (ran.get("status") == "Finished" and ran.get("return_code") != 0):
                return "runtime_error"
        return "unknown_failure"
    if status == "Success" and ran and ran.get("status") == "Finished":
        return "pass" if str(ran.get("stdout") or "").rstrip("\n") == expected.rstrip("\n") else "wrong_answer"
    return "unknown"


SOLUTION = "a, b = map(int, input().split())\nprint(a + b)"


@pytest.mark.parametrize(
    ("code", "stdin", "expected", "verdict", "language"),
    [
        (SOLUTION, "2 3", "5", "pass", "python"),
        (SOLUTION, "2 3", "6", "wrong_answer", "python"),
        ("raise SystemExit(input()[5])", "short", "", "runtime_error", "python"),
        ("import sys\nsys.exit(3)", "", "", "runtime_error", "python"),
        ("while True: pass", "", "", "timeout", "python"),
        ('#include <cstdio>\nint main(){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a+b);}', "2 3", "5", "pass", "cpp"),
        ("int main(){return missing;}", "", "", "compile_error", "cpp"),
        ("read a b; echo $((a*b))", "4 5", "20", "pass", "bash"),
    ],
    ids=["pass", "wrong-answer", "runtime-error", "exit-code", "timeout", "cpp-pass", "cpp-compile-error", "bash"],
)
def test_verl_s_reward_client_classifies_every_answer(
    server: Served, code: str, stdin: str, expected: str, verdict: str, language: str
) -> None:
    timeout = 1 if verdict == "timeout" else 10
    started = time.monotonic()
    reply = server.request(
        "POST",
        "/run_code",
        _verl_payload(code, stdin, timeout, language),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    assert reply.status == 200, reply
    answer = reply.json()
    assert _verl_verdict(answer, expected) == verdict, answer
    assert set(answer) >= {"status", "message", "compile_result", "run_result", "files"}
    if verdict == "timeout":
        assert answer["run_result"]["status"] == "TimeLimitExceeded"
        assert time.monotonic() - started < timeout + 5, "the timeout is the request's run_timeout"


def test_a_language_without_a_toolchain_is_a_sandbox_error_that_names_the_supported_ones(server: Served) -> None:
    answer = server.request("POST", "/run_code", _verl_payload("fmt.Println(1)", "", language="go")).json()
    assert answer["status"] == "SandboxError" and "go" in answer["message"] and "python" in answer["message"], answer


def test_files_go_beside_the_program_and_fetch_files_come_back(server: Served) -> None:
    import base64

    code = "print(open('data/in.txt').read().upper())\nopen('out.txt', 'w').write('made')"
    body = {
        "code": code,
        "files": {"data/in.txt": base64.b64encode(b"hello").decode()},
        "fetch_files": ["out.txt", "missing.txt"],
    }
    answer = server.request("POST", "/run_code", body).json()
    assert answer["status"] == "Success" and answer["run_result"]["stdout"] == "HELLO\n", answer
    assert answer["files"] == {"out.txt": base64.b64encode(b"made").decode()}, answer


def test_a_batch_answers_each_program_in_order(server: Served) -> None:
    programs = [{"code": f"print({i} * {i})"} for i in range(6)] + [{"code": "1/0"}]
    reply = server.request("POST", "/v1/run_code_batch", {"requests": programs})
    assert reply.status == 200, reply
    results = reply.json()["results"]
    assert [r["run_result"]["stdout"] for r in results[:6]] == [f"{i * i}\n" for i in range(6)]
    assert results[6]["status"] == "Failed" and "ZeroDivisionError" in results[6]["run_result"]["stderr"]


def test_metrics_count_runs_and_healthz_needs_no_token(server: Served) -> None:
    server.request("POST", "/run_code", {"code": "print(1)"})
    health = server.request("GET", "/healthz", token=None)
    assert health.status == 200 and health.json()["ok"] is True
    text = server.request("GET", "/metrics").body.decode()
    counted = [
        line for line in text.splitlines() if line.startswith('nsbox_runs_total{endpoint="run_code",status="Success"}')
    ]
    assert counted and int(counted[0].split()[-1]) >= 1, text
    assert "nsbox_run_seconds_count" in text and "nsbox_queue_depth" in text and "nsbox_sessions" in text
    assert server.request("GET", "/metrics", token=None).status == 401


def test_the_schema_and_docs_are_served(server: Served) -> None:
    schema = server.request("GET", "/openapi.json", token=None).json()
    assert {"/run_code", "/v1/sandboxes", "/v1/sandboxes/{session_id}/execute"} <= set(schema["paths"])
    assert server.request("GET", "/docs", token=None).status == 200


def test_execute_streams_server_sent_events(server: Served) -> None:
    made = server.request("POST", "/v1/sandboxes", {"memory": "128M"}).json()
    path = f"/v1/sandboxes/{made['id']}/execute"
    reply = server.request("POST", path, {"code": "print('out')\n6 * 7"}, headers={"Accept": "text/event-stream"})
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n") for block in reply.body.decode().strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names == ["started", "stdout", "result"], reply.body
    assert json.loads(events[1][1].removeprefix("data: ")) == {"text": "out\n"}
    assert json.loads(events[2][1].removeprefix("data: "))["value"] == "42"
    assert server.request("DELETE", f"/v1/sandboxes/{made['id']}").status == 204


def test_sandbox_client_with_a_url_is_a_session_of_the_server(server: Served) -> None:
    async def use() -> tuple[Any, Any, bytes]:
        async with nsbox.SandboxClient(url=server.url, token=TOKENS["bob"], memory_limit="128M") as client:
            first = await client.execute_code("x = 20")
            second = await client.execute_code("x + 22")
            await client.write_file("a.txt", b"bytes")
            return first, second, await client.read_file("a.txt")

    first, second, data = asyncio.run(use())
    assert first.success and second.value == "42" and data == b"bytes", (first, second)
    assert server.request("GET", "/v1/sandboxes", token=TOKENS["bob"]).json()["sandboxes"] == [], "cleanup() deleted it"


# -- bounds, expiry, shutdown: servers of their own ---------------------------------------------
def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_200_concurrent_clients_get_a_result_or_429_and_nothing_is_left() -> None:
    require_sandbox()
    args = ("--workers", "8", "--queue", "32", "--max-memory", "256M", "--default-memory", "128M")
    with served(*args, "--requests-per-minute", "100000", tokens=TOKENS) as server:
        rss_before = _rss_kib(server.process.pid)
        barrier = threading.Barrier(200)

        def client(i: int) -> tuple[int, str, str | None]:
            connection = http.client.HTTPConnection(server.host, server.port, timeout=120)
            body = json.dumps({"code": f"print({i})", "run_timeout": 10})
            headers = {"Authorization": f"Bearer {TOKENS['alice']}", "Content-Type": "application/json"}
            barrier.wait(60)
            try:
                connection.request("POST", "/run_code", body, headers)
                response = connection.getresponse()
                answer = response.read()
                stdout = json.loads(answer)["run_result"]["stdout"] if response.status == 200 else ""
                return response.status, stdout, response.getheader("Retry-After")
            finally:
                connection.close()

        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(client, range(200)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert all(stdout == f"{i}\n" for i, (status, stdout, _) in enumerate(answers) if status == 200)
        assert all(retry and int(retry) >= 1 for status, _, retry in answers if status == 429)
        assert statuses.count(200) >= 8 + 32, "the workers and the queue were all used"
        assert _rss_kib(server.process.pid) - rss_before < 200 * 1024, "the server's memory stayed bounded"
        assert (
            server.request("POST", "/run_code", {"code": "print('after')"}).json()["run_result"]["stdout"] == "after\n"
        )
        assert server.stop() == 0


def test_idle_and_lifetime_expiry_destroy_sessions() -> None:
    require_sandbox()
    with served("--session-idle-ttl", "2", "--session-lifetime", "6", "--pool-size", "0", tokens=TOKENS) as server:
        own = descendants(server.process.pid)  # its run_code workers
        idle = server.request("POST", "/v1/sandboxes", {}).json()["id"]
        busy = server.request("POST", "/v1/sandboxes", {}).json()["id"]
        sessions = (descendants(server.process.pid) - own) & set(sandbox_processes())
        assert sessions, "premise: the sessions' sandbox processes are found"
        started = time.monotonic()
        while time.monotonic() - started < 4.5:  # the busy one is used every second: never idle for 2 s
            reply = server.request("POST", f"/v1/sandboxes/{busy}/execute", {"code": "1"})
            assert reply.status == 200, (time.monotonic() - started, reply)
            time.sleep(1)
        assert server.request("GET", f"/v1/sandboxes/{idle}").status == 404, "idle for 2 s: destroyed"
        assert server.request("GET", f"/v1/sandboxes/{busy}").status == 200, "used: kept"
        assert wait_until(lambda: server.request("GET", f"/v1/sandboxes/{busy}").status == 404, 6), "lifetime over"
        assert wait_until(lambda: not [p for p in sessions if Path(f"/proc/{p}").exists()], 10), "their sandboxes went"
        expired = [e for e in server.log() if e.get("path", "").startswith("/v1/sandboxes/") and e["status"] == 404]
        assert expired and all(e["token"] == "alice" for e in expired)


def test_sigterm_lets_a_running_request_finish_then_leaves_nothing() -> None:
    require_sandbox()
    with served("--grace", "20", tokens=TOKENS) as server:
        made = server.request("POST", "/v1/sandboxes", {}).json()["id"]
        answers: list[Any] = []
        running = threading.Thread(
            target=lambda: answers.append(
                server.request("POST", "/run_code", {"code": "import time; time.sleep(2); print('done')"})
            )
        )
        running.start()
        time.sleep(0.7)
        pids = descendants(server.process.pid)
        os.kill(server.process.pid, signal.SIGTERM)
        running.join(60)
        assert answers and answers[0].status == 200, answers
        assert answers[0].json()["run_result"]["stdout"] == "done\n"
        assert server.process.wait(60) == 0
        assert wait_until(lambda: not [p for p in pids if Path(f"/proc/{p}").exists()], 10)
        assert [e["event"] for e in server.log()][-1] == "stopped", made
