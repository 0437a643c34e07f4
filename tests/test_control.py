import json
import os
import socket
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import protocol
from engine.control import ControlServer


@pytest.fixture
def server(tmp_path):
    srv = ControlServer(tmp_path / protocol.SOCKET_NAME, hello=lambda: protocol.hello("r", 0, "running"))
    srv.start()
    stop = threading.Event()

    def trainer():  # acknowledges every command, like the trainer at a step boundary
        step = 0
        while not stop.is_set():
            try:
                rec = srv.commands.get(timeout=0.05)
            except Exception:
                continue
            step += 1
            srv.reply(rec.client, protocol.ack(rec.command.id, True, step, None, {"cmd": rec.command.cmd}))

    t = threading.Thread(target=trainer, daemon=True)
    t.start()
    yield srv
    stop.set()
    t.join()
    srv.close()


def connect(srv):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.path)
    f = s.makefile("rb")
    hello = json.loads(f.readline())
    assert hello["type"] == "hello" and hello["protocol"] == protocol.PROTOCOL_VERSION
    return s, f


def read_until_ack(f):
    while True:
        msg = json.loads(f.readline())
        if msg["type"] == "ack":
            return msg


def test_socket_is_private(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


def test_command_is_acknowledged_with_its_step(server):
    s, f = connect(server)
    s.sendall(protocol.encode(protocol.command("a1", "pause")))
    ack = read_until_ack(f)
    assert ack["ack"] == "a1" and ack["ok"] and ack["step"] == 1 and ack["result"] == {"cmd": "pause"}
    s.close()


@pytest.mark.parametrize("line,needle", [
    (b"not json\n", "JSON"),
    (b'{"id": 1, "cmd": "explode"}\n', "unknown command"),
    (b'{"cmd": "pause"}\n', "'id'"),
    (b'{"id": "x", "cmd": "inspect", "args": {"bogus": 1}}\n', "bogus"),
    (b"\xff\xfe\n", "JSON"),
])
def test_bad_lines_get_error_replies(server, line, needle):
    s, f = connect(server)
    s.sendall(line)
    ack = read_until_ack(f)
    assert ack["ok"] is False and needle in ack["error"]
    s.sendall(protocol.encode(protocol.command("ok", "status")))  # the connection still works
    assert read_until_ack(f)["ok"]
    s.close()


def test_ten_megabyte_line_is_refused_without_buffering_it(server):
    s, f = connect(server)
    s.sendall(b"x" * (10 * 1024 * 1024) + b"\n")
    ack = read_until_ack(f)
    assert not ack["ok"] and "exceeds" in ack["error"]
    s.sendall(protocol.encode(protocol.command("after", "status")))
    assert read_until_ack(f)["ack"] == "after"
    s.close()


def test_half_closed_client_still_gets_its_ack(server):
    s, f = connect(server)
    s.sendall(protocol.encode(protocol.command("h1", "checkpoint")))
    s.shutdown(socket.SHUT_WR)
    assert read_until_ack(f)["ack"] == "h1"
    s.close()


def test_slow_client_never_blocks_broadcast(server):
    s, _ = connect(server)  # never reads
    t0 = time.perf_counter()
    for i in range(20000):
        server.broadcast(protocol.event("metrics", i, 0.0, {"loss": 1.0, "pad": "x" * 500}))
    assert time.perf_counter() - t0 < 5.0
    time.sleep(0.2)
    assert server.dropped_total > 0
    s.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_random_bytes_never_break_the_server(server, data):
    s, f = connect(server)
    s.sendall(data + b"\n")
    s.sendall(protocol.encode(protocol.command("probe-after", "status")))
    while True:
        msg = json.loads(f.readline())
        if msg["type"] == "ack" and msg["ack"] == "probe-after":
            break
    s.close()


def test_encode_writes_strict_json_lines_with_null_for_non_finite_floats():
    import json

    line = protocol.encode({"kind": "metrics", "data": {"loss": float("nan"), "lr": 1e-3,
                                                         "hist": [1.0, float("inf"), (2, float("-inf"))]}})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"kind": "metrics", "data": {"loss": None, "lr": 1e-3, "hist": [1.0, None, [2, None]]}}
    assert b"NaN" not in line and b"Infinity" not in line
    assert json.loads(protocol.encode({"a": [1, 2.5, "x"]})) == {"a": [1, 2.5, "x"]}
