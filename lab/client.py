"""Talking to a run: the engine's control socket while it lives, its store always.

- `EngineClient`: connect to `RUN_DIR/engine.sock`, send commands (each a `PendingCommand`
  resolved by the engine's ack, which names the step where it was applied), read events.
- `StoreFollower`: the run's history from `run.db`, and new rows since the last poll; this is
  all a console has when the socket is gone or silent (read-only mode).
- `RunState`: the console's copy of the run, fed by both, with duplicates dropped.
- `AlertRules`: NaN or inf loss, an engine silent for 30 s, VRAM (or RAM) above the run's own limit.

Plain Python (no Textual, no torch): the screens run these in worker threads.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import protocol
from engine.config import TrainConfig
from engine.store import DB_NAME, RunReader
from widgets.curriculum import CurriculumHistory
from widgets.curves import Series

FINAL_STATUSES = ("stopped", "finished", "failed", "diverged")
SILENT_AFTER_S = 30.0


class EngineUnreachable(Exception):
    """No live engine behind the socket; the message says why, in one sentence."""


class ConnectionLost(Exception):
    """The engine closed the connection (it stopped, or it crashed)."""


# ---- commands -------------------------------------------------------------------------------


@dataclass
class PendingCommand:
    """A command sent to the engine; pending until its ack arrives."""

    id: str
    cmd: str
    args: dict
    sent_at: float = field(default_factory=time.monotonic)
    ok: bool | None = None
    step: int | None = None
    error: str | None = None
    result: Any = None
    acked_at: float | None = None
    lost: bool = False  # the connection closed before the ack: applied or not, we cannot tell
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def state(self) -> str:
        if self.lost:
            return "lost"
        if self.ok is None:
            return "pending"
        return "ok" if self.ok else "failed"

    @property
    def latency(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at

    def resolve(self, ack: dict) -> None:
        self.ok = bool(ack.get("ok"))
        self.step = ack.get("step")
        self.error = ack.get("error")
        self.result = ack.get("result")
        self.acked_at = time.monotonic()
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class EngineClient:
    """One connection to a run's control socket.

    `read()` is called by one reader thread; `send()` may be called from any thread.
    """

    def __init__(self, run_dir: str | Path, hello_timeout: float = 3.0):
        self.run_dir = Path(run_dir)
        self.socket_path = self.run_dir / protocol.SOCKET_NAME
        self.hello_timeout = hello_timeout
        self.hello: dict | None = None
        self.pending: dict[str, PendingCommand] = {}
        self.last_message_at = time.monotonic()
        self.bad_lines = 0  # lines that were not JSON objects (skipped)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._inbox: deque[dict] = deque()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._tag = f"c{os.getpid()}-{secrets.token_hex(3)}"  # unique even for two clients made in the same millisecond

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> dict:
        """Open the socket and wait for the engine's hello; raise EngineUnreachable with the reason."""
        if not self.socket_path.exists():
            raise EngineUnreachable("no control socket: the engine is not running.")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.hello_timeout)
        address, fd = protocol.socket_address(str(self.socket_path))
        try:
            sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            raise EngineUnreachable("the control socket refuses connections: the engine is gone.") from None
        except PermissionError:
            sock.close()
            raise EngineUnreachable("the control socket belongs to another user (permission denied).") from None
        except OSError as exc:
            sock.close()
            raise EngineUnreachable(f"the control socket cannot be opened ({exc.strerror or exc}).") from None
        finally:
            if fd is not None:
                os.close(fd)
        self._sock = sock
        try:
            hello = self._await_hello()
        except BaseException:
            self.close()
            raise
        if hello.get("protocol") != protocol.PROTOCOL_VERSION:
            self.close()
            raise EngineUnreachable(
                f"the engine speaks protocol {hello.get('protocol')}; this console speaks {protocol.PROTOCOL_VERSION}."
            )
        self.hello = hello
        return hello

    def _await_hello(self) -> dict:
        deadline = time.monotonic() + self.hello_timeout
        while time.monotonic() < deadline:
            try:
                for msg in self._receive(max(0.01, deadline - time.monotonic())):
                    if msg.get("type") == "hello":
                        return msg
                    self._inbox.append(msg)
            except ConnectionLost:
                raise EngineUnreachable("the engine closed the connection before saying hello.") from None
        raise EngineUnreachable(f"the engine did not answer within {self.hello_timeout:g} s.")

    def send(self, cmd: str, **args: Any) -> PendingCommand:
        """Send one command; the returned entry resolves when the engine acknowledges it."""
        assert cmd in protocol.COMMANDS, cmd
        pending = PendingCommand(id=f"{self._tag}-{next(self._ids)}", cmd=cmd, args=args)
        if self._sock is None:
            raise EngineUnreachable("not connected to the engine.")
        self.pending[pending.id] = pending
        try:
            with self._send_lock:
                self._sock.sendall(protocol.encode(protocol.command(pending.id, cmd, **args)))
        except OSError:
            pending.lost = True
            pending._done.set()
            raise EngineUnreachable("the connection to the engine is broken.") from None
        return pending

    def read(self, timeout: float = 0.25) -> list[dict]:
        """Messages that arrived within `timeout` (acks already resolved); [] when quiet.
        Raises ConnectionLost when the engine closes the connection."""
        if self._inbox:
            out = list(self._inbox)
            self._inbox.clear()
            return out
        return self._receive(timeout)

    def _receive(self, timeout: float) -> list[dict]:
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        sock.settimeout(timeout)
        try:
            chunk = sock.recv(1 << 16)
        except (socket.timeout, BlockingIOError):
            return []
        except OSError as exc:
            self._lost()
            raise ConnectionLost(str(exc)) from None
        if not chunk:
            self._lost()
            raise ConnectionLost("the engine closed the connection")
        self._buf += chunk
        out = []
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        for line in lines:
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                self.bad_lines += 1
                continue
            if not isinstance(msg, dict):
                self.bad_lines += 1
                continue
            if msg.get("type") == "ack" and msg.get("ack") in self.pending:
                self.pending[msg["ack"]].resolve(msg)
            out.append(msg)
        self.last_message_at = time.monotonic()
        return out

    def _lost(self) -> None:
        for p in self.pending.values():
            if p.state == "pending":
                p.lost = True
                p._done.set()
        self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


