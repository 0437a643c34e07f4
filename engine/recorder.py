"""Everything a run tells the world, in one place: rows in the store, events on the control socket, lines on
stdout, telemetry samples. A distributed run's non-zero ranks make theirs with `enabled=False` and stay quiet.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from engine import protocol
from engine.control import ControlServer
from engine.store import RunStore
from engine.telemetry import Telemetry


class Recorder:
    def __init__(self, run_dir: Path, run_name: str, config_toml: str, log, telemetry: Telemetry,
                 output: str = "human", emit: Callable[[dict], None] | None = None,
                 hello: Callable[[], dict] | None = None, enabled: bool = True, max_steps: int | None = None):
        self.log, self.telemetry, self.output, self.extra_emit = log, telemetry, output, emit
        self.enabled, self.max_steps = enabled, max_steps
        self.store = self.server = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.store = RunStore(run_dir, flush_seconds=log.flush_seconds)
            if self.store.run_row() is None:  # a folder prepared by hand rather than by `lab run`
                self.store.create_run(run_dir.name, run_name, config_toml)
            config_file = run_dir / "config.toml"
            if not config_file.exists():  # so `lab eval`, `lab run --resume` and the console can read it
                tmp = config_file.with_suffix(".toml.tmp")
                tmp.write_text(config_toml, encoding="utf-8")
                tmp.replace(config_file)
            self.server = ControlServer(run_dir / protocol.SOCKET_NAME, hello=hello)
        self.step = 0  # the run's step, kept current by the trainer
        self.last_metrics: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.step_times: deque[float] = deque(maxlen=50)  # steps/s over the last 50 steps
        self._t0 = time.time()
        self._last_print = self._last_telemetry = 0.0

    # ---- events ----

    def event(self, kind: str, data: Any, store: bool = True) -> None:
        if not self.enabled:
            return
        now = time.time()
        message = protocol.event(kind, self.step, now, data)
        if store:
            self.store.log_event(self.step, kind, data, at=now)
        self.server.broadcast(message)
        if self.extra_emit:
            self.extra_emit(message)

    def alert(self, level: str, message: str, **fields) -> None:
        self.event("alert", {"level": level, **fields, "message": message})
        if self.output == "human" and self.enabled:
            print(f"[{level}] {message}", file=sys.stderr, flush=True)
        elif self.output == "json" and self.enabled:
            print(json.dumps({"event": "alert", "step": self.step, "level": level, "message": message}), flush=True)

    def say(self, message: str) -> None:
        """A line for the person watching stdout (human output only; the figures carry it for everyone else)."""
        if self.enabled and self.output == "human":
            print(message, flush=True)

    def status(self, status: str) -> None:
        if self.enabled:
            self.store.update_run(status=status, step=self.step)
        self.event("status", {"status": status})

    # ---- figures ----

    def metrics(self, metrics: dict[str, float], status: str) -> None:
        """One step's figures: a store row, a socket event, a telemetry sample when due, a line when due."""
        self.last_metrics = metrics
        if "step_time" in metrics:
            self.step_times.append(metrics["step_time"])
        if self.enabled:
            self.store.log_metrics(self.step, metrics, at=time.time())
            self.event("metrics", metrics, store=False)
            self.store.update_run(step=self.step)
            error = self.store.take_error()
            if error:  # a store that cannot write must not fail silently
                self.alert("error", error)
        self.tick()
        self.print_line(status)

    def evaluation(self, figures: dict[str, float]) -> None:
        self.last_eval = figures
        if self.enabled:
            self.store.log_metrics(self.step, figures)
        self.event("eval", figures)

    def tick(self) -> None:
        """A telemetry sample, at most every log.telemetry_seconds."""
        now = time.time()
        if not self.enabled or now - self._last_telemetry < self.log.telemetry_seconds:
            return
        self._last_telemetry = now
        sample = self.telemetry.sample()
        numeric = {k: v for k, v in sample.items() if isinstance(v, (int, float)) and v is not None}
        self.store.log_metrics(self.step, {f"sys/{k}": v for k, v in numeric.items()}, at=now)
        self.event("telemetry", sample, store=False)

    def print_line(self, status: str, force: bool = False) -> None:
        now = time.time()
        if not self.enabled or self.output == "quiet" or (not force and now - self._last_print < self.log.print_seconds):
            return
        self._last_print = now
        m, ev = self.last_metrics, self.last_eval
        total = sum(self.step_times)
        sps = len(self.step_times) / total if total > 0 else 0.0
        if self.output == "json":
            print(json.dumps({"step": self.step, "status": status, "steps_per_s": sps,
                              **{k: v for k, v in m.items() if isinstance(v, float) and math.isfinite(v)}, **ev}),
                  flush=True)
            return
        parts = [f"step {self.step:>6}" + (f"/{self.max_steps}" if self.max_steps else ""), f"{status:<8}"]
        if "loss" in m:
            parts.append(f"loss {m['loss']:.4f}")
        if "exact_acc" in m:
            parts.append(f"train exact {m['exact_acc']:.3f}")
        if "eval_exact" in ev:
            parts.append(f"eval exact {ev['eval_exact']:.3f}")
        parts.append(f"{sps:.1f} steps/s")
        parts.append(f"{(now - self._t0) / 60:.1f} min")
        print("  ".join(parts), flush=True)

    # ---- the store's own health ----

    def flush(self) -> bool:
        """Whether every row so far is on disk."""
        return self.store.flush() if self.enabled else True

    def close(self) -> None:
        if self.enabled:
            self.store.update_run(step=self.step)
            self.server.close()
            self.store.close()
