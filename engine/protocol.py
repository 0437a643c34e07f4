"""The engine <-> console protocol: JSON lines over the run's Unix socket.

Client -> engine, one command per line:
    {"id": "c1", "cmd": "pause", "args": {}}
Engine -> client, one message per line, each with a "type":
    {"type": "hello", "protocol": 1, "run_id": ..., "step": ..., "status": ...}
    {"type": "ack", "ack": "c1", "ok": true, "step": 120, "error": null, "result": {...}}
    {"type": "event", "event": "metrics", "step": 120, "time": 1700000000.0, "data": {...}}

This module is plain Python (no torch) so the console can import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024  # a command line longer than this is refused, not buffered
MAX_NESTING = 32  # deeper JSON is refused before parsing: the parser recurses once per level

# Commands a client may send, with the argument names each accepts.
COMMANDS: dict[str, tuple[str, ...]] = {
    "pause": (),
    "resume": (),
    "sleep": (),
    "checkpoint": (),
    "stop": (),
    "inspect": ("slot",),
    "probe": ("input", "reset"),
    "status": (),
}

# Event kinds the engine broadcasts.
EVENTS = (
    "metrics",  # data: {key: value} for one step
    "phase",  # data: {"phase": "wake"|"sleep", "manual": bool}
    "consolidation",  # data: per-sleep figures
    "curriculum",  # data: queue change
    "checkpoint",  # data: {"path": ..., "step": ...}
    "carry",  # data: carry snapshot
    "alert",  # data: {"level": "warning"|"error", "message": ...}
    "status",  # data: {"status": "running"|"paused"|"stopped"|"finished"|"failed"|"diverged"}
    "telemetry",  # data: resource figures
    "eval",  # data: evaluation figures
    "command",  # data: a command as received, before it is applied
)

STATUSES = ("starting", "running", "paused", "stopped", "finished", "failed", "diverged")


class ProtocolError(ValueError):
    """A malformed message; its text is the one-sentence reason sent back to the client."""


@dataclass
class Command:
    id: str
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


def encode(message: dict) -> bytes:
    """One JSON line; non-finite floats become null so every line is strict JSON. The walk that replaces them
    runs only when the fast path refuses a non-finite float (one metrics event a step goes through here)."""
    try:
        text = json.dumps(message, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(message), separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode()


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def nests_deeper_than(data: bytes, limit: int) -> bool:
    """Whether brackets in `data` nest more than `limit` deep outside JSON strings (stops at the first such)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the common case: too few brackets to get that deep, no scan
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif (byte == 0x5D or byte == 0x7D) and depth:  # ] }
            depth -= 1
    return False


def decode_command(line: bytes) -> Command:
    """Parse and validate one command line; raise ProtocolError with the reason, whatever the bytes."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"command line is {len(line)} bytes; the limit is {MAX_LINE_BYTES}.")
    if nests_deeper_than(line, MAX_NESTING):
        raise ProtocolError(f"command nests JSON more than {MAX_NESTING} levels deep; send a flat "
                            '{"id": ..., "cmd": ..., "args": {...}}.')
    try:
        msg = json.loads(line.decode("utf-8"))
    except Exception:  # any parser failure (bad UTF-8, bad JSON, recursion) is the client's mistake
        raise ProtocolError('command is not a JSON object; send {"id": ..., "cmd": ..., "args": {...}}.') from None
    if not isinstance(msg, dict):
        raise ProtocolError('command is not a JSON object; send {"id": ..., "cmd": ..., "args": {...}}.')
    cid = msg.get("id")
    if not isinstance(cid, (str, int)) or isinstance(cid, bool) or len(str(cid)) > 128:
        raise ProtocolError("command needs an 'id' (a string or integer of at most 128 characters).")
    cmd = msg.get("cmd")
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {str(cmd)[:40]!r}; allowed: {', '.join(COMMANDS)}.")
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(f"'args' of {cmd} must be a JSON object.")
    unknown = set(args) - set(COMMANDS[cmd])
    if unknown:
        allowed = ", ".join(COMMANDS[cmd]) or "none"
        raise ProtocolError(f"{cmd} does not take {', '.join(sorted(unknown))}; allowed arguments: {allowed}.")
    return Command(id=str(cid), cmd=cmd, args=args)


def command(cid: str, cmd: str, **args: Any) -> dict:
    return {"id": cid, "cmd": cmd, "args": args}


def ack(cid: str | None, ok: bool, step: int | None, error: str | None = None, result: Any = None) -> dict:
    return {"type": "ack", "ack": cid, "ok": ok, "step": step, "error": error, "result": result}


def event(kind: str, step: int, time: float, data: Any) -> dict:
    assert kind in EVENTS, kind
    return {"type": "event", "event": kind, "step": step, "time": time, "data": data}


def hello(run_id: str, step: int, status: str) -> dict:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "run_id": run_id, "step": step, "status": status}


SOCKET_NAME = "engine.sock"


def socket_address(path: str) -> tuple[str, int | None]:
    """An AF_UNIX address for `path`, and a directory fd to close after use (or None).

    Unix socket paths are limited to ~107 bytes; deep run folders exceed that, so long paths
    go through the folder's file descriptor (`/proc/self/fd/N/engine.sock`, Linux)."""
    import os

    if len(os.fsencode(path)) < 100:
        return path, None
    folder, name = os.path.split(path)
    fd = os.open(folder, os.O_RDONLY)
    return f"/proc/self/fd/{fd}/{name}", fd
