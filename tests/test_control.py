import json
import os
import socket
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import control, protocol
from engine.control import ControlServer
from tests.helpers import wait_for


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


# ---- hostile clients: nothing one client sends stops the server or costs unbounded memory ----


def test_deep_nesting_is_a_protocol_error_not_a_recursion_error():
    for line in (b"[" * 5000, b'{"id": 1, "cmd": "pause", "args": ' + b"[" * 3000 + b"]" * 3000 + b"}",
                 b'{"a":' * 2000):
        with pytest.raises(protocol.ProtocolError, match="32 levels"):
            protocol.decode_command(line)
    # brackets inside strings do not count, and nesting up to the limit still parses
    assert protocol.decode_command(b'{"id": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "cmd": "status"}').cmd == "status"
    with pytest.raises(protocol.ProtocolError, match="not take"):
        protocol.decode_command(b'{"id": 1, "cmd": "status", "args": {"x": ' + b"[" * 30 + b"]" * 30 + b"}}")


def _nested(depth_and_kinds):
    depth, kinds, tail = depth_and_kinds
    opening = b"".join(b"[" if k else b'{"k":' for k in (kinds * depth)[:depth])
    return opening + tail


# depths around the limit and far past the parser's recursion limit, under the 64 KB line limit
nested_lines = st.tuples(st.one_of(st.integers(0, 40), st.integers(900, 6000)), st.lists(st.booleans(), min_size=1, max_size=8),
                         st.binary(max_size=50)).map(_nested)


@settings(max_examples=200, deadline=None)
@given(st.one_of(nested_lines, st.binary(max_size=3000)))
def test_decode_command_raises_only_protocol_errors(line):
    try:
        protocol.decode_command(line)
    except protocol.ProtocolError:
        pass


def test_a_deeply_nested_line_leaves_the_server_serving_other_clients(server):
    a, fa = connect(server)
    a.sendall(b"[" * 5000 + b"\n")
    ack = read_until_ack(fa)
    assert ack["ok"] is False and "levels" in ack["error"]
    b, fb = connect(server)  # a second client can still pause
    b.sendall(protocol.encode(protocol.command("p", "pause")))
    assert read_until_ack(fb) == protocol.ack("p", True, 1, None, {"cmd": "pause"})
    a.close()
    b.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(nested_lines, st.binary(max_size=2000)), min_size=1, max_size=4))
