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

# Exit codes of every process the lab starts (the engine, `lab run`, `lab ...`).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2  # done (finished or stopped) | the run failed | bad input
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
    "stage": (),  # where the level pipeline stands (refused without one)
}

# Event kinds the engine broadcasts.
EVENTS = (
    "metrics",  # data: {key: value} for one step
    "phase",  # data: {"phase": the stage now running ("wake", "sleep", ...), "manual": bool}
    "consolidation",  # data: per-sleep figures
    "curriculum",  # data: queue change
    "checkpoint",  # data: {"path": ..., "step": ...}
    "carry",  # data: carry snapshot
    "alert",  # data: {"level": "warning"|"error", "message": ...}
    "status",  # data: {"status": one of STATUSES}; "compiling": a step waits for torch.compile
    "telemetry",  # data: resource figures
    "eval",  # data: evaluation figures
    "command",  # data: a command as applied, sent after its acknowledgement
    "world",  # data: the run's processes (one, or the ranks of a torchrun launch), sent as the run starts
    "pipeline",  # data: where the level pipeline stands (PIPELINE_POSITION)
)

STATUSES = ("starting", "compiling", "running", "paused", "stopped", "finished", "failed", "diverged")
LIVE_STATUSES = ("starting", "compiling", "running", "paused")  # only a live engine leaves these behind


# ---- event data schemas -----------------------------------------------------------------------
# What each event kind's `data` carries. A type is a JSON type name, a tuple of alternatives, a one-element
# list [T] for a list of T, or an Obj. Checked on messages as built (before encode): a non-finite float is
# a number there, and arrives as null on the wire.

NUMBER, INTEGER, STRING, BOOLEAN, NULL, OBJECT = "number", "integer", "string", "boolean", "null", "object"


@dataclass(frozen=True)
class Obj:
    """A JSON object: keys it must carry, keys it may carry, the type of any other key (None: no others
    allowed), and the values some string keys are limited to."""

    required: dict[str, Any]
    optional: dict[str, Any] = field(default_factory=dict)
    others: Any = None
    choices: dict[str, tuple] = field(default_factory=dict)


FIGURES = Obj({}, others=NUMBER)  # figures by name

# Where the Phase-5 level pipeline stands: the "pipeline" event's data and the `stage` command's result.
PIPELINE_POSITION = Obj({
    "level": INTEGER, "levels": INTEGER,  # the level being worked on, and the last one
    "stage": STRING, "stages": [STRING],  # the running stage, and every stage of a level in order
    "progress": NUMBER,  # share of the running stage's work on this level done, 0 to 1
    "steps": INTEGER,  # the running stage's steps on this level
    "questions": INTEGER, "questions_left": INTEGER,  # the level's question queue
})

EVENT_DATA: dict[str, Obj] = {
    "metrics": FIGURES,  # one step's figures; with a neural memory, wake's carry memory_surprise_rate (share of
    # tokens whose surprise reached model.memory_surprise_threshold), memory_update_rate (share that wrote) and
    # memory_utilisation (||fast weights - initial|| / ||initial||)
    # any stage of the run's schedule; trigger: why a sleep began early ("buffer-full" or "plateau")
    "phase": Obj({"phase": STRING, "manual": BOOLEAN}, optional={"trigger": STRING}),
    "consolidation": Obj({  # one per sleep, sent as it ends
        "sleep": INTEGER,  # sleeps begun so far, this one included
        "mode": STRING,
        "memory_change": NUMBER,  # norm of the neural memory modules' parameters after the sleep minus before
        "weights_change": NUMBER,  # norm of the change of every other parameter (the slow weights) over the sleep
        "importance_change": NUMBER,  # mean importance of the episodic buffer after minus before
        "consolidation_loss": NUMBER,  # the last consolidation step's loss
        "retention_before": NUMBER,  # memory-free cell accuracy on the probe samples, before and after
        "retention_after": NUMBER,
        "pruned": INTEGER,  # buffer samples dropped at the end of the sleep (or by the interval rule since the last)
        "buffer": INTEGER,  # samples left in the buffer
    }, {  # sent since the sleep-wake plan's figures (a run stored before them lacks them)
        "efficiency": NUMBER,  # (retention_after - retention_before) / steps: retention gained per step
        "steps": INTEGER,  # consolidation steps this sleep took
        "eligible": INTEGER,  # buffer samples above sleep.consolidation_threshold as the sleep began
    }, choices={"mode": ("replay", "replay-surprise", "distill", "dream")}),
    "curriculum": Obj({  # the question queue after a graded batch
        "level": INTEGER, "levels": INTEGER, "epoch": INTEGER, "size": INTEGER, "remaining": INTEGER,
        "done": BOOLEAN,
        "by_streak": [INTEGER],  # live questions by correct answers in a row, 0 .. mastery - 1
        "by_hint": Obj({}, others=INTEGER),  # live questions by hint level ("0": none)
        "changes": [STRING],  # what happened to the queue (kinds), besides the report
        "mastered": INTEGER,
        "item": Obj({"id": STRING, "pass": INTEGER, "fail": INTEGER, "hint": INTEGER}),  # the graded batch
    }),
    "checkpoint": Obj({"path": STRING, "step": INTEGER}, {"reason": STRING, "loaded": BOOLEAN}),
    "carry": Obj({  # one slot's carry, and a replay of its next supervision step (T = H_cycles cycles)
        "slot": INTEGER,
        "shapes": Obj({"z_H": [INTEGER], "z_L": [INTEGER], "inputs": [INTEGER]}),
        "prefix": INTEGER, "H_cycles": INTEGER, "L_cycles": INTEGER,
        "steps": INTEGER, "max_steps": INTEGER, "halted": BOOLEAN,
        "q_halt": NUMBER,  # the carried answer's halting logit
        "next_q_halt": NUMBER,  # ... and the replayed step's
        "inputs": [INTEGER], "labels": [INTEGER], "preds": [INTEGER], "next_preds": [INTEGER],
        "z_H_norms": [[NUMBER]], "z_L_norms": [[NUMBER]],  # T + 1 rows (the start, then each cycle) x L positions
        "z_H_change": [NUMBER], "z_L_change": [NUMBER],  # T: mean over positions of |after - before| per cycle
        "z_H_position_change": [[NUMBER]], "z_L_position_change": [[NUMBER]],  # T rows x L positions
    }, {  # with a neural memory: T rows (cycles of the replayed step) x one entry per block
        "memory_change": [[NUMBER]],  # norm of the change of the block's fast weights over the cycle
        "memory_surprise": [[NUMBER]],  # norm of the block's momentum (surprise) state after the cycle
    }),
    "alert": Obj({"level": STRING, "message": STRING}, {
        "fault": STRING, "reason": STRING, "phase": STRING,  # an out-of-memory back-off: what and where
        "old_micro_batch": INTEGER, "new_micro_batch": INTEGER, "micro_batches": INTEGER,
        "old_batch": INTEGER, "new_batch": INTEGER,
    }, choices={"level": ("warning", "error")}),
    "status": Obj({"status": STRING}, choices={"status": STATUSES}),
    "telemetry": Obj({
        "rss_mb": NUMBER,  # the engine and its children
        "cpu_percent": NUMBER,  # the engine and its children; 100 = one core busy
        "cpu_count": INTEGER,  # the cores the engine may use
        "sys_ram_used_mb": NUMBER, "sys_ram_total_mb": NUMBER,
        "gpu_name": (STRING, NULL), "vram_used_mb": (NUMBER, NULL), "vram_total_mb": (NUMBER, NULL),
        "torch_alloc_mb": (NUMBER, NULL), "torch_peak_mb": (NUMBER, NULL),
    }),
    "eval": Obj({"eval_exact": NUMBER, "eval_cell": NUMBER}, others=NUMBER),
    "command": Obj({"id": STRING, "cmd": STRING, "ok": BOOLEAN, "error": (STRING, NULL), "client": STRING},
                   choices={"cmd": tuple(COMMANDS)}),
    "world": Obj({
        "world_size": INTEGER,  # processes training the run (each with its share of the batch); metrics then
        # carry step_time_rank{r} for every rank r
        "lead": INTEGER,  # the rank that records
        "ranks": [Obj({"rank": INTEGER, "host": STRING, "pid": INTEGER})],
    }, {"device": STRING,  # each rank's device, e.g. "cuda:0" on the lead
        "dtype": STRING},  # what train.dtype (auto included) resolved to
        choices={"dtype": ("float32", "bfloat16", "float16")}),
    "pipeline": PIPELINE_POSITION,
}


