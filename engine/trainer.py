"""The loop over stages. One step reads as the algorithm:

    commands applied at the boundary -> the schedule picks the stage -> stage.step() (wake: task stream ->
    batch -> model(carry, batch) -> loss -> MuGrokfast step -> carry kept; sleep: consolidation) -> EMA ->
    recorder (store + socket) -> evaluation and checkpoint when due

Beside it, each in its own room: engine/build.py (model, task, schedule), engine/stages/ (wake, sleep),
engine/accumulate.py (micro-batches and the out-of-memory back-off), engine/state.py (the train state),
engine/recorder.py (everything the run tells the world), engine/commands.py (the protocol's commands),
engine/distributed.py (the ranks of a run under torchrun: each takes its share of the batch, the lead records).
"""

from __future__ import annotations

import copy
import errno
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from engine import protocol
from engine.accumulate import BackOff, MicroBatches, OutOfMemoryAtOneSlot
from engine.build import build_model, build_schedule, make_task, pick_device
from engine.commands import CommandDispatch, run_handlers
from engine.config import RunConfig, check_processes, to_toml
from engine.curriculum import CurriculumFeed
from engine.distributed import World
from engine.evaluate import count_right, held_out
from engine.faults import Faults
from engine.objectives import Objectives
from engine.optim import build_optimizer
from engine.outcome import OutcomeTargets
from engine.precision import Precision
from engine.protocol import EXIT_FAILED, EXIT_OK
from engine.recorder import Recorder
from engine.stages import Stage, StepResult
from engine.stages.pipeline import pipeline_stages
from engine.stages.sleep import SleepStage
from engine.stages.wake import WakeStage
from engine.state import RandomState, TrainState
from engine.telemetry import Telemetry

MAX_ROLLBACKS = 3  # non-finite losses in a row, each rolled back with half the learning rate, before "diverged"