# ---- the store ------------------------------------------------------------------------------


@dataclass
class StoreUpdate:
    run: dict | None
    metrics: dict[str, tuple[list[int], list[float]]]  # new finite rows per key
    nonfinite: list[tuple[str, int]]  # (key, step) of rows stored as null (NaN or inf)
    events: list[dict]  # socket-shaped event messages
    reset: bool = False  # the run was resumed (a new segment): drop what was read before


class StoreFollower:
    """Reads a run's store from where the last poll stopped. Never writes.

    Metrics are read by row id (new rows only), not per key, so a poll costs what arrived
    since the last one, however long the run.
    """

    EVENT_KINDS = ("phase", "consolidation", "curriculum", "checkpoint", "alert", "status", "eval", "command",
                   "pipeline")

    def __init__(self, run_dir: str | Path):
        self.reader = RunReader(run_dir)  # FileNotFoundError when the run has no store
        self._metric_id = 0
        self._event_id = 0
        self._segment: int | None = None

    def poll(self) -> StoreUpdate:
        run = self.reader.run()
        reset = False
        segment = (run or {}).get("segment")
        if self._segment is not None and segment != self._segment:
            self._metric_id = self._event_id = 0  # a resume marked rows superseded: read again
            reset = True
        self._segment = segment
        metrics: dict[str, tuple[list[int], list[float]]] = {}
        nonfinite: list[tuple[str, int]] = []
        rows = self.reader.metrics_since(self._metric_id, limit=10**9)
        for row_id, key, step, value in rows:
            if value is None:
                nonfinite.append((key, step))
                continue
            steps, values = metrics.setdefault(key, ([], []))
            steps.append(step)
            values.append(value)
        if rows:
            self._metric_id = rows[-1][0]
        events = []
        while True:
            batch = self.reader.events(self._event_id, self.EVENT_KINDS)
            for row in batch:
                events.append(protocol.event(row["kind"], row["step"], row["time"], row["data"]))
            if batch:
                self._event_id = batch[-1]["id"]
            if len(batch) < 10_000:
                break
        return StoreUpdate(run, metrics, nonfinite, events, reset)

    def close(self) -> None:
        self.reader.close()


def has_store(run_dir: str | Path) -> bool:
    return (Path(run_dir) / DB_NAME).is_file()


# ---- the console's copy of a run --------------------------------------------------------------


@dataclass(frozen=True)
class RunLimits:
    """The run's own resource limits, as fractions: `vram` of the card (train.vram_limit, where the engine
    starts backing off), `ram` of system RAM (train.ram_limit, None while the config has none); 1 is off.
    Until the run's config is read, and for a config without the key, the engine's default."""

    vram: float = TrainConfig.vram_limit
    ram: float | None = None


