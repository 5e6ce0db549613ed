"""Frames and messages: what comes from inside is checked field by field and bounded."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from nsbox import Limits, ProtocolError
from nsbox._channel import Channel, socketpair
from nsbox._display import MAX_ITEMS, MAX_NOTE, MAX_NOTES
from nsbox._guest.kernel import MAX_REPR
from nsbox._guest.kernel import MAX_VALUE_DEPTH as GUEST_VALUE_DEPTH
from nsbox._kernel import DISPLAY_ROOM, REPLY_ROOM, display_limit, result_limit
from nsbox._protocol import (
    HEADER,
    MAX_FRAME_SESSION,
    VALUE_DEPTH,
    CellDone,
    Done,
    Exec,
    Exited,
    FrameDecoder,
    Run,
    Started,
    encode,
    parse,
)
from nsbox._spec import MAX_OUTPUT_LIMIT


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


def test_integers_beyond_64_bits_are_refused_and_byte_counts_past_2_gib_pass() -> None:
    with pytest.raises(ProtocolError):
        parse({"type": "exited", "wait_status": 1 << 64, "exec_errno": None, "exec_stage": None}, Exited)
    exited = parse({"type": "exited", "wait_status": 3 << 30, "exec_errno": None, "exec_stage": None}, Exited)
    assert exited.wait_status == 3 << 30  # a memory limit or peak of 3 GiB crosses the wire


# --- bytes fields, nesting, the caps' arithmetic (issue 17, sections 5 and 6) -------------
def test_bytes_fields_cross_as_they_are_in_the_binary_section() -> None:
    """0xff and 0x01 bytes cost one byte each on the wire (JSON text would make 6 of each)."""
    out, err = b"\xff" * 100_000, b"\x01" * 50_000
    done = Done({"status": "ok"}, out, err)
    data = encode(done)
    assert len(data) < len(out) + len(err) + 200, len(data)
    for cut in (0, 3, 40, len(data) // 2, len(data) - 1, len(data)):
        decoder = FrameDecoder(1 << 20)
        frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [parse(f, Done) for f in frames] == [done]
    assert parse(FrameDecoder(1 << 20).feed(encode(Done({}, None, b"")))[0], Done) == Done({}, None, b"")


@pytest.mark.parametrize(
    "tail",
    [
        b"",  # the lengths promise bytes that are not there
        b"\0" + b"x" * 7,  # more bytes than the fields take
        b"\0" + b"x" * 5,  # fewer
    ],
)
def test_a_binary_section_must_fill_its_fields_exactly(tail: bytes) -> None:
    body = b'{"type":"done","result":{},"stdout":3,"stderr":3}' + tail
    frames = FrameDecoder(1 << 20).feed(HEADER.pack(len(body)) + body)
    with pytest.raises(ProtocolError):
        parse(frames[0], Done)


def test_bytes_fields_in_json_are_lengths_not_text() -> None:
    with pytest.raises(ProtocolError):
        parse({"type": "done", "result": {}, "stdout": "aGVsbG8="}, Done)
    with pytest.raises(ProtocolError):
        parse({"type": "done", "result": {}, "stdout": -1}, Done)


def test_frames_nested_deeper_than_the_limit_are_a_protocol_error() -> None:
    """A forged reply 600 deep once ended in 'internal error in the supervisor: RecursionError'."""
    deep: object = 1
    for _ in range(600):
        deep = [deep]
    body = json.dumps({"type": "cell_done", "number": 1, "value": None, "error": None, "result": deep}).encode()
    with pytest.raises(ProtocolError, match="deeper"):
        FrameDecoder(1 << 20).feed(HEADER.pack(len(body)) + body)
    ok: object = 1
    for _ in range(VALUE_DEPTH):
        ok = [ok]
    frame = encode(CellDone(1, None, None, True, ok))
    assert parse(FrameDecoder(1 << 20).feed(frame)[0], CellDone).result == ok


def test_every_allowed_output_limit_fits_the_frame_cap() -> None:
    """Two streams of the largest output limit, a result as large and the reply's text fit one
    frame to the front-end; the kernel's replies fit the cap of its wire."""
    reply_text = 3 * MAX_REPR * 12  # value, error message, traceback: 12 bytes a character at worst
    assert reply_text <= REPLY_ROOM
    notes = MAX_ITEMS * (MAX_NOTES * MAX_NOTE * 12 + 200)  # display items' errors, and the JSON around each
    assert notes <= DISPLAY_ROOM
    shown = display_limit(MAX_OUTPUT_LIMIT) + DISPLAY_ROOM
    largest = 2 * MAX_OUTPUT_LIMIT + result_limit(MAX_OUTPUT_LIMIT) + shown + REPLY_ROOM
    assert largest <= MAX_FRAME_SESSION, (largest, MAX_FRAME_SESSION)
    assert Limits(output_limit="64M").output_limit == MAX_OUTPUT_LIMIT
    with pytest.raises(ValueError):
        Limits(output_limit=MAX_OUTPUT_LIMIT + 1)
    assert GUEST_VALUE_DEPTH == VALUE_DEPTH, "the guest refuses results the frames could not carry"
    assert len(encode(Done({}, b"\x01" * (1 << 20), None))) < (1 << 20) + 100


def test_a_queued_frame_goes_out_as_the_peer_reads_and_never_blocks() -> None:
    """Channel.queue/flush: a peer that does not read costs the sender nothing but waiting."""
    a, b = socketpair()
    sender, receiver = Channel(a, 1 << 24), Channel(b, 1 << 24)
    big = Exec(argv=["x" * (4 << 20)], env={}, cwd="/")
    sender.queue(big)
    assert not sender.flush(), "4 MiB cannot fit the socket's buffer at once"
    assert sender.pending
    with pytest.raises(TimeoutError):
        sender.send(Started(pid=1), deadline=time.monotonic() + 0.1)
    got: list[Exec] = []
    while not got:
        sender.flush()
        packet = receiver.read_packet()
        if packet is not None:
            got.append(parse(packet[0], Exec))
    assert got == [big]
    sender.close()
    receiver.close()
