"""`nsbox check` and the remedies of failed set-up steps, for hosts this machine is not.

The sysctls of other distributions (Debian's kernel.unprivileged_userns_clone, Ubuntu's
AppArmor restriction, a zero user.max_user_namespaces) and the subordinate-id files are
read through ``_host._read`` and ``_userns``' file reads; here they are replaced by what
such a host would show, and the checks must name the problem and the command that fixes
it. The real probe of this machine runs in tests/integration/test_rootless.py.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from nsbox import _host, _userns


def _host_with(monkeypatch: pytest.MonkeyPatch, euid: int, sysctls: dict[str, str]) -> None:
    monkeypatch.setattr(_host.os, "geteuid", lambda: euid)
    real = _host._read

    def read(path: str) -> str | None:
        name = path.removeprefix("/proc/sys/").replace("/", ".")
        if path.startswith("/proc/sys/") and name in sysctls:
            return sysctls[name] or None  # "": this kernel has no such sysctl
        return real(path)

    monkeypatch.setattr(_host, "_read", read)


def _check(name: str, checks: list[_host.Check]) -> _host.Check:
    return next(c for c in checks if c.name == name)


@pytest.mark.parametrize(
    ("sysctls", "failing", "fix"),
    [
        ({"kernel.unprivileged_userns_clone": "0"}, "unprivileged user namespaces", "unprivileged_userns_clone=1"),
        ({"user.max_user_namespaces": "0"}, "user namespaces", "user.max_user_namespaces=15000"),
        (
            {"kernel.apparmor_restrict_unprivileged_userns": "1"},
            "AppArmor user namespace restriction",
            "apparmor_restrict_unprivileged_userns=0",
        ),
    ],
)
def test_each_user_namespace_sysctl_is_named_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, sysctls: dict[str, str], failing: str, fix: str
) -> None:
    defaults = {
        "kernel.unprivileged_userns_clone": "1",
        "user.max_user_namespaces": "1000",
        "kernel.apparmor_restrict_unprivileged_userns": "0",
    }
    _host_with(monkeypatch, 1000, {**defaults, **sysctls})
    checks = _host._check_userns()
    bad = [c for c in checks if not c.ok]
    assert [c.name for c in bad] == [failing]
    assert fix in bad[0].remedy and bad[0].remedy.startswith("sysctl -w")
    assert all(c.ok for c in _host._check_userns() if c.name != failing)


def test_sysctls_a_kernel_does_not_have_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    _host_with(
        monkeypatch,
        1000,
        {"kernel.unprivileged_userns_clone": "", "kernel.apparmor_restrict_unprivileged_userns": ""},
    )
    assert [c.name for c in _host._check_userns()] == ["user namespaces"]


def test_a_refused_step_under_apparmor_names_the_restriction(monkeypatch: pytest.MonkeyPatch) -> None:
    _host_with(monkeypatch, 1000, {"kernel.apparmor_restrict_unprivileged_userns": "1"})
    remedy = _host.remedy_for("write the sandbox's id maps", "write", errno.EPERM)
    assert "apparmor_restrict_unprivileged_userns=0" in remedy
    _host_with(monkeypatch, 1000, {"kernel.apparmor_restrict_unprivileged_userns": "0"})
    assert "AppArmor" not in _host.remedy_for("write the sandbox's id maps", "write", errno.EPERM)


def _ids_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, subuid: str, helpers: bool) -> None:
    files = {"/etc/subuid": tmp_path / "subuid", "/etc/subgid": tmp_path / "subgid"}
    for path in files.values():
        path.write_text(subuid)
    real_first_range: Callable[[str, tuple[str, ...]], tuple[int, int] | None] = _userns._first_range
    monkeypatch.setattr(_userns, "_first_range", lambda path, names: real_first_range(str(files[path]), names))
    monkeypatch.setattr(_userns, "_user_names", lambda: ("alice", "1000"))
    monkeypatch.setattr(_userns.shutil, "which", lambda tool: f"/usr/bin/{tool}" if helpers else None)
    monkeypatch.setattr(_host.os, "geteuid", lambda: 1000)


def test_identity_without_newuidmap_says_install_uidmap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _ids_files(monkeypatch, tmp_path, "alice:100000:65536\n", helpers=False)
    check = _host._check_identity()
    assert not check.ok and not check.required
    assert "your own uid" in check.detail and "apt-get install uidmap" in check.remedy


@pytest.mark.parametrize("subuid", ["", "bob:100000:65536\n", "alice:100000:999\n", "alice:x:y\n"])
def test_identity_without_a_usable_range_gives_the_usermod_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, subuid: str
) -> None:
    _ids_files(monkeypatch, tmp_path, subuid, helpers=True)
    check = _host._check_identity()
    assert not check.ok and "usermod --add-subuids" in check.remedy, check


@pytest.mark.parametrize("owner", ["alice", "1000"])
def test_a_range_named_by_login_or_uid_is_used_and_capped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, owner: str
) -> None:
    _ids_files(monkeypatch, tmp_path, f"bob:1:5\n{owner}:200000:100000\n", helpers=True)
    assert _userns.subordinate_ranges() == ((200000, 65535), (200000, 65535))
    check = _host._check_identity()
    assert check.ok and "uid 200999" in check.detail, check


def _extents(id_map: str) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in line.split()) for line in id_map.splitlines()]  # type: ignore[misc]


@pytest.mark.parametrize("caller_payload", [False, True])
def test_a_writable_bind_makes_the_payload_the_caller_with_the_same_host_ids_mapped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caller_payload: bool
) -> None:
    """Subordinate mode, keep-id or not: A maps the user's own id and the same subordinate
    ids (nothing more, nothing less: newuidmap checks each extent), the payload is the
    caller only with a writable bind, A's root is then a subordinate id, and every extent
    of B lies within one of A's (else the kernel refuses B's map)."""
    _ids_files(monkeypatch, tmp_path, "alice:200000:100000\n", helpers=True)
    monkeypatch.setattr(_userns.os, "geteuid", lambda: 4242)
    monkeypatch.setattr(_userns.os, "getegid", lambda: 4343)
    mapping = _userns.mapping_for_host(caller_payload=caller_payload)
    assert mapping.mode == "subordinate"
    for id_map, nested, own in ((mapping.outer_uid_map, mapping.nested_uid_map, 4242),
                                (mapping.outer_gid_map, mapping.nested_gid_map, 4343)):  # fmt: skip
        outer = _extents(id_map)
        hosts = sorted(h + i for _, h, n in outer for i in range(n))
        assert hosts == sorted([own, *range(200000, 265535)]), "the user's own id and the capped range"
        inside = sorted(a + i for a, _, n in outer for i in range(n))
        assert inside == list(range(65536)), "A's ids are 0..65535, each once"
        for first, lower, count in _extents(nested):
            assert first == lower and any(a <= first and first + count <= a + n for a, _, n in outer), (first, count)
        assert _userns._to_host(id_map, 0) == (200000 if caller_payload else own), "A's root"
    expected = (4242, 4343) if caller_payload else (200999, 200999)
    assert mapping.payload_host_ids == expected and mapping.file_api_ids == (1000, 1000)