class RunState:
    """Everything the panes draw, fed by store updates and socket messages (main thread only)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.name: str | None = None
        self.status = "unknown"
        self.step = 0
        self.max_steps: int | None = None
        self.limits = RunLimits()
        self._config_read = False
        self.pid: int | None = None  # the engine's, from the run row
        self.series: dict[str, Series] = {}
        self.phases: list[tuple[int, str, bool]] = []  # (step, "wake"|"sleep", manual)
        self.sleeps: list[dict] = []  # one consolidation event's data (+ step) per sleep
        self.curriculum = CurriculumHistory()
        self.telemetry: dict | None = None
        self.carry: dict | None = None
        self.last_checkpoint: dict | None = None
        self.world: dict | None = None  # the run's processes, from its "world" event
        self.pipeline: dict | None = None  # where the level pipeline stands (its latest "pipeline" event)
        self.metrics_version = 0
        self._seen: set[tuple] = set()
        self._seen_order: deque[tuple] = deque()
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)  # (time, step) of recent metrics

    # -- store ---------------------------------------------------------------------------------

    def apply_store(self, update: StoreUpdate) -> list[dict]:
        """Take new store rows; returns the events that were new, oldest first."""
        if update.reset:
            self.series.clear()
            self.phases.clear()
            self.sleeps.clear()
            self.curriculum = CurriculumHistory()
            self.pipeline = None
            self._seen.clear()
            self._seen_order.clear()
            self.step = 0
        new = [e for e in update.events if self.apply(e) is not None]
        if update.run:  # after the events: the run row is the newest word on status and step
            self._apply_run_row(update.run)
        for key, (steps, values) in update.metrics.items():
            if key.startswith("sys/"):
                continue  # telemetry: read below as one sample
            self._extend(key, steps, values)
        sys_keys = {k[4:]: v[1][-1] for k, v in update.metrics.items() if k.startswith("sys/") and v[1]}
        if sys_keys:
            self.telemetry = {**(self.telemetry or {}), **sys_keys}
            for k, (steps, values) in update.metrics.items():
                if k.startswith("sys/"):
                    self._extend(k, steps, values)
        return new

    def _apply_run_row(self, run: dict) -> None:
        self.run_id = run.get("id") or self.run_id
        self.name = run.get("name") or self.name
        if run.get("status"):
            self.status = run["status"]
        self.pid = run.get("pid") or self.pid
        if isinstance(run.get("step"), int):
            self.step = max(self.step, run["step"])
        if not self._config_read and run.get("config"):  # written once, when the run was created
            self._config_read = True
            self.max_steps, self.limits = _from_config(run["config"])

    def _extend(self, key: str, steps: list[int], values: list[float]) -> None:
        s = self.series.setdefault(key, Series())
        last = s.last_step
        if last is not None:
            keep = [i for i, st in enumerate(steps) if st > last]
            if len(keep) != len(steps):
                steps, values = [steps[i] for i in keep], [values[i] for i in keep]
        if steps:
            s.extend(steps, values)
            self.step = max(self.step, steps[-1])
            self.metrics_version += 1

    # -- socket --------------------------------------------------------------------------------

    def apply(self, msg: dict) -> dict | None:
        """Apply one socket-shaped message; returns it when it was new (None for a duplicate)."""
        kind = msg.get("type")
        if kind == "hello":
            self.status = msg.get("status") or self.status
            self.step = max(self.step, msg.get("step") or 0)
            self.run_id = msg.get("run_id") or self.run_id
            return msg
        if kind != "event":
            return msg
        event, step, data = msg.get("event"), msg.get("step") or 0, msg.get("data")
        if event not in ("metrics", "telemetry", "carry"):
            key = (event, step, msg.get("time"))
            if key in self._seen:
                return None
            self._seen.add(key)
            self._seen_order.append(key)
            if len(self._seen_order) > 4096:
                self._seen.discard(self._seen_order.popleft())
        self.step = max(self.step, step)
        if event == "metrics" and isinstance(data, dict):
            self._add_point(step, data)
            self._rate.append((msg.get("time") or time.time(), step))
        elif event == "eval" and isinstance(data, dict):
            self._add_point(step, data)
        elif event == "telemetry" and isinstance(data, dict):
            self.telemetry = data
            self._add_point(step, {f"sys/{k}": v for k, v in data.items()})
        elif event == "status" and isinstance(data, dict) and data.get("status"):
            self.status = data["status"]
        elif event == "phase" and isinstance(data, dict):
            self.phases.append((step, str(data.get("phase", "wake")), bool(data.get("manual"))))
        elif event == "consolidation" and isinstance(data, dict):
            self.sleeps.append({"step": step, **data})
        elif event == "curriculum" and isinstance(data, dict):
            self.curriculum.add(step, data)
        elif event == "carry" and isinstance(data, dict):
            self.carry = data
        elif event == "checkpoint" and isinstance(data, dict):
            self.last_checkpoint = {"step": step, **data}
        elif event == "world" and isinstance(data, dict):
            self.world = data
        elif event == "pipeline" and isinstance(data, dict):
            self.pipeline = data
        return msg

    def _add_point(self, step: int, data: dict) -> None:
        for k, v in data.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            s = self.series.get(k)
            if s is None:
                s = self.series[k] = Series()
            if s.last_step is None or step > s.last_step:
                s.append(step, float(v))
        self.metrics_version += 1

    @property
    def steps_per_second(self) -> float | None:
        """Over the last minute of metrics events (None before two of them)."""
        if len(self._rate) < 2:
            return None
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        for t, s in self._rate:
            if t1 - t <= 60:
                t0, s0 = t, s
                break
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    @property
    def first_stage(self) -> str:
        """The stage a run begins with, before any phase change: a level pipeline's first, else wake."""
        stages = (self.pipeline or {}).get("stages")
        return stages[0] if isinstance(stages, list) and stages else "wake"

    @property
    def world_size(self) -> int:
        size = (self.world or {}).get("world_size")
        return size if isinstance(size, int) and size > 0 else 1

    def rank_step_times(self) -> list[float | None]:
        """Each rank's latest step time in seconds (None where none has arrived), for a run of several."""
        if self.world_size == 1:
            return []
        out = []
        for r in range(self.world_size):
            s = self.series.get(f"step_time_rank{r}")
            out.append(s.last if s is not None else None)
        return out

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


