"""The examples of the seeds (/work/shared/seeds/000_*, 001_*, 002_*) run as written.

Each example is copied verbatim (without the seed text's line numbers); only its import
line is changed to nsbox's (``from ai_computer import SandboxClient`` ->
``from nsbox import SandboxClient``; ``from ai_sandbox.security import ...`` and
``from ai_sandbox.executor import ...`` -> ``from nsbox import ...``). Where an example
uses a ``client`` made in an earlier example, or is a fragment with a top-level ``await``,
the smallest wrapper that makes it run is marked as such. The tests assert on what the
examples print and return.

Also here: ``safe_path_access`` (seed 002's host-side path check) against escapes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import nsbox
from tests.conftest import require_sandbox

# -- seed 000 (security) -----------------------------------------------------------------


def test_seed_000_network_example_constructs_a_client() -> None:
    from nsbox import SandboxClient

    # Example: Configuring network access
    client = SandboxClient(
        allow_network=True,  # Enable network access
        allowed_hosts=["api.example.com"],  # Only allow specific hosts
        network_timeout=30,  # Set network timeout
    )
    assert client is not None


def test_seed_000_network_client_gets_the_egress_proxy() -> None:
    require_sandbox()
    from nsbox import SandboxClient

    client = SandboxClient(allow_network=True, allowed_hosts=["api.example.com"], network_timeout=30)

    async def setup_use_cleanup() -> nsbox.ExecutionResult:
        await client.setup()
        try:
            # Nothing is sent: the proxy is only asked about a host that is not listed.
            code = "import os, urllib.request\ntry:\n    urllib.request.urlopen('http://not-listed.example/')\n"
            code += "except Exception as e:\n    print(e.code, e.read().decode())\nos.environ['HTTPS_PROXY']"
            return await client.execute_code(code)
        finally:
            await client.cleanup()

    result = asyncio.run(setup_use_cleanup())
    assert result.value == "'http://127.0.0.1:3128'", result
    assert result.stdout.startswith("403 nsbox: not-listed.example:80 is not in the allowed hosts"), result


def test_seed_000_resource_limits_example(capsys: pytest.CaptureFixture[str]) -> None:
    require_sandbox()
    from nsbox import SandboxClient

    # Example: Setting resource limits
    client = SandboxClient(
        memory_limit="512M",  # 512MB memory limit
        cpu_limit=1,  # Single CPU core
        execution_timeout=60,  # 60 second timeout
        max_processes=5,  # Limit to 5 processes
    )

    # Wrapper (not in the seed): the client configured above is usable.
    async def use() -> None:
        await client.setup()
        try:
            response = await client.execute_code("print('limited')")
            print(response.data["output"])
        finally:
            await client.cleanup()

    asyncio.run(use())
    assert capsys.readouterr().out == "limited\n\n"


def _seed_000_secure_execution() -> object:
    """The seed's 'Example: Secure Code Execution', verbatim but for the import line."""
    import asyncio  # noqa: F401  # the seed's own import line

    from nsbox import SandboxClient

    async def execute_untrusted_code(code: str):
        client = SandboxClient(
            memory_limit="256M",
            cpu_limit=1,
            allow_network=False,  # Disable network access
            timeout=30,
        )

        await client.setup()

        try:
            # Validate code length
            if len(code) > 10000:
                raise ValueError("Code too long")

            # Execute in sandbox
            response = await client.execute_code(code)

            if not response.success:
                print(f"Execution failed: {response.error}")
                return None

            return response.data["output"]

        except Exception as e:
            print(f"Error: {str(e)}")  # noqa: RUF010  # verbatim
            return None

        finally:
            # Always clean up
            await client.cleanup()

    return execute_untrusted_code


def test_seed_000_secure_execution_returns_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    require_sandbox()
    execute_untrusted_code = _seed_000_secure_execution()
    output = asyncio.run(execute_untrusted_code("print(sum(range(10)))"))  # type: ignore[operator]
    assert output == "45\n"
    assert capsys.readouterr().out == ""


def test_seed_000_secure_execution_reports_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    require_sandbox()
    execute_untrusted_code = _seed_000_secure_execution()
    assert asyncio.run(execute_untrusted_code("x = 1 / 0")) is None  # type: ignore[operator]
    assert capsys.readouterr().out == "Execution failed: ZeroDivisionError: division by zero\n"


def test_seed_000_secure_execution_refuses_long_code(capsys: pytest.CaptureFixture[str]) -> None:
    require_sandbox()
    execute_untrusted_code = _seed_000_secure_execution()
    assert asyncio.run(execute_untrusted_code("#" * 10001)) is None  # type: ignore[operator]
    assert capsys.readouterr().out == "Error: Code too long\n"


# -- seed 001 (understanding sandboxes) ----------------------------------------------------


def test_seed_001_lifecycle_example(capsys: pytest.CaptureFixture[str]) -> None:
    require_sandbox()
    import asyncio

    from nsbox import SandboxClient

    async def main():
        # Create a new sandbox
        client = SandboxClient()
        await client.setup()

        try:
            # Use the sandbox
            response = await client.execute_code("print('Hello from sandbox!')")
            print(response.data["output"])
        finally:
            # Clean up the sandbox
            await client.cleanup()

    asyncio.run(main())
    assert capsys.readouterr().out == "Hello from sandbox!\n\n"


