"""The engine's control server: a Unix socket in the run folder (mode 0600).

One thread multiplexes every client with `selectors`. Commands are validated here and queued
for the trainer, which applies them only at step boundaries and acknowledges each with the
step where it took effect. Events are sent to every client from the trainer thread with a
non-blocking send; what a client cannot take at once waits in its bounded outbox for the
server thread, and a slow client loses messages (counted), it never slows the engine.

Nothing one client sends can cost unbounded memory or stop the server: the command queue and
each client's share of it are capped (a command over the cap gets an error ack), error acks
wait in the same bounded outbox as events, a client that stops reading is dropped (counted)
once its outbox stays full for STALLED_SECONDS, and any exception while serving one client
drops that client, never the server thread.

We use selectors rather than asyncio because the trainer is synchronous: one small thread
with explicit buffers is easier to reason about than an event loop living beside it.
"""

from __future__ import annotations

import itertools
import os
import queue
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine import protocol
from engine.protocol import Command, ProtocolError

OUTBOX_MESSAGES = 4096
OUTBOX_BYTES = 16 * 1024 * 1024
# acks a client is owed may pass OUTBOX_BYTES by this much; past it the client is dropped
OUTBOX_HARD_BYTES = OUTBOX_BYTES + 4 * 1024 * 1024
STALLED_SECONDS = 10.0  # a client whose outbox stays full this long without reading is dropped
MAX_CLIENTS = 64
COMMAND_QUEUE = 256  # commands waiting for the trainer, all clients together
CLIENT_PENDING = 32  # one client's commands waiting for their acks: one client cannot fill the queue


@dataclass
class Received:
    client: str
    command: Command
    at: float


@dataclass
class _Client:
    name: str
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    outbox: deque = field(default_factory=deque)
    out_bytes: int = 0
    dropped: int = 0
    discarding: bool = False  # inside an over-long line: skip until its newline
    read_closed: bool = False
    pending: int = 0  # commands queued but not yet acknowledged
    registered: bool = False
    full_since: float | None = None  # monotonic time the outbox first refused a message, until it drains
    doomed: bool = False  # over its hard outbox limit: the server thread drops it


