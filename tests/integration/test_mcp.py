"""The MCP tool server, driven by the ``mcp`` SDK's own client over stdio (``nsbox mcp``)
and over Streamable HTTP (``nsbox serve --mcp``, a real server on 127.0.0.1).

Every test runs both transports: the tools are listed with their limits; state persists
across the calls of one client session and not across two; files round-trip; a package
installs from a local wheelhouse; a timeout is a tool error and the session goes on; asking
for more than the server allows (memory, time, network, a path outside the workspace) is a
tool error naming the limit; 20 clients at once each get their own sandbox; and when a
client goes away, its sandboxes go too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._mcp import TOOLS, TRANSPORTS, Endpoint, call, drive, mcp_server
from tests.conftest import NSBOX_CLI, require_run_code, require_sandbox, sandbox_processes, wait_until
from tests.integration._session_api import _ppid, descendants

#: The shared servers' limits (the same by either transport; the options differ in name).
MEMORY, TIMEOUT = "128M", 3


@pytest.fixture(scope="module", params=TRANSPORTS)
def shared(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    """One server per transport for the module's tests of both (stdio: the options each
    client's server starts with), with a wheelhouse and room for 20 sessions of a token."""
    require_run_code()  # the tools' run_code (own mode refuses it)
    from tests.security.test_workspace_files import build_wheel

    with tempfile.TemporaryDirectory(prefix="tmp-nsbox-wheels-") as wheels:
        os.chmod(wheels, 0o755)
        build_wheel(Path(wheels))
        extra = ("--max-sandboxes", "24", "--sessions-per-token", "24") if request.param == "http" else ()
        with mcp_server(request.param, memory=MEMORY, timeout=TIMEOUT, wheels=wheels, extra=extra) as endpoint:
            yield endpoint


@pytest.fixture
def endpoint(shared: Endpoint) -> Iterator[Endpoint]:
    """The shared server; after the test, nothing it made is left: no new sandbox process
    (stdio: its servers ended with their clients), no memory held in the budget (HTTP: each
    session's sandbox releases its share only once it is closed)."""
    before, budget, supervisors = set(sandbox_processes()), held(shared), session_supervisors(shared)
    yield shared
    if shared.server is None:
        assert wait_until(lambda: not set(sandbox_processes()) - before, 5), "a sandbox left"
    else:
        assert wait_until(lambda: not session_supervisors(shared) - supervisors, 5), "a session's sandbox left"
        assert held(shared) == budget, "a session's memory share left"


def session_supervisors(endpoint: Endpoint) -> set[int]:
    """An HTTP server's supervisors (each sandbox's): the children of the server and of its
    spawner. A warm interpreter its run_code worker starts again is deeper: not counted."""
    if endpoint.server is None:
        return set()
    server = endpoint.server.process.pid
    below = descendants(server)
    top = {server} | {pid for pid in below if _ppid(pid) == server}
    return {pid for pid in below - top if _ppid(pid) in top}


def held(endpoint: Endpoint) -> float:
    """The memory limits an HTTP server holds (its metrics); 0 for stdio."""
    if endpoint.server is None:
        return 0.0
    metrics = endpoint.server.request("GET", "/metrics").body.decode()
    return float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("nsbox_memory_held")))


