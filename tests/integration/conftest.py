"""Fixtures of the session API: one test body runs against NsSandbox and SandboxClient.

``session`` is a started session with the default options; ``make_session(**options)``
opens more (NsSandbox option names: ``memory``, ``timeout``, ``output_limit``, ...; the
SandboxClient adapter maps them to the client's names). Every session a test opened is
closed at its end. Both are parametrised over ``session_kind`` ("NsSandbox",
"SandboxClient", "RemoteSandbox": a session of a real ``nsbox serve`` on 127.0.0.1); see
``_session_api.py`` for the synchronous adapter.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests._serve import Served, served
from tests.conftest import require_sandbox
from tests.integration._session_api import KINDS, SyncClient, keep_server_out, open_session


@pytest.fixture(params=KINDS)
def session_kind(request: pytest.FixtureRequest) -> str:
    require_sandbox()
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def remote_server() -> Iterator[Served]:
    """One ``nsbox serve`` for the RemoteSandbox sessions of a module (no pool: every sandbox
    below it but its run_code worker's is a session's). Not longer: the tests of other modules
    check that no sandbox process is left on the machine after them."""
    with served("--pool-size", "0", "--workers", "1", tokens={"tests": secrets.token_hex(16)}) as server:
        server.request("POST", "/run_code", {"code": "pass"})  # its worker's sandbox is up: all of it is the server's
        keep_server_out(server.process.pid)
        yield server
        keep_server_out(0)


@pytest.fixture
def make_session(session_kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    opened: list[Any] = []
    server = request.getfixturevalue("remote_server") if session_kind == "RemoteSandbox" else None

    def make(**options: Any) -> Any:
        session = open_session(session_kind, server, **options)
        opened.append(session)
        return session

    yield make
    for session in reversed(opened):
        try:
            session.close()
        finally:
            if isinstance(session, SyncClient):
                session.shutdown()


@pytest.fixture
def session(make_session: Callable[..., Any]) -> Any:
    return make_session()