class ControlServer:
    def __init__(self, sock_path: str | Path, hello: Callable[[], dict]):
        self.path = str(sock_path)
        self.hello = hello
        self.commands: "queue.Queue[Received]" = queue.Queue(maxsize=COMMAND_QUEUE)
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self.dropped_total = 0  # messages a client could not take in time
        self.clients_dropped = 0  # clients cut off for not reading or for an error while serving them
        self._listener = self._bind()
        self._thread = threading.Thread(target=self._serve, name="control-server", daemon=True)

    def _bind(self) -> socket.socket:
        if os.path.exists(self.path):
            os.unlink(self.path)  # a socket left by a killed engine
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr, fd = protocol.socket_address(self.path)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            sock.bind(addr)
        finally:
            os.umask(old)
            if fd is not None:
                os.close(fd)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wakeup()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for c in list(self._clients.values()):
            self._drop_client(c)
        self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    @property
    def n_clients(self) -> int:
        return len(self._clients)

    # ---- called from the trainer thread -------------------------------------------------------

    def broadcast(self, message: dict) -> None:
        if not self._clients:
            return
        data = protocol.encode(message)
        with self._lock:
            wake = [self._deliver(c, data) for c in self._clients.values()]
        if any(wake):
            self._wakeup()

    def reply(self, client: str, message: dict, settles_command: bool = True) -> None:
        data = protocol.encode(message)
        with self._lock:
            c = self._clients.get(client)
            if c is None:
                return
            if settles_command:
                c.pending = max(0, c.pending - 1)
            wake = self._deliver(c, data, force=True)
        if wake:
            self._wakeup()

    # ---- internals ----------------------------------------------------------------------------

    def _deliver(self, c: _Client, data: bytes, force: bool = False) -> bool:
        """Send now when nothing waits before it, else queue it; True when the server thread has
        queued data to write. Sending at once (a non-blocking send) is the usual case and spares
        the trainer a hand-off of the interpreter lock to the server thread at every step."""
        if c.doomed:
            return True
        if not c.outbox:
            try:
                sent = c.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # a client gone: queued, so the server thread meets the error and drops it
            if sent == len(data):
                return False
            if sent:
                data, force = data[sent:], True  # the rest of a line already begun must follow
        self._enqueue(c, data, force)
        return bool(c.outbox) or c.doomed

    def _enqueue(self, c: _Client, data: bytes, force: bool = False) -> None:
        """Queue `data` unless the outbox is full; `force` (acks owed, the rest of a line begun) may
        pass the soft limits up to OUTBOX_HARD_BYTES, past which the client is doomed."""
        if len(c.outbox) >= OUTBOX_MESSAGES or c.out_bytes + len(data) > OUTBOX_BYTES:
            if c.full_since is None:
                c.full_since = time.monotonic()
            if not force or c.out_bytes + len(data) > OUTBOX_HARD_BYTES:
                c.dropped += 1
                self.dropped_total += 1
                c.doomed = c.doomed or force
                return
        c.outbox.append(data)
        c.out_bytes += len(data)

    def _wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the wake pipe is already full: the loop will wake anyway

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                for c in self._clients.values():
                    want = selectors.EVENT_WRITE if c.outbox else 0
                    if not c.read_closed:
                        want |= selectors.EVENT_READ
                    self._modify(c, want)
            for key, mask in self._sel.select(timeout=0.5):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    c = self._clients.get(key.data)
                    if c is None:
                        continue
                    try:
                        if mask & selectors.EVENT_READ:
                            self._read(c)
                        if mask & selectors.EVENT_WRITE and c.name in self._clients:
                            self._write(c)
                    except Exception:  # whatever one client caused costs that client, never the server
                        self._cut_off(c)
            self._reap()

    def _modify(self, c: _Client, events: int) -> None:
        # A half-closed socket is always readable (EOF), so a client that wants nothing is
        # unregistered rather than polled.
        try:
            if events == 0:
                if c.registered:
                    self._sel.unregister(c.sock)
                    c.registered = False
            elif c.registered:
                self._sel.modify(c.sock, events, c.name)
            else:
                self._sel.register(c.sock, events, c.name)
                c.registered = True
        except (KeyError, ValueError, OSError):
            pass

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        if len(self._clients) >= MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        c = _Client(name=f"client-{next(self._ids)}", sock=sock)
        try:
            hello = protocol.encode(self.hello())
        except Exception:  # a hello that cannot be built refuses this client, the server goes on
            sock.close()
            return
        with self._lock:
            self._clients[c.name] = c
            self._enqueue(c, hello, force=True)
            self._sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c.name)
            c.registered = True

    def _read(self, c: _Client) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client(c)
            return
        if not data:
            c.read_closed = True  # half-closed: still owed its acknowledgements
            return
        c.inbuf += data
        while True:
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                if len(c.inbuf) > protocol.MAX_LINE_BYTES:
                    if not c.discarding:
                        self._error(c, None, f"command line exceeds {protocol.MAX_LINE_BYTES} bytes; it was discarded.")
                    c.discarding = True
                    c.inbuf.clear()
                return
            line = bytes(c.inbuf[:nl]).strip()
            del c.inbuf[: nl + 1]
            if c.discarding:
                c.discarding = False  # this newline ends the over-long line
                continue
            if not line:
                continue
            self._handle_line(c, line)

    def _handle_line(self, c: _Client, line: bytes) -> None:
        try:
            cmd = protocol.decode_command(line)
        except ProtocolError as exc:
            self._error(c, None, str(exc))
            return
        except Exception as exc:  # decode_command's contract is ProtocolError; a bug costs only this line
            self._error(c, None, f"the engine could not read this command ({exc.__class__.__name__}); it was discarded.")
            return
        with self._lock:
            if c.pending >= CLIENT_PENDING:
                full = (f"this connection already has {CLIENT_PENDING} commands waiting; "
                        "wait for their acknowledgements before sending more.")
            else:
                full = None
                c.pending += 1  # before the put: the trainer may acknowledge it at once
        if full is None:
            try:
                self.commands.put_nowait(Received(client=c.name, command=cmd, at=time.time()))
                return
            except queue.Full:
                with self._lock:
                    c.pending -= 1
                full = "the engine's command queue is full; wait for acknowledgements."
        self._error(c, cmd.id, full)

    def _error(self, c: _Client, cid: str | None, message: str) -> None:
        """An error ack, through the bounded outbox like any event: a client that floods
        errors without reading loses them (counted) instead of growing the outbox."""
        with self._lock:
            self._enqueue(c, protocol.encode(protocol.ack(cid, False, None, message)))

    def _write(self, c: _Client) -> None:
        # under the lock, so a send from the trainer thread never slips between queued lines
        with self._lock:
            while c.outbox:
                data = c.outbox[0]
                try:
                    sent = c.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    break
                if sent:
                    c.full_since = None  # it reads: the outbox is no longer stalled
                if sent < len(data):
                    c.outbox[0] = data[sent:]
                    c.out_bytes -= sent
                    return
                c.outbox.popleft()
                c.out_bytes -= len(data)
            else:
                return
        self._drop_client(c)  # the send failed: the client is gone

    def _reap(self) -> None:
        now = time.monotonic()
        for c in list(self._clients.values()):
            if c.doomed or (c.full_since is not None and now - c.full_since > STALLED_SECONDS):
                self._cut_off(c)
            elif c.read_closed and not c.outbox and c.pending == 0:
                self._drop_client(c)

    def _cut_off(self, c: _Client) -> None:
        """Drop a client that misbehaved (stopped reading, or made serving it fail), counted."""
        self.clients_dropped += 1
        self._drop_client(c)

    def _drop_client(self, c: _Client) -> None:
        with self._lock:
            self._clients.pop(c.name, None)
        if c.registered:
            try:
                self._sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.registered = False
        try:
            c.sock.close()
        except OSError:
            pass