ENVELOPE = Obj({"type": STRING, "event": STRING, "step": INTEGER, "time": NUMBER})  # and "data"


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    if isinstance(t, list):
        return f"a list of {_type_name(t[0])}"
    if isinstance(t, Obj):
        return OBJECT
    return t


def _json_type(v: Any) -> str:
    if v is None:
        return NULL
    if isinstance(v, bool):
        return BOOLEAN
    if isinstance(v, int):
        return INTEGER
    if isinstance(v, float):
        return NUMBER
    if isinstance(v, str):
        return STRING
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return OBJECT
    return type(v).__name__


def check_value(t: Any, v: Any, where: str) -> list[str]:
    """Problems of value `v` against type `t`, each naming where it was found."""
    if isinstance(t, tuple):
        if any(not check_value(x, v, where) for x in t):
            return []
        return [f"{where}: expected {_type_name(t)}, got {_json_type(v)}"]
    if isinstance(t, list):
        if not isinstance(v, (list, tuple)):
            return [f"{where}: expected {_type_name(t)}, got {_json_type(v)}"]
        for i, x in enumerate(v):
            problems = check_value(t[0], x, f"{where}[{i}]")
            if problems:
                return problems  # the first bad element speaks for the rest
        return []
    if isinstance(t, Obj):
        if not isinstance(v, dict):
            return [f"{where}: expected an object, got {_json_type(v)}"]
        problems = [f"{where}: missing {k!r}" for k in t.required if k not in v]
        for k, x in v.items():
            kt = t.required.get(k, t.optional.get(k, t.others))
            if kt is None:
                problems.append(f"{where}: unexpected key {k!r}")
                continue
            problems += check_value(kt, x, f"{where}.{k}")
            if k in t.choices and x not in t.choices[k]:
                problems.append(f"{where}.{k}: {x!r} is not one of {', '.join(map(str, t.choices[k]))}")
        return problems
    kind = _json_type(v)
    return [] if kind == t or (t == NUMBER and kind == INTEGER) else [f"{where}: expected {t}, got {kind}"]


def check_data(kind: str, data: Any) -> list[str]:
    """Problems of one event kind's data against EVENT_DATA."""
    if kind not in EVENT_DATA:
        return [f"unknown event kind {kind!r}"]
    return check_value(EVENT_DATA[kind], data, kind)


def check_event(message: Any) -> list[str]:
    """Problems found in one event message (envelope and data); [] when it matches the protocol."""
    if not isinstance(message, dict):
        return [f"an event is an object, got {_json_type(message)}"]
    if message.get("type") != "event":
        return [f"not an event message (type {message.get('type')!r})"]
    problems = check_value(ENVELOPE, {k: v for k, v in message.items() if k != "data"}, "message")
    if "data" not in message:
        return problems + ["message: missing 'data'"]
    return problems + check_data(message.get("event"), message["data"])


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
