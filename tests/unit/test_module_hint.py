"""The CLI's missing-module hint: which payloads are Python, which stderr ends in the error,
and the tail's pipe passing every byte on as it keeps the last ones."""

from __future__ import annotations

import os
import threading

import pytest

from nsbox._module_hint import TAIL, StderrTail, is_python, missing_module_hint


@pytest.mark.parametrize(
    ("argv", "python"),
    [
        (["python3", "-c", "1"], True),
        (["/usr/bin/python3.11", "x.py"], True),
        (["python"], True),
        (["python3-config"], False),
        (["sh", "-c", "python3"], False),
        ([], False),
    ],
)
def test_which_payloads_are_python(argv: list[str], python: bool) -> None:
    assert is_python(argv) is python


def test_the_hint_names_the_top_package_only_when_stderr_ends_in_the_error() -> None:
    error = b"Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'numpy.linalg'\n"
    hint = missing_module_hint(error)
    assert hint is not None and "no module 'numpy'" in hint and "--install numpy" in hint, hint
    assert "--rootfs python" in hint
    assert missing_module_hint(error + b"but then something else\n") is None, "the error is not the end"
    assert missing_module_hint(b"ModuleNotFoundError: No module named 'x; rm -rf /'\n") is None, "not a module name"
    assert missing_module_hint(b"") is None


def test_the_tail_passes_everything_on_and_keeps_the_end() -> None:
    read, write = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read, 1 << 20):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    tail = StderrTail(write)
    data = bytes(range(256)) * 1000  # 256,000 bytes, past a pipe's buffer
    view = memoryview(data)
    while view:
        view = view[os.write(tail.fd, view[:65536]) :]
    assert tail.end() == data[-TAIL:]
    os.close(write)
    reader.join(10)
    os.close(read)
    assert bytes(received) == data, "every byte, in order"