def test_the_tools_are_listed_with_schemas_and_the_servers_limits(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        python = tools["execute_python"]
        assert python.input_schema["required"] == ["code"]
        assert set(python.input_schema["properties"]) == {"code", "timeout"}
        assert f"at most {TIMEOUT}" in python.input_schema["properties"]["timeout"]["description"]
        for name in ("run_code", "execute_python", "run_command"):
            description = tools[name].description or ""
            assert "memory 128 MiB" in description and f"timeout {TIMEOUT} s" in description, description
            assert "no network" in description, description
        assert set(tools["run_code"].input_schema["properties"]) == {"code", "language", "stdin"}
        assert tools["install_packages"].input_schema["properties"]["packages"]["type"] == "array"

    asyncio.run(body(endpoint))


def test_state_persists_within_a_client_session_and_not_across_two(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as first:
            failed, text = await call(first, "execute_python", code="x = 41\nimport math")
            assert not failed and text.startswith("ok"), text
            failed, text = await call(first, "execute_python", code="x + 1")
            assert not failed and "--- value ---\n42" in text, text
            failed, text = await call(first, "execute_python", code="print(math.pi > 3, x)")
            assert not failed and "True 41" in text, text
            async with endpoint.client() as second:  # another MCP session, at the same time
                failed, text = await call(second, "execute_python", code="x")
                assert failed and "NameError" in text, text
            failed, text = await call(first, "execute_python", code="x")
            assert not failed and "41" in text, "the other session's end left this one alone"
            failed, text = await call(first, "reset_session")
            assert not failed and "destroyed" in text
            failed, text = await call(first, "execute_python", code="x")
            assert failed and "NameError" in text, "reset_session starts anew"

    asyncio.run(body(endpoint))


def test_a_png_the_cell_displays_comes_back_as_image_content(endpoint: Endpoint) -> None:
    from tests.integration.test_display import MAKE_PNG, png_size

    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            reply = await client.call_tool("execute_python", {"code": MAKE_PNG + "display(Chart(30, 20))\n'done'"})
            assert not reply.is_error, reply
            said = reply.content[0].text
            assert "--- value ---\n'done'" in said and "1 image(s) follow" in said, said
            (image,) = reply.content[1:]
            assert image.type == "image" and image.mime_type == "image/png", image
            assert png_size(base64.b64decode(image.data)) == (30, 20)

    asyncio.run(body(endpoint))


def test_run_code_is_one_shot_and_reports_how_a_program_ended(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            upper = "import sys\nprint(sys.stdin.read().upper())"
            failed, text = await call(client, "run_code", code=upper, stdin="hi")
            assert not failed and "HI" in text, text
            failed, text = await call(client, "run_code", code="echo out; echo err >&2; exit 3", language="bash")
            assert failed and "exit code 3" in text and "out" in text and "err" in text, text
            failed, text = await call(client, "run_code", code="open('/tmp/left', 'w').write('x')")
            assert not failed, text
            failed, text = await call(client, "run_code", code="import os; print(os.path.exists('/tmp/left'))")
            assert "False" in text, "a program sees nothing of the one before"
            failed, text = await call(client, "run_code", code="puts 1", language="ruby")
            assert failed and "python or bash" in text, text

    asyncio.run(body(endpoint))


def test_files_round_trip_and_a_path_outside_the_workspace_is_a_tool_error(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            text = "naïve ✓\nline two\n"
            failed, said = await call(client, "write_file", path="notes/a.txt", content=text)
            assert not failed, said
            assert await call(client, "read_file", path="notes/a.txt") == (False, text)
            assert await call(client, "read_file", path="/workspace/notes/a.txt") == (False, text)
            failed, listing = await call(client, "list_files", path="notes")
            assert not failed and f"file\t{len(text.encode())}\ta.txt" in listing, listing
            failed, shown = await call(client, "execute_python", code="open('notes/a.txt').read().splitlines()[1]")
            assert "'line two'" in shown, "the tools and the code share the workspace"
            plant = "head -c 300 /dev/urandom > blob; ln -s /etc/passwd link"
            failed, said = await call(client, "run_command", command=plant)
            assert not failed, said
            failed, binary = await call(client, "read_file", path="blob")
            assert not failed and binary.startswith("(binary, 300 bytes, base64)"), binary
            for tool, arguments in (
                ("read_file", {"path": "/etc/passwd"}),
                ("read_file", {"path": "../../etc/passwd"}),
                ("read_file", {"path": "link"}),  # a symlink the sandbox planted: not followed
                ("write_file", {"path": "/etc/evil", "content": "x"}),
                ("write_file", {"path": "link", "content": "x"}),
                ("list_files", {"path": "/"}),
            ):
                failed, said = await call(client, tool, **arguments)
                assert failed, (tool, arguments, said)
                assert "root:" not in said
            failed, said = await call(client, "run_command", command="test -L link && cat link")
            assert not failed and "root:" in said, "inside, the link is the sandbox's own business"

    asyncio.run(body(endpoint))


def test_a_package_installs_from_the_servers_wheelhouse(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            failed, said = await call(client, "install_packages", packages=["nsbox_demo_pkg"])
            assert not failed and "installed nsbox_demo_pkg" in said, said
            failed, said = await call(client, "execute_python", code="import nsbox_demo_pkg\nnsbox_demo_pkg.VALUE")
            assert not failed and "42" in said, said
            failed, said = await call(client, "install_packages", packages=["not_in_the_wheelhouse"])
            assert failed and "not_in_the_wheelhouse" in said, said
            failed, said = await call(client, "install_packages", packages=["--index-url=http://x"])
            assert failed, said

    asyncio.run(body(endpoint))


def test_without_a_wheelhouse_install_packages_is_a_tool_error_naming_the_option() -> None:
    require_run_code()

    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            failed, said = await call(client, "install_packages", packages=["nsbox_demo_pkg"])
            assert failed and "--wheels" in said, said

    drive("stdio", body)


def test_a_timeout_is_a_tool_error_and_the_session_goes_on(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            await call(client, "execute_python", code="kept = 'yes'")
            failed, said = await call(client, "execute_python", code="import time\ntime.sleep(30)", timeout=1)
            assert failed and "timeout" in said, said
            failed, said = await call(client, "run_command", command="sleep 30")  # the server's limit: 3 s
            assert failed and "3 s" in said and endpoint.flag["timeout"] in said, said
            failed, said = await call(client, "run_code", code="while True: pass")
            assert failed and "timeout" in said, said
            failed, said = await call(client, "execute_python", code="print('alive')")
            assert not failed and "alive" in said, said

    asyncio.run(body(endpoint))


def test_asking_for_more_than_the_server_allows_is_a_tool_error_naming_the_limit(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            failed, said = await call(client, "execute_python", code="1", timeout=60)
            assert failed and f"{TIMEOUT} s" in said and endpoint.flag["timeout"] in said, said
            for extra in ({"memory": "8G"}, {"network": True}, {"allowed_hosts": ["example.com"]}):
                failed, said = await call(client, "execute_python", code="1", **extra)
                assert failed and "memory 128 MiB" in said and "no network" in said, (extra, said)
                assert f"memory: {endpoint.flag['memory']}" in said, said
            failed, said = await call(client, "run_code", code="print(1)", timeout=60)
            assert failed and "does not take timeout" in said, said
            hog = "b = bytearray(512 << 20)\nb[::4096] = b'x' * len(b[::4096])\nprint('got it')"
            failed, said = await call(client, "execute_python", code=hog)
            assert failed and "out of memory" in said and "128 MiB" in said, said
            assert endpoint.flag["memory"] in said, said
            failed, said = await call(client, "run_code", code=hog)
            assert failed and "got it" not in said, said
            probe = "import socket\nsocket.create_connection(('198.51.100.1', 80), timeout=3)"
            failed, said = await call(client, "execute_python", code=probe)
            assert failed and "unreachable" in said.lower(), said
            failed, said = await call(client, "execute_python", code="print('after all that')")
            assert not failed and "after all that" in said, said

    asyncio.run(body(endpoint))


def test_a_flood_of_output_is_cut_in_the_reply_and_the_session_goes_on(endpoint: Endpoint) -> None:
    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            failed, said = await call(client, "execute_python", code="print('x' * (30 << 20))")
            assert len(said) < 200_000 and "more characters cut" in said, len(said)
            flood = "yes | head -c 50000000; yes | head -c 5000000 >&2"
            failed, said = await call(client, "run_command", command=flood)
            assert len(said) < 300_000 and said.count("more characters cut") == 2, said[-500:]
            assert failed and said.startswith("output limit"), "16 MiB kept (the sandbox's output limit), 64 K shown"
            failed, said = await call(client, "execute_python", code="print('still here')")
            assert not failed and "still here" in said, said

    asyncio.run(body(endpoint))


def test_twenty_clients_at_once_each_get_their_own_sandbox(endpoint: Endpoint) -> None:
    async def one(endpoint: Endpoint, index: int) -> tuple[str, str]:
        async with endpoint.client() as client:
            for tool, arguments in (
                ("write_file", {"path": f"mine-{index}", "content": str(index)}),
                ("execute_python", {"code": f"me = {index}"}),
            ):
                failed, said = await call(client, tool, **arguments)
                assert not failed, said
            _, listing = await call(client, "list_files")
            _, value = await call(client, "execute_python", code="me")
            return listing, value

    async def body(endpoint: Endpoint) -> None:
        results = await asyncio.gather(*(one(endpoint, i) for i in range(20)))
        for index, (listing, value) in enumerate(results):
            assert f"mine-{index}" in listing and listing.count("mine-") == 1, listing
            assert value.endswith(f"--- value ---\n{index}"), value

    asyncio.run(body(endpoint))


def test_sandboxes_are_gone_within_a_second_of_the_stdio_client_closing() -> None:
    require_run_code()
    seen: list[int] = []
    before = set(sandbox_processes())  # (another test's server may be running)

    async def body(endpoint: Endpoint) -> float:
        async with endpoint.client() as client:
            await call(client, "execute_python", code="x = 1")
            await call(client, "run_code", code="print(1)")  # run_code's own sandbox too
            seen.extend(set(sandbox_processes()) - before)
            assert seen, "the session's and run_code's sandboxes are running"
            closing = time.monotonic()
        return closing

    closing = drive("stdio", body)
    assert wait_until(lambda: not [p for p in seen if os.path.exists(f"/proc/{p}")], 1.0), "left after 1 s"
    assert time.monotonic() - closing < 5  # (the SDK's client waited for the server's exit meanwhile)


def test_a_killed_stdio_server_leaves_no_sandbox() -> None:
    """The server's end without its cleanup (SIGKILL): each supervisor sees its front-end go."""
    require_sandbox()
    server = subprocess.Popen(
        [NSBOX_CLI, "mcp", "--timeout", "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert server.stdin is not None and server.stdout is not None
    requests = (
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        '"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}\n'
        '{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
        '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"execute_python","arguments":{"code":"1"}}}\n'
    )
    server.stdin.write(requests.encode())
    server.stdin.flush()
    replies = [server.stdout.readline(), server.stdout.readline()]
    assert b'"id":2' in replies[1], replies
    below = descendants(server.pid)
    assert below & set(sandbox_processes()), "its session's sandbox runs below it"
    server.kill()
    server.wait()
    server.stdin.close()
    server.stdout.close()
    assert wait_until(lambda: not [p for p in below if os.path.exists(f"/proc/{p}")], 10), "left behind"


def test_nsbox_mcp_refuses_bad_options_and_nsbox_exec_imports_no_service() -> None:
    require_sandbox()
    for argv, expected in (
        (["--timeout", "none"], "timeout"),
        (["--memory", "lots"], "memory"),
        (["--workers", "0"], "workers"),
    ):
        done = subprocess.run([NSBOX_CLI, "mcp", *argv], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 125 and expected in done.stderr, (argv, done.stderr)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run([NSBOX_CLI, "exec", "--", "true"], capture_output=True, text=True, env=env, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "nsbox._cli" in imported, "the import log is read"
    for extra in ("mcp", "fastapi", "uvicorn", "starlette", "ray", "nsbox.mcp", "nsbox.serve", "nsbox.ray"):
        assert extra not in imported, f"nsbox exec imported {extra}"


# --- over HTTP: tokens, sessions' ends, the protocol's eras -------------------------------------
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


def _rpc(endpoint: Endpoint, token: str, body: dict[str, Any], session: str | None = None) -> tuple[int, Any, str]:
    """One JSON-RPC request by hand: (status, the reply's JSON or None, its Mcp-Session-Id)."""
    assert endpoint.server is not None
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    if session:
        headers["Mcp-Session-Id"] = session
    reply = endpoint.server.request("POST", "/mcp", body, token=token, headers=headers)
    data = None
    for line in reply.body.decode().splitlines():  # an SSE stream, or one JSON body
        if line.startswith("data: "):
            data = json.loads(line[6:])
    if data is None and reply.body.strip().startswith(b"{"):
        data = json.loads(reply.body)
    return reply.status, data, reply.headers.get("mcp-session-id", "")


CLIENT = {"name": "tests", "version": "1"}


def _handshake(endpoint: Endpoint, token: str) -> str:
    status, data, session = _rpc(
        endpoint,
        token,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": CLIENT},
        },
    )
    assert status == 200 and session, (status, data)
    _rpc(endpoint, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    return session


def _execute(endpoint: Endpoint, token: str, session: str, code: str) -> tuple[int, dict[str, Any] | None]:
    """(the HTTP status, the tool's result or None)."""
    params = {"name": "execute_python", "arguments": {"code": code}}
    request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
    status, data, _ = _rpc(endpoint, token, request, session)
    return status, None if data is None else data.get("result")


def test_over_http_a_token_is_needed_and_another_tokens_session_id_reaches_nothing() -> None:
    require_sandbox()
    with mcp_server("http", tokens=TOKENS) as endpoint:
        assert endpoint.server is not None
        refused = endpoint.server.request("POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token=None)
        assert refused.status == 401, refused
        wrong = endpoint.server.request("POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token="x" * 20)
        assert wrong.status == 401, wrong
        session = _handshake(endpoint, TOKENS["alice"])
        status, result = _execute(endpoint, TOKENS["alice"], session, "secret = 'alice'")
        assert status == 200 and result is not None and not result["isError"], result
        status, result = _execute(endpoint, TOKENS["bob"], session, "secret")
        assert status == 404 and result is None, "the SDK ties the MCP session to alice's token: bob's names none"
        ended = endpoint.server.request("DELETE", "/mcp", token=TOKENS["bob"], headers={"Mcp-Session-Id": session})
        assert ended.status == 404, "nor can bob end it"
        status, result = _execute(endpoint, TOKENS["alice"], session, "secret")
        assert status == 200 and result is not None and "'alice'" in result["content"][0]["text"], result
        refusals = [e for e in endpoint.server.log() if e.get("path") == "/mcp" and e.get("status") == 401]
        assert len(refusals) == 2, "each refusal is logged"


def test_over_http_a_sessions_sandbox_ends_with_its_delete_and_its_idle_ttl() -> None:
    require_sandbox()

    async def body(endpoint: Endpoint) -> None:
        assert endpoint.server is not None
        # Its supervisor, not every new process: the run_code worker's warm interpreter for its
        # next program may start meanwhile, on a loaded machine (a flake CI met).
        before, budget = session_supervisors(endpoint), held(endpoint)
        async with endpoint.client() as client:
            await call(client, "execute_python", code="x = 1")
            made = session_supervisors(endpoint) - before
            assert len(made) == 1, "a sandbox is made on first use"
            assert held(endpoint) == budget + (256 << 20), "its memory limit is held in the budget"
        # The SDK's client ends its MCP session with a DELETE: the sandbox goes with it (well
        # before the idle TTL of 4 s could have taken it).
        assert wait_until(lambda: not [p for p in made if os.path.exists(f"/proc/{p}")], 2), "the DELETE ended it"
        assert held(endpoint) == budget, "and gave its memory back"
        async with endpoint.client() as client:
            await call(client, "execute_python", code="x = 1")
            await asyncio.sleep(5.5)  # past the idle TTL
            failed, said = await call(client, "execute_python", code="x")
            assert failed and "NameError" in said, said
            assert "note: a new session: the previous one ended (unused for 4 s)" in said, said

    drive("http", body, extra=("--session-idle-ttl", "4"))


def test_a_call_the_client_gave_up_on_runs_to_its_end_and_the_session_goes_on(endpoint: Endpoint) -> None:
    """Through the SDK's cancellation (over HTTP, over stdio): the call runs to its end, the
    session's next call sees what it did, and calls sent at once all run (their order, and
    that none runs beside another, is tests/unit/test_mcp_sessions.py's, with a sandbox that
    has no lock of its own)."""

    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client() as client:
            slow = "import time\ntime.sleep(2)\ndone = 'the cancelled call ran to its end'"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.call_tool("execute_python", {"code": slow}), 0.5)
            failed, said = await call(client, "execute_python", code="done")
            assert not failed and "ran to its end" in said, said
            await call(client, "execute_python", code="seen = []")
            step = "import time\nseen.append(len(seen))\ntime.sleep(0.2)\nseen.append(len(seen))"
            replies = await asyncio.gather(*(call(client, "execute_python", code=step) for _ in range(3)))
            assert not any(failed for failed, _ in replies), replies
            failed, said = await call(client, "execute_python", code="seen")
            assert said.endswith("[0, 1, 2, 3, 4, 5]"), f"one at a time: {said}"

    asyncio.run(body(endpoint))


def test_over_http_a_client_of_the_sessionless_protocol_gets_run_code_and_a_reason() -> None:
    require_sandbox()

    async def body(endpoint: Endpoint) -> None:
        async with endpoint.client(mode="2026-07-28") as client:
            failed, said = await call(client, "run_code", code="print(6 * 7)")
            assert not failed and "42" in said, said
            failed, said = await call(client, "execute_python", code="1")
            assert failed and "initialize handshake" in said, said
        # Such a request skips the SDK's sessions: an Mcp-Session-Id it carries names nothing.
        async with endpoint.client(mode="2026-07-28", headers={"Mcp-Session-Id": "made-up"}) as client:
            failed, said = await call(client, "execute_python", code="1")
            assert failed and "initialize handshake" in said, said

    drive("http", body)