class Trainer:
    """One run: builds its parts from the config and drives its schedule of stages."""

    def __init__(self, run_dir: str | Path, cfg: RunConfig, output: str = "human",
                 emit: Callable[[dict], None] | None = None, rank0: bool = True, world: World | None = None):
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.world = world = world or World()
        check_processes(cfg, world.size)
        self.device = pick_device(cfg.train.device, world.local_rank)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.precision = Precision(cfg.train.dtype, self.device)
        self.task = make_task(cfg)
        self.model = build_model(cfg, self.task).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if cfg.model.compile:  # f, which every pass of the recursion runs; the EMA copy (evaluation) stays eager
            self.model.net.compile()
        self.optimizer = build_optimizer(self.model, cfg.optim, total_steps=cfg.train.max_steps)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.train.seed + 1)
        B = cfg.train.batch_size
        self.micro = MicroBatches(B // world.size, cfg.train.accumulation)  # this rank's slots
        self.faults = Faults()
        # distill and dream train the memory-free answer alone: the halting head gets no gradient then
        unused = cfg.sleep.enabled and bool({cfg.sleep.mode, *cfg.sleep.modes} & {"distill", "dream"})
        self.forward = world.wrap(self.model, self.device, find_unused=unused)
        if world.size > 1:
            self.optimizer.max_over_ranks = world.max

        parts = (self.micro, self.precision, self.faults, self._back_off_alert)
        shared = {"world": world, "forward": self.forward}
        self.stages: dict[str, Stage] = {}
        observers = []
        if cfg.sleep.enabled:
            self.stages["sleep"] = sleep = SleepStage(cfg.sleep, self.model, self.optimizer, self.task.seq_len, B,
                                                      cfg.train.seed + 2, cfg.model.memory != "none", *parts,
                                                      **shared)
            observers.append(sleep.observe)
        # with the curriculum on, its question queue is the batch source instead of the task stream
        feed = CurriculumFeed.from_config(cfg.task, cfg.curriculum, B) if cfg.curriculum.enabled else None
        outcome = (OutcomeTargets(self.task, cfg.train.outcome_samples, cfg.train.outcome_temperature,
                                  self.generator) if cfg.train.outcome == "expert" else None)
        objectives = Objectives(cfg.objectives, anchor=self.ema)  # the slow time-scale's anchor: the average
        self.wake = self.stages["wake"] = WakeStage(self.model, self.optimizer, self.task, B, self.device,
                                                    self.generator, *parts, feed=feed, observers=observers,
                                                    outcome=outcome, objectives=objectives, **shared)
        self.stages.update(pipeline_stages(cfg, self.model, self.optimizer, self.task, self.device, self.generator,
                                           *parts))  # the Phase-5 pipeline's stages, when the config has one
        self.schedule = build_schedule(cfg)
        if cfg.sleep.enabled and (cfg.sleep.trigger_buffer_full or cfg.sleep.trigger_plateau):
            self.schedule.early["sleep"] = sleep.wanted  # a sleep on a signal, beside the fixed schedule
        # stages whose first step still waits for the compiler (status "compiling" meanwhile)
        self.uncompiled = set(self.stages) if cfg.model.compile else set()
        self.state = TrainState(self.run_dir / "checkpoints", {"model": self.model, "ema": self.ema}, {
            "optimizer": self.optimizer, "generator": RandomState(self.generator), "torch_rng": RandomState(),
            "precision": self.precision, "micro_batches": self.micro, "schedule": self.schedule, **self.stages})

        self.step = 0
        self.status = "starting"
        self.paused = False
        self.stop_reason: str | None = None
        self._signal: int | None = None
        self.last_checkpoint_step = -1
        self.rollbacks, self._diverged_at = 0, 0  # non-finite losses in a row, and the step of the last one
        self.telemetry = Telemetry(self.device)
        # used/total VRAM of the card, or None without a GPU; a test replaces it with an injected reading
        self.vram_fraction: Callable[[], float | None] = self.telemetry.vram_used_fraction
        self.ram_fraction: Callable[[], float | None] = self.telemetry.ram_used_fraction  # used/total of the machine
        self.recorder = Recorder(self.run_dir, cfg.name, to_toml(cfg), cfg.log, self.telemetry, output, emit,
                                 hello=self._hello, enabled=rank0 and world.is_lead, max_steps=cfg.train.max_steps)
        self.commands = CommandDispatch(self.recorder, run_handlers(self), world)
        self._eval_data: tuple[torch.Tensor, torch.Tensor] | None = None  # built at the first evaluation

    @property
    def carry(self):
        return self.wake.carry

    # ---- lifecycle ----------------------------------------------------------------------------

    def _hello(self) -> dict:
        return protocol.hello(self.run_dir.name, self.step, self.status)

    def resume(self) -> None:
        """Continue from the newest checkpoint that verifies and fits; warn about the newer ones skipped."""
        ckpt, warnings = self._latest_checkpoint()
        for w in warnings:
            self.recorder.alert("warning", f"skipped checkpoint: {w}")
        segment_start = 0
        if ckpt is None:
            self.recorder.alert("warning", "no usable checkpoint; starting from step 0")
        else:
            self._set_step(self.state.restore(ckpt))
            self.last_checkpoint_step = segment_start = self.step
            self.recorder.event("checkpoint", {"path": str(ckpt.path), "step": self.step, "loaded": True})
        if self.recorder.store is not None:
            self.recorder.store.start_segment(segment_start)

    def _latest_checkpoint(self):
        """The newest checkpoint that verifies and fits, and why newer ones were skipped: read by the lead alone
        and handed to every rank (the run folder may live on the lead's machine only)."""
        if self.world.size == 1:
            return self.state.load_latest(self.device)
        return self.world.from_lead(self.state.load_latest("cpu") if self.world.is_lead else None)

    def _set_step(self, step: int) -> None:
        self.step = self.recorder.step = step

    def run(self) -> int:
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        if self.recorder.enabled:
            self.recorder.server.start()
            self.recorder.store.update_run(pid=os.getpid())
        # what ran, after train.device and train.dtype = auto were made concrete
        self.recorder.event("world", {**self.world.describe(), "device": str(self.device),
                                      "dtype": self.precision.name})
        self.set_status("running")
        if self.last_checkpoint_step < 0:
            self.save_checkpoint(reason="start")  # a rollback target from the very first step
        self.recorder.event("telemetry", self.telemetry.sample())  # stored once: the GPU's name for read-only views
        try:
            return self._loop()
        except OutOfMemoryAtOneSlot as exc:
            self.recorder.alert("error", f"{exc}; the run failed")
            self.set_status("failed")
        except Exception as exc:  # a crash: recorded, reported, exit 1
            gone = self.world.gone() if self.world.size > 1 else []
            if gone:  # a peer died: a collective failed with it; that death is the cause, not this error
                self.recorder.alert("error", self._lost_ranks(gone))
                self.set_status("failed")
                return EXIT_FAILED
            self.recorder.alert("error", f"the engine crashed: {exc.__class__.__name__}: {exc}")
            self.set_status("failed")
            if not self.recorder.enabled and self.world.size > 1:  # a follower says why it ended, in one line
                print(f"engine rank {self.world.rank}: {exc.__class__.__name__}: {exc}", file=sys.stderr, flush=True)
            elif self.recorder.output != "quiet":
                import traceback

                traceback.print_exc()
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.recorder.close()
        return EXIT_FAILED

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum  # acted on at the next step boundary

    def _lost_ranks(self, gone: list[dict]) -> str:
        which = " and ".join(f"rank {p['rank']} (pid {p['pid']})" for p in gone)
        return (f"{which} of {self.world.size} ended at step {self.step + 1}, so the run failed; "
                f"`lab run --resume {self.run_dir.name}` continues from the last checkpoint "
                f"(step {max(self.last_checkpoint_step, 0)}).")

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> int:
        cfg = self.cfg
        deadline = self.recorder._t0 + cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
        while True:
            # any rank's signal, or its clock, ends every rank at this same boundary
            signalled, out_of_time = self.commands.apply_pending(
                block=self.paused, flags=(self._signal is not None, bool(deadline) and time.time() >= deadline))
            if signalled:
                self.stop_reason = "stopped"
            if self.stop_reason:
                return self._finish(self.stop_reason, evaluate_first=False)
            if self.paused:
                self.recorder.tick()
                continue
            if self.step >= cfg.train.max_steps or out_of_time:
                return self._finish("finished")
            self._advance_schedule()
            if self.schedule.finished:
                return self._finish("finished")

            result = self._step(self.schedule.current)
            self._set_step(self.step + 1)
            if result.finite:
                self._update_ema()
            self._record(result)
            if not result.finite:
                if not self._roll_back():
                    return EXIT_FAILED
                continue
            if self.rollbacks and self.step > self._diverged_at:
                self.rollbacks = 0  # past the step that blew up: the next NaN starts a new count
            self._watch_memory()
            if cfg.eval.every and self.step % cfg.eval.every == 0:
                self.evaluate()
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save_checkpoint()

    def _step(self, stage: str) -> StepResult:
        """The stage's step; its first one under model.compile is timed and said, as the compiler takes it."""
        if stage not in self.uncompiled:
            return self.stages[stage].step(self.step + 1)
        self.set_status("compiling")
        t0 = time.perf_counter()
        result = self.stages[stage].step(self.step + 1)
        seconds = time.perf_counter() - t0
        self.uncompiled.discard(stage)
        result.metrics["compile_seconds"] = seconds
        self.recorder.say(f"{stage}: compiled in {seconds:.1f} s (its first step)")
        self.set_status("running")
        return result

    def _advance_schedule(self) -> None:
        """At a step boundary: end the running stage and begin the next one when the schedule says so."""
        target = self.schedule.due(self.step, self.stages)
        if target is None:
            return
        for kind, data in self.stages[self.schedule.current].end(self.step):
            self.recorder.event(kind, data)
        self.schedule.switch(self.step, target)
        self.stages[self.schedule.current].begin(self.step)
        phase = {"phase": self.schedule.current, "manual": self.schedule.manual}
        if self.schedule.trigger:  # a sleep on a signal, before the wake phase's steps were up
            phase["trigger"] = self.schedule.trigger
        self.recorder.event("phase", phase)

    def _finish(self, status: str, evaluate_first: bool = True) -> int:
        if evaluate_first and self.cfg.eval.every and self.step % self.cfg.eval.every != 0:
            self.evaluate()
        self.save_checkpoint(reason="final" if status == "finished" else status)
        self.set_status(status)
        self.recorder.print_line(self.status, force=True)
        return EXIT_OK

    def _record(self, result: StepResult) -> None:
        metrics = dict(result.metrics)
        metrics.update(self.optimizer.stats())
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        for kind, data in result.events:
            self.recorder.event(kind, data)
        self.recorder.metrics(metrics, self.status)

    @torch.no_grad()
    def _update_ema(self) -> None:
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()],
                             1.0 - self.cfg.train.ema_decay)

    # ---- faults: non-finite loss, memory -------------------------------------------------------

    def _roll_back(self) -> bool:
        """A non-finite loss: back to the newest good checkpoint with half the learning rate.
        Returns False (status "diverged") after MAX_ROLLBACKS in a row or with nothing to go back to."""
        bad_step = self.step
        self.rollbacks += 1
        if self.rollbacks > MAX_ROLLBACKS:
            return self._diverged(f"non-finite loss at step {bad_step} after {MAX_ROLLBACKS} rollbacks in a row; "
                                  "the run diverged")
        ckpt, warnings = self._latest_checkpoint()
        for w in warnings:
            self.recorder.alert("warning", f"skipped checkpoint: {w}")
        if ckpt is None:
            return self._diverged(f"non-finite loss at step {bad_step} and no checkpoint to roll back to; "
                                  "the run diverged")
        scale, chunks = self.optimizer.lr_scale * 0.5, self.micro.chunks
        self._set_step(self.state.restore(ckpt))
        self.optimizer.set_lr_scale(scale)
        self.micro.chunks = max(self.micro.chunks, chunks)  # the memory that ran out has not come back
        self._diverged_at = bad_step
        if self.recorder.store is not None:
            self.recorder.store.start_segment(self.step)
        self.recorder.alert("error", f"non-finite loss at step {bad_step}: rolled back to step {self.step} with the "
                                     f"learning rate x{scale:g} (rollback {self.rollbacks} of {MAX_ROLLBACKS})")
        return True

    def _diverged(self, message: str) -> bool:
        self.recorder.alert("error", message)
        self.set_status("diverged")
        return False

    def _watch_memory(self) -> None:
        """Back off before an out-of-memory error when the card is fuller than train.vram_limit or the machine's
        RAM fuller than train.ram_limit; grow back after a quiet spell."""
        limit, ram_limit = self.cfg.train.vram_limit, self.cfg.train.ram_limit
        judge = min(limit, ram_limit) < 1.0 and self.step >= self.micro.quiet_until
        grow = self.micro.grow_due(self.step)
        if not (judge or grow):
            return  # no reading while the allocator settles
        used = self.vram_fraction() if limit < 1.0 or grow else None
        ram = self.ram_fraction() if ram_limit < 1.0 else None
        change = (judge and (self.micro.under_pressure(self.step, used, limit)
                             or self.micro.under_pressure(self.step, ram, ram_limit, "RAM"))) or (
            grow and self.micro.grow(self.step, used, limit, ram, ram_limit))
        if change:
            self._back_off_alert(change)

    def _back_off_alert(self, change: BackOff) -> None:
        """After a change of the micro-batch: hand the failed attempt's cached blocks back, and say so."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        B = self.cfg.train.batch_size
        self.recorder.alert("warning", f"{change.reason} at step {self.step + 1} ({self.schedule.current}): micro-batch "
                                       f"{change.old_size} -> {change.new_size}, {change.chunks} accumulated chunks "
                                       f"keep the batch at {B}",
                            fault="oom_backoff", reason=change.reason, phase=self.schedule.current,
                            old_micro_batch=change.old_size, new_micro_batch=change.new_size,
                            micro_batches=change.chunks)

    # ---- evaluation and checkpoints ------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy; under several processes each rank grades its share and the counts are added."""
        model = self.ema if self.cfg.eval.use_ema else self.model
        t0 = time.perf_counter()
        n = self.cfg.eval.n_puzzles
        if self._eval_data is None:
            mine = self.world.shard(n)
            inputs, labels = held_out(self.task, n, self.device)
            self._eval_data = inputs[mine], labels[mine]
        counts = count_right(model, self.task, *self._eval_data, self.cfg.eval.batch_size,
                             first=self.world.shard(n).start)
        exact, cells, total_cells = self.world.sum(torch.tensor(counts, dtype=torch.int64)).tolist()
        figures = {"eval_exact": exact / n, "eval_cell": cells / max(1, total_cells),
                   "eval_seconds": time.perf_counter() - t0}
        self.recorder.evaluation(figures)
        return figures

    def save_checkpoint(self, reason: str = "periodic") -> Path | None:
        # every rank takes part in the capture (the carry is gathered from all of them); the lead alone writes
        captured = self.state.capture(self.step)
        if self.world.size > 1:  # replicas that drifted apart would train garbage: a bug, not a user's mistake
            checksum = float(sum(p.detach().double().sum() for p in self.model.parameters()))
            assert self.world.agree(checksum), f"the ranks hold different weights at step {self.step}"
        if not self.recorder.enabled:
            self.last_checkpoint_step = self.step
            return None
        # every metric row up to this step is on disk before the checkpoint exists, or the checkpoint says not
        rows_on_disk = self.recorder.flush()
        if not rows_on_disk:
            self.recorder.alert("warning", f"the run store could not write every row up to step {self.step}; "
                                           "the checkpoint records that")
        injected = errno.ENOSPC if self.faults.take("enospc", self.step) else None
        try:
            path = self.state.save(self.step, {"segment": self.recorder.store.segment, "reason": reason,
                                               "rows_on_disk": rows_on_disk},
                                   keep=self.cfg.checkpoint.keep, inject_errno=injected, captured=captured)
        except OSError as exc:
            self.recorder.alert("error", f"checkpoint at step {self.step} failed ({exc.strerror or exc}); "
                                         "training goes on")
            return None
        self.last_checkpoint_step = self.step
        self.recorder.event("checkpoint", {"path": str(path), "step": self.step, "reason": reason})
        return path

    def set_status(self, status: str) -> None:
        self.status = status
        self.recorder.status(status)

    def status_dict(self) -> dict:
        server = self.recorder.server
        return {"status": self.status, "step": self.step, "max_steps": self.cfg.train.max_steps,
                "world_size": self.world.size,
                "stage": self.schedule.current, "clients": server.n_clients if server else 0,
                "dropped": server.dropped_total if server else 0, "last_checkpoint": self.last_checkpoint_step,
                "clients_dropped": server.clients_dropped if server else 0,
                "dropped_rows": self.recorder.store.dropped_rows if self.recorder.store else 0}
