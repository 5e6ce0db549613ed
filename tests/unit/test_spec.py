"""The schema of options: parsing, validation that names the option, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsbox import Limits, Mount, SandboxSpec, Seccomp, SpecError
from nsbox._sandbox import spec_from_options
from nsbox._seccomp import compile_filters
from nsbox._values import GiB, KiB, MiB, parse_size, parse_timeout


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 * MiB), ("1G", GiB), ("1.5G", 3 * GiB // 2), ("64k", 64 * KiB), ("4096", 4096), ("2MiB", 2 * MiB),
     ("10MB", 10 * MiB), (1234, 1234)],
)  # fmt: skip
def test_sizes_parse(text: str | int, size: int) -> None:
    assert parse_size(text, "workspace_size") == size


@pytest.mark.parametrize("text", ["12XB", "lots", "", "-5M", "1.2.3G", True, "M"])
def test_bad_sizes_name_the_option(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_size(text, "workspace_size")
    assert "workspace_size (--workspace-size)" in str(info.value)


@pytest.mark.parametrize("value", [-1, 0, "soon", float("nan"), float("inf"), True])
def test_bad_timeouts_are_refused(value: object) -> None:
    with pytest.raises(SpecError, match="--timeout"):
        parse_timeout(value)  # type: ignore[arg-type]


def test_timeout_accepts_floats_and_none() -> None:
    assert parse_timeout("0.5") == 0.5 and parse_timeout(None) is None


def test_workspace_size_has_a_range() -> None:
    with pytest.raises(SpecError, match="allowed: 1M to 64G"):
        SandboxSpec(workspace_size="512K")


@pytest.mark.parametrize(
    ("text", "target"),
    [("/usr", "/usr"), ("/usr:/opt/usr", "/opt/usr"), ("/usr:/a//b/./c/", "/a/b/c")],
)
def test_mounts_parse(text: str, target: str) -> None:
    assert Mount.parse(text).target == target


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("/usr:../../etc", "absolute"),
        ("/usr:/a/../../etc", "'..'"),
        ("/usr:/", "replace the sandbox's root"),
        ("/usr:/proc/self", "/proc"),
        ("/usr:/dev", "/dev"),
        ("/definitely/not/here", "does not exist"),
        (":/x", "no source"),
    ],
)
def test_bad_mounts_are_refused(text: str, reason: str) -> None:
    with pytest.raises(SpecError, match="--bind/--ro-bind") as info:
        Mount.parse(text)
    assert reason in str(info.value)


def test_duplicate_targets_are_refused() -> None:
    with pytest.raises(SpecError, match="used twice"):
        SandboxSpec(mounts=(Mount.parse("/usr:/x"), Mount.parse("/etc:/x")))


@pytest.mark.parametrize("env", [["NOEQ"], [("1BAD", "x")], [("OK", "nul\0byte")]])
def test_bad_env_is_refused(env: list[object]) -> None:
    with pytest.raises(SpecError, match="--env"):
        SandboxSpec(env=env)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["bad host", "", "x" * 65, "-lead"])
def test_bad_hostnames_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match="--hostname"):
        SandboxSpec(hostname=name)


def test_rootfs_must_be_a_directory() -> None:
    with pytest.raises(SpecError, match="--rootfs"):
        SandboxSpec(rootfs="/etc/passwd")


def test_payload_env_is_minimal_plus_overrides() -> None:
    spec = SandboxSpec(env={"A": "1", "HOME": "/elsewhere"})  # type: ignore[arg-type]
    env = spec.payload_env({"B": "2"})
    assert env["A"] == "1" and env["B"] == "2" and env["HOME"] == "/elsewhere"
    assert set(env) == {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TMPDIR", "A", "B"}


def test_json_and_toml_round_trip() -> None:
    spec = SandboxSpec(
        mounts=(Mount.parse("/usr:/opt/usr"), Mount.parse("/etc:/data", writable=True)),
        workspace_size="64M",  # type: ignore[arg-type]
        hostname="judge",
        env={"KEY": 'va"lue'},  # type: ignore[arg-type]
        limits=Limits(timeout=2.5, output_limit="1M"),  # type: ignore[arg-type]
    )
    assert SandboxSpec.from_json(spec.to_json()) == spec
    assert SandboxSpec.from_toml(spec.to_toml()) == spec


def test_unknown_keys_are_refused_by_name() -> None:
    with pytest.raises(SpecError, match=r"spec\.memroy"):
        SandboxSpec.from_dict({"memroy": "1G"})
    with pytest.raises(SpecError, match=r"limits\.wall"):
        SandboxSpec.from_dict({"limits": {"wall": 1}})


def test_options_become_a_spec() -> None:
    spec = spec_from_options(timeout=3, output_limit="2M", hostname="x")
    assert spec.limits == Limits(timeout=3.0, output_limit=2 * MiB) and spec.hostname == "x"
    with pytest.raises(SpecError, match="unknown option"):
        spec_from_options(memroy="1G")


def test_too_many_binds_are_refused() -> None:
    with pytest.raises(SpecError, match="at most 200"):
        SandboxSpec(mounts=tuple(Mount.parse(f"/usr:/m/{i}") for i in range(201)))


# --- the seccomp policy ------------------------------------------------------------------------
def test_seccomp_defaults_and_kinds() -> None:
    assert SandboxSpec().seccomp == Seccomp()
    assert Seccomp().kind == "default"
    assert Seccomp.parse("unconfined").kind == "unconfined"
    assert Seccomp(allow=("ptrace",)).kind == "custom"
    assert Seccomp(refuse_errno="EACCES").kind == "custom"


def test_a_policy_file_in_toml_or_json(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('allow = ["ptrace"]\nrefuse = ["socket", "uname"]\nunknown_errno = "EPERM"\n')
    policy = Seccomp.parse(str(toml))
    assert policy == Seccomp(allow=("ptrace",), refuse=("socket", "uname"), unknown_errno="EPERM")
    as_json = tmp_path / "p.json"
    as_json.write_text('{"refuse": ["uname", "socket"], "allow": ["ptrace"], "unknown_errno": "EPERM"}')
    assert Seccomp.parse(str(as_json)) == policy
    spec = SandboxSpec(seccomp=str(toml))
    assert SandboxSpec.from_json(spec.to_json()) == spec
    assert SandboxSpec.from_toml(spec.to_toml()) == spec


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('allow = "ptrace"', "not a list of syscall names"),
        ('allow = ["../x"]', "not a list of syscall names"),
        ('allow = ["uname"]\nrefuse = ["uname"]', "both allowed and refused"),
        ('unknown_errno = "ENOPE"', "not an errno name"),
        ("refuse_errno = 0", "not an errno name"),
        ("unconfined = true", "must hold allow, refuse"),
        ('deny = ["x"]', "unknown option"),
        ("allow = [", "not a TOML or JSON policy"),
    ],
)
def test_bad_policy_files_are_refused_by_name(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(content)
    with pytest.raises(SpecError, match="--seccomp") as info:
        SandboxSpec(seccomp=str(path))
    assert reason in str(info.value)


def test_a_missing_policy_file_is_refused() -> None:
    with pytest.raises(SpecError, match="cannot read the policy file"):
        SandboxSpec(seccomp="/no/such/policy.toml")


def test_unconfined_takes_no_other_setting() -> None:
    with pytest.raises(SpecError, match="takes no other setting"):
        Seccomp(unconfined=True, allow=("ptrace",))


def test_names_that_are_no_syscall_are_refused_when_compiled() -> None:
    with pytest.raises(SpecError, match="not syscalls of this machine: nosuchcall"):
        compile_filters(Seccomp(allow=("nosuchcall",)))
    assert compile_filters(Seccomp(unconfined=True)) == ()
    assert len(compile_filters(Seccomp())) == 2


@pytest.mark.parametrize(
    ("value", "pair"),
    [("1234:2345", (1234, 2345)), ((0, 0), (0, 0)), ([7, 8], (7, 8)), ("4294967294:1", (2**32 - 2, 1))],
)
def test_bind_owner_takes_uid_gid_and_round_trips(value: object, pair: tuple[int, int]) -> None:
    spec = SandboxSpec(bind_owner=value)  # type: ignore[arg-type]
    assert spec.bind_owner == pair
    assert SandboxSpec.from_dict(spec.to_dict()).bind_owner == pair


@pytest.mark.parametrize("value", ["me", "1:2:3", "-1:0", "1:", (1,), (True, 0), "4294967295:0", 5])
def test_a_bad_bind_owner_names_the_option(value: object) -> None:
    with pytest.raises(SpecError, match=r"bind_owner \(--bind-owner\)"):
        SandboxSpec(bind_owner=value)  # type: ignore[arg-type]
