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
import contextlib
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
    assert names == ["started", "stdout", "display", "result"], reply.body
    assert json.loads(events[1][1].removeprefix("data: ")) == {"text": "out\n"}
    assert json.loads(events[2][1].removeprefix("data: "))["data"] == {"text/plain": "42"}, "the value's item"
    assert json.loads(events[3][1].removeprefix("data: "))["value"] == "42"
    ai = {"code": "result = {'sum': a + b}", "inputs": {"a": 1, "b": 2}, "want_result": True}
    reply = server.request("POST", path, ai, headers={"Accept": "text/event-stream"})
    blocks = [block.split("\n") for block in reply.body.decode().strip().split("\n\n")]
    assert [lines[0] for lines in blocks] == ["event: started", "event: result"], reply.body
    assert json.loads(blocks[1][1].removeprefix("data: ")) == {"result": {"sum": 3}}
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
        own = _settled(server.process.pid)  # its run_code workers' (each forks its next program ahead)
        idle = server.request("POST", "/v1/sandboxes", {}).json()["id"]
        busy = server.request("POST", "/v1/sandboxes", {}).json()["id"]
        sessions = (_settled(server.process.pid) - own) & set(sandbox_processes())
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


def _settled(pid: int) -> set[int]:
    """The processes below ``pid`` once they stopped changing (0.3 s apart)."""
    before = descendants(pid)
    while True:
        time.sleep(0.3)
        now = descendants(pid)
        if now == before:
            return now
        before = now


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