def test_seed_001_resource_limits_example(capsys: pytest.CaptureFixture[str]) -> None:
    require_sandbox()
    from nsbox import SandboxClient

    # Configure sandbox resources
    client = SandboxClient(
        memory_limit="1G",  # 1GB memory limit
        cpu_limit=2,  # 2 CPU cores
        timeout=300,  # 5 minute timeout
    )

    # Wrapper (not in the seed): the client configured above is usable.
    async def use() -> None:
        await client.setup()
        try:
            response = await client.execute_code("import os\nprint(os.getcwd())\n6 * 7")
            print(response.data["output"], response.data["value"])
        finally:
            await client.cleanup()

    asyncio.run(use())
    assert capsys.readouterr().out == "/workspace\n 42\n"


def test_seed_001_file_system_example(capsys: pytest.CaptureFixture[str]) -> None:
    require_sandbox()
    from nsbox import SandboxClient

    # Wrapper (not in the seed): the fragment awaits at top level and uses a client from
    # the lifecycle example; here it runs in a coroutine with such a client.
    async def fragment() -> None:
        client = SandboxClient()
        await client.setup()
        try:
            # Working with files in a sandbox
            code = """
with open('example.txt', 'w') as f:
    f.write('Hello from sandbox!')

with open('example.txt', 'r') as f:
    content = f.read()
    print(f'File contents: {content}')
"""

            response = await client.execute_code(code)
            print(response.data["output"])
            # Not in the seed: the file is in the sandbox's workspace.
            assert await client.read_file("example.txt") == b"Hello from sandbox!"
        finally:
            await client.cleanup()

    asyncio.run(fragment())
    assert capsys.readouterr().out == "File contents: Hello from sandbox!\n\n"


# -- seed 002 (AI sandbox template) ---------------------------------------------------------


def test_seed_002_usage_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_sandbox()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "training.json").write_text('{"rows": [1, 2, 3]}')
    monkeypatch.chdir(tmp_path)

    # The seed's two import lines, kept as two:
    from nsbox import SecurityError, safe_path_access  # noqa: I001
    from nsbox import execute_ai_code

    # Safely access files only within project directory
    try:
        file_path = safe_path_access("data/training.json")
        with open(file_path, "r") as f:  # noqa: UP015  # verbatim
            data = f.read()
    except SecurityError as e:
        print(f"Security violation: {e}")

    # Safely execute AI-generated code with restrictions
    ai_code = """
def analyze_data(input_data):
    return {"summary": "Data analysis complete", "count": len(input_data)}

result = analyze_data(input_data)
"""

    result = execute_ai_code(ai_code, {"input_data": [1, 2, 3]})
    print(result)  # Output: {"summary": "Data analysis complete", "count": 3}

    assert data == '{"rows": [1, 2, 3]}'
    assert file_path == str(tmp_path.resolve() / "data" / "training.json")
    assert result == {"summary": "Data analysis complete", "count": 3}
    assert capsys.readouterr().out == "{'summary': 'Data analysis complete', 'count': 3}\n"


def test_seed_002_usage_example_reports_an_escape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's try/except with a path that leaves the project directory."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    from nsbox import SecurityError, safe_path_access

    data = None
    try:
        file_path = safe_path_access("../../etc/passwd")
        with open(file_path) as f:
            data = f.read()
    except SecurityError as e:
        print(f"Security violation: {e}")

    assert data is None
    assert capsys.readouterr().out.startswith("Security violation: ")


# -- safe_path_access (host-side) ------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory (the base) with data inside and a secret beside it."""
    base = tmp_path / "project"
    (base / "data").mkdir(parents=True)
    (base / "data" / "training.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "project-evil").mkdir()
    (tmp_path / "project-evil" / "f").write_text("evil")
    monkeypatch.chdir(base)
    return base.resolve()


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "../secret.txt",
        "data/../../secret.txt",
        "../project-evil/f",  # shares the base's name as a prefix
        "/etc/passwd",
        "/",
        "..",
    ],
)
def test_safe_path_access_refuses_paths_outside(project: Path, path: str) -> None:
    with pytest.raises(nsbox.SecurityError):
        nsbox.safe_path_access(path)
    with pytest.raises(nsbox.SecurityError):
        nsbox.safe_path_access(path, base=str(project))


def test_safe_path_access_refuses_an_absolute_path_outside_an_explicit_base(project: Path) -> None:
    with pytest.raises(nsbox.SecurityError):
        nsbox.safe_path_access(str(project.parent / "secret.txt"), base=str(project))


def test_safe_path_access_refuses_symlinks_pointing_outside(project: Path) -> None:
    (project / "to_etc").symlink_to("/etc")
    (project / "data" / "passwd").symlink_to("/etc/passwd")
    (project / "data" / "up").symlink_to("../..")
    assert (project / "to_etc" / "passwd").exists(), "premise: the links do lead outside"
    for path in ("to_etc/passwd", "to_etc", "data/passwd", "data/up/secret.txt"):
        with pytest.raises(nsbox.SecurityError):
            nsbox.safe_path_access(path)


def test_safe_path_access_resolves_paths_inside(project: Path) -> None:
    inside = str(project / "data" / "training.json")
    assert nsbox.safe_path_access("data/training.json") == inside
    assert nsbox.safe_path_access("./data/../data/training.json") == inside
    assert nsbox.safe_path_access(inside) == inside, "an absolute path inside"
    (project / "link.json").symlink_to("data/training.json")
    assert nsbox.safe_path_access("link.json") == inside, "a link inside resolves to its target"
    assert nsbox.safe_path_access("data") == str(project / "data")
    elsewhere = project / "data"
    assert nsbox.safe_path_access("training.json", base=str(elsewhere)) == inside
    assert os.path.isabs(nsbox.safe_path_access("."))
