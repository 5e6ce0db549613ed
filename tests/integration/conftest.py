"""Fixtures of the session API: one test body runs against NsSandbox and SandboxClient.

``session`` is a started session with the default options; ``make_session(**options)``
opens more (NsSandbox option names: ``memory``, ``timeout``, ``output_limit``, ...; the
SandboxClient adapter maps them to the client's names). Every session a test opened is
closed at its end. Both are parametrised over ``session_kind`` ("NsSandbox",
"SandboxClient"); see ``_session_api.py`` for the synchronous adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_sandbox
from tests.integration._session_api import KINDS, SyncClient, open_session


@pytest.fixture(params=KINDS)
def session_kind(request: pytest.FixtureRequest) -> str:
    require_sandbox()
    kind: str = request.param
    return kind


@pytest.fixture
def make_session(session_kind: str) -> Iterator[Callable[..., Any]]:
    opened: list[Any] = []

    def make(**options: Any) -> Any:
        session = open_session(session_kind, **options)
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