def _timed_events(server: Served, path: str, body: dict[str, Any]) -> list[tuple[float, str, Any]]:
    """POST asking for server-sent events; each (seconds since sent, name, data), as read."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=120)
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    started = time.monotonic()
    connection.request("POST", path, json.dumps(body), {**headers, "Accept": "text/event-stream"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream")
    events, name = [], None
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((time.monotonic() - started, name, json.loads(line[6:])))
    connection.close()
    return events


TICKS = "import time\nfor i in range(15):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.1)"


@pytest.mark.parametrize("endpoint", ["execute", "run"])
def test_output_streams_as_events_while_the_code_runs(server: Served, endpoint: str) -> None:
    made = server.request("POST", "/v1/sandboxes", {"memory": "128M"}).json()["id"]
    body = {"code": TICKS} if endpoint == "execute" else {"args": ["python3", "-u", "-c", TICKS]}
    events = _timed_events(server, f"/v1/sandboxes/{made}/{endpoint}", body)
    names = [name for _, name, _ in events]
    assert names[0] == "started" and names[-1] == "result" and set(names[1:-1]) == {"stdout"}, names
    text = "".join(data["text"] for _, name, data in events if name == "stdout")
    assert text == "".join(f"tick {i}\n" for i in range(15)), "in order, none lost or doubled"
    first, last = events[1][0], events[-1][0]
    assert first < last - 0.7, f"the first line came {first:.2f} s in, the result {last:.2f} s: not while it ran"
    assert events[-1][2]["status"] == "ok"
    assert server.request("DELETE", f"/v1/sandboxes/{made}").status == 204


def test_a_flooding_run_streams_no_more_than_its_output_limit(server: Served) -> None:
    made = server.request("POST", "/v1/sandboxes", {"memory": "128M", "output_limit": "64K"}).json()["id"]
    body = {"args": ["sh", "-c", "head -c 50000000 /dev/zero | tr '\\0' x"], "timeout": 30}
    events = _timed_events(server, f"/v1/sandboxes/{made}/run", body)
    streamed = sum(len(data["text"]) for _, name, data in events if name == "stdout")
    assert streamed == 64 * 1024, streamed
    assert events[-1][1] == "result" and events[-1][2]["stdout_truncated"] is True, events[-1]
    assert server.request("POST", f"/v1/sandboxes/{made}/execute", {"code": "'alive'"}).json()["value"] == "'alive'"
    assert server.request("DELETE", f"/v1/sandboxes/{made}").status == 204


def test_a_programs_output_is_cut_at_the_servers_output_limit_and_still_succeeds(server: Served) -> None:
    answer = server.request("POST", "/run_code", {"code": "print('x' * (5 << 20))"}).json()
    assert answer["status"] == "Success", answer["message"]
    assert len(answer["run_result"]["stdout"]) == 1 << 20, "the server's --output-limit (1M) for one-shot programs"


def test_fetch_files_names_are_bounded(server: Served) -> None:
    names = [f"f{i}" for i in range(65)]
    reply = server.request("POST", "/run_code", {"code": "pass", "fetch_files": names})
    assert reply.status == 422 and reply.json()["detail"][0]["loc"] == ["body", "fetch_files"], reply


def test_a_sessions_calls_go_one_at_a_time_and_a_fifth_waiting_is_refused(server: Served) -> None:
    made = server.request("POST", "/v1/sandboxes", {"memory": "128M"}).json()["id"]
    path = f"/v1/sandboxes/{made}/execute"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        started = time.monotonic()
        replies = list(
            pool.map(lambda _: server.request("POST", path, {"code": "import time; time.sleep(1)"}), range(6))
        )
        took = time.monotonic() - started
    statuses = sorted(r.status for r in replies)
    assert statuses == [200, 200, 200, 200, 429, 429], statuses
    assert took >= 3.5, f"four 1 s cells of one session ran one after another, not at once ({took:.1f} s)"
    assert server.request("DELETE", f"/v1/sandboxes/{made}").status == 204


def test_a_server_without_tokens_answers_only_loopback_names() -> None:
    """DNS rebinding: a web page's request to a name that resolves to 127.0.0.1 carries that
    name in Host; a token-less server refuses it."""
    require_sandbox()
    with served("--workers", "1", "--pool-size", "0") as server:
        assert server.request("GET", "/v1/sandboxes", token=None).status == 200
        rebound = server.request("GET", "/v1/sandboxes", token=None, headers={"Host": "attacker.example:8080"})
        assert rebound.status == 403 and rebound.json()["detail"][0]["loc"] == ["header", "host"], rebound
        assert server.request("GET", "/v1/sandboxes", token=None, headers={"Host": "[::1]:80"}).status == 200


def test_packages_install_from_the_servers_wheels_and_sigterm_ends_a_long_program(host_tmp: Any) -> None:
    require_sandbox()
    from tests.security.test_workspace_files import build_wheel

    wheels = host_tmp("wheels", 0o755)
    build_wheel(wheels)
    with served("--wheels", str(wheels), "--grace", "1", "--pool-size", "0", tokens=TOKENS) as server:
        made = server.request("POST", "/v1/sandboxes", {}).json()["id"]
        installed = server.request("POST", f"/v1/sandboxes/{made}/packages", {"packages": ["nsbox_demo_pkg"]})
        assert installed.status == 200 and installed.json()["status"] == "ok", installed
        value = server.request(
            "POST", f"/v1/sandboxes/{made}/execute", {"code": "import nsbox_demo_pkg\nnsbox_demo_pkg.VALUE"}
        )
        assert value.json()["value"] == "42", value
        missing = server.request("POST", f"/v1/sandboxes/{made}/packages", {"packages": ["not_in_the_wheelhouse"]})
        assert missing.status == 200 and missing.json()["status"] != "ok", "pip's failure is a result, not a 5xx"
        remote = nsbox.RemoteSandbox(server.url, token=TOKENS["bob"]).start()
        remote.write_file("/workspace/abs.txt", b"absolute")
        assert remote.read_file("abs.txt") == b"absolute", "/workspace/x is the workspace's x"

        def long_program() -> None:
            with contextlib.suppress(OSError):  # the server goes away under it
                server.request("POST", "/run_code", {"code": "import time; time.sleep(60)", "run_timeout": 100})

        threading.Thread(target=long_program, daemon=True).start()
        time.sleep(1.5)
        stopping = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - stopping < 15, "after the grace, a program still running is ended"


def test_judge_in_a_remote_session_gives_the_local_results(server: Served) -> None:
    tests = [("2 3\n", "5\n"), ("10 -4\n", "6\n"), ("1 1\n", "3\n")]
    with nsbox.RemoteSandbox(server.url, token=server.token, memory="128M") as remote:
        judged = remote.judge(SOLUTION, tests, timeout=5)
        assert [t.verdict for t in judged.tests] == [
            nsbox.Verdict.ACCEPTED,
            nsbox.Verdict.ACCEPTED,
            nsbox.Verdict.WRONG_ANSWER,
        ]
        assert judged.verdict is nsbox.Verdict.WRONG_ANSWER and judged.tests[2].run.stdout == b"2\n", judged
        cpp = '#include <cstdio>\nint main(){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a+b);}'
        compiled = remote.judge(cpp, tests[:2], language="cpp", timeout=5, compile_timeout=60)
        assert compiled.accepted and compiled.compile is not None and compiled.compile.ok, compiled
        broken = remote.judge("int main(){return missing;}", tests, language="cpp")
        assert broken.verdict is nsbox.Verdict.COMPILE_ERROR and "missing" in (broken.error or ""), broken


def test_a_batch_holds_the_workers_it_uses() -> None:
    require_sandbox()
    with served("--workers", "2", "--queue", "0", "--pool-size", "0", tokens=TOKENS) as server:
        batch = {"requests": [{"code": "import time; time.sleep(2)"}] * 2}
        answers: list[Any] = []
        running = threading.Thread(target=lambda: answers.append(server.request("POST", "/v1/run_code_batch", batch)))
        running.start()
        time.sleep(0.7)
        single = server.request("POST", "/run_code", {"code": "print(1)"})
        assert single.status == 429 and single.headers.get("retry-after"), "both workers are the batch's; no queue"
        running.join(60)
        assert answers and [r["status"] for r in answers[0].json()["results"]] == ["Success", "Success"]
        assert server.request("POST", "/run_code", {"code": "print(1)"}).status == 200