def test_fuzzed_lines_on_one_client_never_stop_a_second_clients_pause(server, lines):
    a, _ = connect(server)  # sends and never reads
    a.sendall(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    b, fb = connect(server)
    b.sendall(protocol.encode(protocol.command("p", "pause")))
    ack = read_until_ack(fb)
    assert ack["ack"] == "p" and ack["ok"]
    a.close()
    b.close()


def closed_by_server(f) -> bool:
    try:
        while f.readline():
            pass
    except ConnectionResetError:
        pass  # closed with our line unread
    return True


def test_a_failure_while_serving_one_client_drops_only_that_client(server, monkeypatch):
    a, fa = connect(server)

    def broken(line):
        raise MemoryError("synthetic")

    monkeypatch.setattr(protocol, "decode_command", broken)
    a.sendall(b"anything\n")
    ack = read_until_ack(fa)  # decode_command's contract is ProtocolError; anything else is still answered
    assert ack["ok"] is False and "MemoryError" in ack["error"]
    monkeypatch.undo()

    original_read = server._read

    def read_raises(c):
        if c.name == "client-1":
            raise RuntimeError("synthetic")
        original_read(c)

    monkeypatch.setattr(server, "_read", read_raises)
    a.sendall(b"x\n")
    assert closed_by_server(fa)  # client-1 was cut off ...
    b, fb = connect(server)  # ... and the server still serves others
    b.sendall(protocol.encode(protocol.command("p", "pause")))
    assert read_until_ack(fb)["ok"]
    assert server.clients_dropped == 1
    a.close()
    b.close()


@pytest.fixture
def idle_server(tmp_path):
    """A server whose trainer never takes a command: the queue only fills."""
    srv = ControlServer(tmp_path / protocol.SOCKET_NAME, hello=lambda: protocol.hello("r", 0, "running"))
    srv.start()
    yield srv
    srv.close()


def acks(f, n):
    out = []
    while len(out) < n:
        msg = json.loads(f.readline())
        if msg["type"] == "ack":
            out.append(msg)
    return out


def test_a_client_flooding_commands_gets_error_acks_and_leaves_room_for_others(idle_server):
    a, fa = connect(idle_server)
    n = control.CLIENT_PENDING + 5
    a.sendall(b"".join(protocol.encode(protocol.command(f"a{i}", "status")) for i in range(n)))
    refused = acks(fa, 5)
    assert [r["ack"] for r in refused] == [f"a{i}" for i in range(control.CLIENT_PENDING, n)]
    assert all(not r["ok"] and "wait for their acknowledgements" in r["error"] for r in refused)
    assert idle_server.commands.qsize() == control.CLIENT_PENDING
    b, fb = connect(idle_server)  # another client still gets its commands queued
    b.sendall(protocol.encode(protocol.command("b0", "pause")))
    wait_for(lambda: idle_server.commands.qsize() == control.CLIENT_PENDING + 1)
    a.close()
    b.close()


def test_a_full_command_queue_refuses_with_an_error_ack(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "COMMAND_QUEUE", 8)
    srv = ControlServer(tmp_path / protocol.SOCKET_NAME, hello=lambda: protocol.hello("r", 0, "running"))
    srv.start()
    try:
        clients = [connect(srv) for _ in range(3)]
        for i, (s, _) in enumerate(clients):
            s.sendall(b"".join(protocol.encode(protocol.command(f"c{i}-{j}", "status")) for j in range(4)))
            wait_for(lambda: srv.commands.qsize() == min(8, 4 * (i + 1)))
        refused = acks(clients[2][1], 4)
        assert all(r["error"] == "the engine's command queue is full; wait for acknowledgements." for r in refused)
        first = srv.commands.get_nowait()  # the trainer takes one and acknowledges it: room again
        srv.reply(first.client, protocol.ack(first.command.id, True, 1))
        s, f = clients[2]
        s.sendall(protocol.encode(protocol.command("again", "status")))
        wait_for(lambda: srv.commands.qsize() == 8)
        for s, _ in clients:
            s.close()
    finally:
        srv.close()


def test_error_acks_to_a_client_that_never_reads_stay_bounded(idle_server):
    a, _ = connect(idle_server)  # sends garbage and never reads its error acks
    line = b"x" * 100 + b"\n"
    a.settimeout(10)
    for _ in range(50):
        a.sendall(line * 1000)
    wait_for(lambda: idle_server.dropped_total > 0, timeout=20)
    c = next(iter(idle_server._clients.values()))
    assert len(c.outbox) <= control.OUTBOX_MESSAGES and c.out_bytes <= control.OUTBOX_BYTES
    a.close()


def test_a_client_that_never_reads_is_dropped_and_counted(idle_server, monkeypatch):
    monkeypatch.setattr(control, "STALLED_SECONDS", 0.5)
    reader, fr = connect(idle_server)
    stuck, _ = connect(idle_server)  # never reads
    stop = threading.Event()

    def drain():  # a console that keeps up
        while not stop.is_set():
            if not fr.readline():
                return

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    pad = "x" * 2000
    deadline = time.time() + 20
    while idle_server.n_clients > 1 and time.time() < deadline:
        for i in range(200):
            idle_server.broadcast(protocol.event("metrics", i, 0.0, {"pad": pad}))
        time.sleep(0.01)
    assert idle_server.n_clients == 1 and idle_server.clients_dropped == 1
    name = next(iter(idle_server._clients))
    assert name == "client-1"  # the reader stays
    stop.set()
    reader.close()
    stuck.close()


def test_acks_owed_past_the_hard_limit_drop_the_client(idle_server, monkeypatch):
    monkeypatch.setattr(control, "OUTBOX_MESSAGES", 4)
    monkeypatch.setattr(control, "OUTBOX_HARD_BYTES", 0)  # any ack beyond the soft limit is one too many
    stuck, _ = connect(idle_server)  # never reads
    wait_for(lambda: idle_server.n_clients == 1)
    name = next(iter(idle_server._clients))
    c = idle_server._clients[name]
    with idle_server._lock:
        c.pending = 100
    pad = "x" * 4000
    for i in range(2000):  # fill the socket buffer, then the outbox
        idle_server.reply(name, protocol.ack(str(i), True, i, None, {"pad": pad}))
        if idle_server.n_clients == 0:
            break
    wait_for(lambda: idle_server.n_clients == 0, timeout=10)
    assert idle_server.clients_dropped == 1
    stuck.close()
