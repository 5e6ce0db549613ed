"""Frames and messages: what comes from inside is checked field by field and bounded."""

from __future__ import annotations

import os
import socket

import pytest

from nsbox import ProtocolError
from nsbox._channel import Channel, socketpair
from nsbox._protocol import HEADER, Exec, Exited, FrameDecoder, Run, Started, encode, parse


def test_a_message_survives_the_wire_split_anywhere() -> None:
    message = Exec(argv=["ls", "-l"], env={"A": "b"}, cwd="/workspace")
    data = encode(message)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder(1 << 16)
        frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [parse(f, Exec) for f in frames] == [message]


def test_oversized_frames_are_refused_before_they_are_read() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(HEADER.pack(101))


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_non_objects_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(100).feed(HEADER.pack(len(body)) + body)


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "exited", "wait_status": "0", "exec_errno": None, "exec_stage": None},  # wrong type
        {"type": "exited", "wait_status": True, "exec_errno": None, "exec_stage": None},  # bool is no int
        {"type": "exited", "wait_status": 0, "exec_errno": None},  # missing field
        {"type": "exited", "wait_status": 0, "exec_errno": None, "exec_stage": None, "x": 1},  # extra field
        {"type": "exec", "argv": ["x"], "env": {}, "cwd": "/"},  # not expected from this side
        {"type": "__import__"},
    ],
)
def test_malformed_messages_are_refused(obj: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        parse(obj, Started, Exited)


def test_optional_fields_take_their_default() -> None:
    run = parse(
        {
            "type": "run",
            "argv": ["x"],
            "env": {},
            "cwd": "/",
            "timeout": None,
            "stdin": "fd",
            "stdout": "fd",
            "stderr": "fd",
        },
        Run,
    )
    assert run.input is None


def test_fds_ride_with_their_frame_and_large_frames_are_split() -> None:
    a, b = socketpair()
    sender, receiver = Channel(a, 1 << 24), Channel(b, 1 << 24)
    r, w = os.pipe()
    big = Exec(argv=["x" * 150_000], env={}, cwd="/")
    sender.send(Started(pid=7), [w])
    sender.send(big)
    message, fds = receiver.recv(Started)
    assert message == Started(pid=7) and len(fds) == 1
    os.write(fds[0], b"via the passed fd")
    assert os.read(r, 100) == b"via the passed fd"
    message2, fds2 = receiver.recv(Exec)
    assert message2 == big and fds2 == []
    for fd in (r, w, *fds):
        os.close(fd)
    sender.close()
    with pytest.raises(EOFError):
        receiver.recv(Exec)
    receiver.close()


def test_a_channel_that_accepts_no_fds_closes_them_and_refuses() -> None:
    a, b = socketpair()
    sender, receiver = Channel(a, 1 << 16), Channel(b, 1 << 16, accept_fds=False)
    r, w = os.pipe()
    sender.send(Started(pid=1), [w])
    os.close(w)
    with pytest.raises(ProtocolError, match="none are accepted"):
        receiver.recv(Started)
    assert os.read(r, 1) == b""  # every copy of the write end is closed: EOF
    os.close(r)
    sender.close()
    receiver.close()


def test_recv_times_out() -> None:
    a, b = socketpair()
    with pytest.raises(TimeoutError):
        Channel(b, 100).recv(Started, timeout=0.05)
    a.close()
    b.close()
    assert isinstance(a, socket.socket)


@pytest.mark.parametrize("body", [b"[" * 60000, b'{"type": "exited", "wait_status": ' + b"9" * 5000 + b"}"])
def test_pathological_json_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(1 << 20).feed(HEADER.pack(len(body)) + body)


def test_integers_beyond_32_bits_are_refused() -> None:
    with pytest.raises(ProtocolError):
        parse({"type": "exited", "wait_status": 1 << 40, "exec_errno": None, "exec_stage": None}, Exited)