def _from_config(config_toml: str) -> tuple[int | None, RunLimits]:
    """max_steps and the limits from the run's resolved config; whatever cannot be read stays unknown."""
    import tomllib

    try:
        train = tomllib.loads(config_toml).get("train", {})
    except tomllib.TOMLDecodeError:
        return None, RunLimits()

    def fraction(key: str, default):
        v = train.get(key, default)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else default

    steps = train.get("max_steps")
    return (steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
            RunLimits(vram=fraction("vram_limit", RunLimits.vram), ram=fraction("ram_limit", None)))


# ---- alerts -----------------------------------------------------------------------------------


class AlertRules:
    """Turns what the run says into alerts, each raised once until its condition clears."""

    def __init__(self, silent_after: float = SILENT_AFTER_S):
        self.silent_after = silent_after
        self._active: set[str] = set()

    def _edge(self, name: str, on: bool) -> bool:
        """True when `name` just turned on."""
        if on and name not in self._active:
            self._active.add(name)
            return True
        if not on:
            self._active.discard(name)
        return False

    def metrics(self, step: int, data: dict) -> list[str]:
        bad = sorted(k for k, v in data.items() if "loss" in k.lower() and (v is None or (
            isinstance(v, float) and not math.isfinite(v))))
        if self._edge("nonfinite", bool(bad)):
            return [f"non-finite {', '.join(bad)} at step {step:,}."]
        return []

    def nonfinite_rows(self, rows: list[tuple[str, int]]) -> list[str]:
        """The same rule over store rows (NaN and inf are stored as null)."""
        losses = [(k, s) for k, s in rows if "loss" in k.lower()]
        if losses and self._edge("nonfinite", True):
            key, step = losses[0]
            return [f"non-finite {key} at step {step:,}."]
        return []

    def telemetry(self, data: dict, limits: RunLimits) -> list[str]:
        """VRAM or system RAM past the run's own limit (a limit of 1 or more is off)."""
        out = []
        for name, used, total, limit, what, key in (
                ("vram", "vram_used_mb", "vram_total_mb", limits.vram, "VRAM", "of the card"),
                ("ram", "sys_ram_used_mb", "sys_ram_total_mb", limits.ram, "system RAM", "in use")):
            u, t = data.get(used), data.get(total)
            frac = u / t if isinstance(u, (int, float)) and isinstance(t, (int, float)) and t else 0.0
            if self._edge(name, limit is not None and limit < 1.0 and frac > limit):
                out.append(f"{what} at {frac:.0%} {key}, past this run's limit of {limit:.0%} (train.{name}_limit).")
        return out

    def silence(self, silent_for: float, status: str) -> list[str]:
        quiet = silent_for >= self.silent_after and status not in FINAL_STATUSES
        if self._edge("silent", quiet):
            return [f"the engine has been silent for {silent_for:.0f} s (status {status})."]
        return []
