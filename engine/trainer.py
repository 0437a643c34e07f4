"""The training loop. Reads like the algorithm:

    task stream -> batch -> model(carry, batch) -> loss -> optimizer step -> carry kept
    -> metrics to the store and the socket -> pending commands applied

Commands from the control socket are applied only at step boundaries and acknowledged with
the step at which they took effect. Checkpointing, the store, telemetry and the socket live
beside the loop (their own modules), not inside it.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from engine import checkpoint, protocol
from engine.config import RunConfig
from engine.control import ControlServer, Received
from engine.curriculum import CurriculumFeed
from engine.faults import FAULTS_ENV, faults_from_env
from engine.model.bitlinear import convert_to_bitnet
from engine.model.trm import PAD, Carry, TinyRecursiveModel
from engine.sleep import SleepWake
from engine.optim import build_optimizer
from engine.store import RunStore
from engine.tasks.base import Task, batch
from engine.telemetry import Telemetry

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# Fault injection for the fault suite (tests/faults, bench/faults.py), not a user setting:
PRESSURE_COOLDOWN_STEPS = 10  # after a VRAM-pressure back-off, let the allocator settle before judging again


class OutOfMemoryAtOneSlot(RuntimeError):
    """Out of memory with a micro-batch of one slot: nothing left to split."""


# ---- gradient accumulation over slot chunks --------------------------------------------------
# A micro-batch is a contiguous range of carry slots: each slot keeps its own carry, so the chunks
# are independent and their gradients add up to the full batch's.


def slot_chunks(batch_size: int, micro_batches: int) -> list[slice]:
    """`micro_batches` contiguous slot ranges covering the batch, as even as possible."""
    bounds = [i * batch_size // micro_batches for i in range(micro_batches + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def slice_carry(carry: Carry, sl: slice) -> Carry:
    memory = None if carry.memory is None else type(carry.memory)({k: v[sl] for k, v in carry.memory.items()})
    return Carry(z_H=carry.z_H[sl], z_L=carry.z_L[sl], steps=carry.steps[sl], halted=carry.halted[sl],
                 inputs=carry.inputs[sl], labels=carry.labels[sl], memory=memory)


def cat_carries(parts: list[Carry]) -> Carry:
    first = parts[0]
    memory = None if first.memory is None else type(first.memory)(
        {k: torch.cat([p.memory[k] for p in parts]) for k in first.memory})
    return Carry(**{name: torch.cat([getattr(p, name) for p in parts])
                    for name in ("z_H", "z_L", "steps", "halted", "inputs", "labels")}, memory=memory)


def chunk_loss(model: TinyRecursiveModel, out, labels: torch.Tensor, n_cells: torch.Tensor,
               batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A slot chunk's share of the full batch's loss: cross-entropy summed over the chunk's cells / the
    batch's cells, halting BCE summed over the chunk's slots / the batch's slots. Summed over the chunks
    it is TinyRecursiveModel.forward's loss on the whole batch, so the accumulated gradient is the
    full batch's. Returns (loss, lm_loss share, halt_loss share)."""
    mask = labels != PAD  # (b, S)
    if model.cognate:
        lm = sum(w * model._lm_loss(lg, labels, n_cells) for w, lg in zip(model.cfg.step_loss_weights, out.all_logits))
    else:
        lm = model._lm_loss(out.logits, labels, n_cells)
    with torch.no_grad():
        seq_correct = (((out.logits.argmax(-1) == labels) & mask).sum(-1) == mask.sum(-1)).float()  # (b,)
    halt = F.binary_cross_entropy_with_logits(out.q_halt_logits, seq_correct, reduction="sum") / batch_size
    return lm + 0.5 * halt, lm.detach(), halt.detach()


def merge_chunk_metrics(parts: list[dict[str, float]], slots: list[int], cells: list[int]) -> dict[str, float]:
    """One step's figures from its chunks' figures: counts add, per-cell and per-slot rates are weighted."""
    n_slots, n_cells = sum(slots), max(1, sum(cells))
    merged = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if key in ("n_halted", "n_halted_exact"):
            merged[key] = sum(values)
        elif key == "cell_acc":
            merged[key] = sum(v * c for v, c in zip(values, cells)) / n_cells
        elif key in ("halted_exact_acc", "halted_steps"):
            continue  # ratios over halted slots: rebuilt below from the counts
        else:
            merged[key] = sum(v * s for v, s in zip(values, slots)) / n_slots
    n_halted = sum(p.get("n_halted", 0.0) for p in parts)
    if "halted_exact_acc" in parts[0]:
        merged["halted_exact_acc"] = merged["n_halted_exact"] / n_halted if n_halted else float("nan")
    if "halted_steps" in parts[0]:
        weighted = sum(p["halted_steps"] * p["n_halted"] for p in parts if p["n_halted"])
        merged["halted_steps"] = weighted / n_halted if n_halted else float("nan")
    return merged


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_task(cfg: RunConfig) -> Task:
    from engine.tasks.registry import task_from_config

    return task_from_config(cfg.task)


def build_model(cfg: RunConfig, task: Task) -> TinyRecursiveModel:
    model = TinyRecursiveModel(cfg.model, vocab_size=task.vocab_size, seq_len=task.seq_len)
    if cfg.model.bitnet:  # b1.58 STE: hidden linears ternary in the forward, latent weights full precision
        convert_to_bitnet(model)
    return model


def held_out(task: Task, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` held-out samples, stacked once: drawing them again at every evaluation is wasted work."""
    inputs, labels = batch(task, "test", list(range(n)))
    return inputs.to(device), labels.to(device)


@torch.no_grad()
def evaluate(model: TinyRecursiveModel, task: Task, n: int, batch_size: int, device: torch.device,
             data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Exact (whole answer) and cell accuracy on the first `n` held-out samples (`data` if given)."""
    all_inputs, all_labels = data if data is not None else held_out(task, n, device)
    was_training = model.training
    model.eval()
    exact = cells = total_cells = 0
    for start in range(0, n, batch_size):
        inputs, labels = all_inputs[start:start + batch_size], all_labels[start:start + batch_size]
        preds, _ = model.predict(inputs)
        mask = labels != 0
        correct = (preds == labels) | ~mask
        exact += int(correct.all(dim=1).sum())
        cells += int(((preds == labels) & mask).sum())
        total_cells += int(mask.sum())
    model.train(was_training)
    return {"eval_exact": exact / n, "eval_cell": cells / max(1, total_cells)}


@dataclass
class StepResult:
    metrics: dict[str, float]
    finite: bool


class Trainer:
    """One run: owns the model, optimizer, carry, store, checkpoints and control socket."""

    def __init__(self, run_dir: str | Path, cfg: RunConfig, output: str = "human",
                 emit: Callable[[dict], None] | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.output = output  # "human" | "json" | "quiet"
        self.extra_emit = emit
        self.device = pick_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)

        self.task = make_task(cfg)
        self.model = build_model(cfg, self.task).to(self.device)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = build_optimizer(self.model, cfg.optim, total_steps=cfg.train.max_steps)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.train.seed + 1)
        self.carry: Carry = self.model.initial_carry(cfg.train.batch_size, self.device)
        self.sleep = (SleepWake(cfg.sleep, self.task.seq_len, cfg.train.batch_size, cfg.train.seed + 2,
                                cfg.model.memory) if cfg.sleep.enabled else None)
        # with the curriculum on, its question queue is the batch source instead of the task stream
        self.curriculum = (CurriculumFeed.from_config(cfg.task, cfg.curriculum, cfg.train.batch_size)
                           if cfg.curriculum.enabled else None)
        self.step = 0
        self.data_index = 0  # next training sample index: the stream position
        self.status = "starting"
        self.paused = False
        self.stop_reason: str | None = None
        self._signal: int | None = None
        self.last_checkpoint_step = -1
        self.lr_scale = 1.0  # halved by every rollback after a non-finite loss
        self.rollbacks = 0  # rollbacks in a row
        self._diverged_at = 0
        # out-of-memory back-off: the batch runs as this many slot chunks with gradient accumulation
        self.micro_batches = 1
        self._pressure_quiet_until = 0
        self.faults = faults_from_env()

        self.store = RunStore(self.run_dir, flush_seconds=cfg.log.flush_seconds)
        if self.store.run_row() is None:  # a folder prepared by hand rather than by `lab run`
            from engine.config import to_toml

            self.store.create_run(self.run_dir.name, cfg.name, to_toml(cfg))
        self.telemetry = Telemetry(self.device)
        # used/total VRAM of the card, or None without a GPU; a test replaces it with an injected reading
        self.vram_fraction: Callable[[], float | None] = self.telemetry.vram_used_fraction
        self.server = ControlServer(self.run_dir / protocol.SOCKET_NAME, hello=self._hello)
        self.ckpt_root = self.run_dir / "checkpoints"
        self._last_print = 0.0
        self._last_telemetry = 0.0
        self._t0 = time.time()
        self._step_times: list[float] = []
        self._eval_data: tuple[torch.Tensor, torch.Tensor] | None = None  # built at the first evaluation

    # ---- lifecycle ----------------------------------------------------------------------------

    def _hello(self) -> dict:
        return protocol.hello(self.run_dir.name, self.step, self.status)

    def resume(self) -> None:
        """Continue from the newest checkpoint that verifies; warn about damaged newer ones."""
        ckpt, warnings = checkpoint.load_latest(self.ckpt_root, map_location=self.device)
        for w in warnings:
            self.alert("warning", f"skipped a damaged checkpoint: {w}")
        if ckpt is None:
            self.store.start_segment(0)
            self.emit_event("alert", {"level": "warning", "message": "no usable checkpoint; starting from step 0"})
            return
        self._restore(ckpt)
        self.store.start_segment(self.step)
        self.emit_event("checkpoint", {"path": str(ckpt.path), "step": self.step, "loaded": True})

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        state = {
            "step": self.step,
            "data_index": self.data_index,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "carry": self.carry.to_state(),
            "lr_scale": self.lr_scale,
            "micro_batches": self.micro_batches,  # a resumed run splits its batch the same way
        }
        if self.sleep is not None:
            state["sleep"] = self.sleep.state_dict()
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        return tensors, state

    def _restore(self, ckpt: checkpoint.Checkpoint) -> None:
        model_sd = {k[6:]: v for k, v in ckpt.tensors.items() if k.startswith("model.")}
        ema_sd = {k[4:]: v for k, v in ckpt.tensors.items() if k.startswith("ema.")}
        self.model.load_state_dict(model_sd)
        self.ema.load_state_dict(ema_sd)
        s = ckpt.state
        self.optimizer.load_state_dict(s["optimizer"])
        self.generator.set_state(s["generator"])
        torch.set_rng_state(s["torch_rng"])
        self.carry = Carry.from_state({k: v.to(self.device) for k, v in s["carry"].items()})
        if self.sleep is not None and "sleep" in s:
            self.sleep.load_state_dict(s["sleep"], self.model)
        if self.curriculum is not None and "curriculum" in s:
            self.curriculum.load_state_dict(s["curriculum"])
        self.step = int(s["step"])
        self.data_index = int(s["data_index"])
        self.lr_scale = float(s.get("lr_scale", 1.0))
        self.micro_batches = int(s.get("micro_batches", 1))
        self._apply_lr_scale()
        self.last_checkpoint_step = self.step

    MAX_ROLLBACKS = 3

    def _apply_lr_scale(self) -> None:
        s = self.optimizer.settings
        for group in self.optimizer.param_groups:
            base = s.lr if group["name"] == "muon" or not s.use_muon else s.adamw_lr
            group["base_lr"] = base * self.lr_scale

    def _roll_back(self) -> bool:
        """A non-finite loss: back to the newest good checkpoint with half the learning rate.
        Returns False (status "diverged") after MAX_ROLLBACKS in a row or with nothing to go back to."""
        bad_step = self.step
        self.rollbacks += 1
        if self.rollbacks > self.MAX_ROLLBACKS:
            self.alert("error", f"non-finite loss at step {bad_step} after {self.MAX_ROLLBACKS} rollbacks in a row; "
                                "the run diverged")
            self.set_status("diverged")
            return False
        ckpt, warnings = checkpoint.load_latest(self.ckpt_root, map_location=self.device)
        for w in warnings:
            self.alert("warning", f"skipped a damaged checkpoint: {w}")
        if ckpt is None:
            self.alert("error", f"non-finite loss at step {bad_step} and no checkpoint to roll back to; the run diverged")
            self.set_status("diverged")
            return False
        scale = self.lr_scale * 0.5
        rollbacks, micro_batches = self.rollbacks, self.micro_batches
        self._restore(ckpt)
        self.rollbacks, self.lr_scale, self._diverged_at = rollbacks, scale, bad_step
        self.micro_batches = max(self.micro_batches, micro_batches)  # the memory that ran out has not come back
        self._apply_lr_scale()
        self.store.start_segment(self.step)
        self.alert("error", f"non-finite loss at step {bad_step}: rolled back to step {self.step} with the learning "
                            f"rate x{scale:g} (rollback {rollbacks} of {self.MAX_ROLLBACKS})")
        return True

    def save_checkpoint(self, reason: str = "periodic") -> Path | None:
        self.store.flush()  # every metric row up to this step is on disk before the checkpoint exists
        tensors, state = self._state()
        injected = errno.ENOSPC if self._take_fault("enospc", self.step) else None
        try:
            path = checkpoint.save(self.ckpt_root, self.step, tensors, state,
                                   meta={"segment": self.store.segment, "reason": reason},
                                   keep=self.cfg.checkpoint.keep, inject_errno=injected)
        except OSError as exc:
            self.alert("error", f"checkpoint at step {self.step} failed ({exc.strerror or exc}); training goes on")
            return None
        self.last_checkpoint_step = self.step
        self.emit_event("checkpoint", {"path": str(path), "step": self.step, "reason": reason})
        return path

    # ---- events ---------------------------------------------------------------------------------

    def emit_event(self, kind: str, data: Any, store: bool = True) -> None:
        now = time.time()
        if store:
            self.store.log_event(self.step, kind, data, at=now)
        self.server.broadcast(protocol.event(kind, self.step, now, data))
        if self.extra_emit:
            self.extra_emit(protocol.event(kind, self.step, now, data))

    def alert(self, level: str, message: str) -> None:
        self.emit_event("alert", {"level": level, "message": message})
        if self.output == "human":
            print(f"[{level}] {message}", file=sys.stderr, flush=True)
        elif self.output == "json":
            print(json.dumps({"event": "alert", "step": self.step, "level": level, "message": message}), flush=True)

    def set_status(self, status: str) -> None:
        self.status = status
        self.store.update_run(status=status, step=self.step)
        self.emit_event("status", {"status": status})

    # ---- the step -------------------------------------------------------------------------------

    def next_data(self, need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the halted slots with the next samples of the training stream."""
        inputs, labels = self.carry.inputs.clone(), self.carry.labels.clone()
        if self.curriculum is not None:  # the queue's next questions; a slot keeps its old data once it is done
            for slot, sample in self.curriculum.fill(need.tolist()).items():
                inputs[slot] = torch.tensor(sample.inputs, dtype=torch.long, device=self.device)
                labels[slot] = torch.tensor(sample.labels, dtype=torch.long, device=self.device)
            return inputs, labels
        k = int(need.sum())
        if k:
            idx = list(range(self.data_index, self.data_index + k))
            self.data_index += k
            new_in, new_lab = batch(self.task, "train", idx)
            inputs[need] = new_in.to(self.device)
            labels[need] = new_lab.to(self.device)
        return inputs, labels

    def train_step(self) -> StepResult:
        t0 = time.perf_counter()
        inputs, labels = self.next_data(self.carry.halted)
        self.model.train()
        rng = self.generator.get_state(), torch.get_rng_state()
        while True:
            try:
                carry, logits, metrics, finite = self._forward_backward(inputs, labels)
                break
            except torch.OutOfMemoryError:
                pass  # handled outside the except block, so the failed attempt's tensors can be freed
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.set_state(rng[0])  # the retry draws the same randomness as the failed attempt
            torch.set_rng_state(rng[1])
            if not self.back_off("out of memory"):
                raise OutOfMemoryAtOneSlot(f"out of memory at step {self.step + 1} with a micro-batch of one slot; "
                                           "lower model.d_model or train.batch_size")
        if self.sleep is not None:  # fresh samples enter the episodic buffer
            self.sleep.observe(carry, logits, self.step + 1)
        if finite:
            self.optimizer.step()  # schedule, clipping, Grokfast, Muon/AdamW and QK-clip in one place
            self._update_ema()
        self.optimizer.zero_grad(set_to_none=True)
        self.carry = carry.detach()
        self.step += 1
        if self.curriculum is not None:  # a slot that halted gave its final answer this step: grade it
            change = self.curriculum.grade(carry.halted.tolist(), logits.argmax(-1).tolist())
            if change is not None:
                self.emit_event("curriculum", change)
        dt = time.perf_counter() - t0
        metrics = dict(metrics)
        if self.curriculum is not None:
            metrics.update(self.curriculum.metrics())
        metrics.update(self.optimizer.stats())
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.micro_batches > 1:
            metrics["micro_batches"] = float(self.micro_batches)
        metrics["step_time"] = dt
        return StepResult(metrics=metrics, finite=finite)

    def _forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor
                          ) -> tuple[Carry, torch.Tensor, dict[str, float], bool]:
        """Forward and backward of one step over the batch, as `micro_batches` slot chunks whose gradients
        accumulate to the full batch's. Returns (new carry, logits (B, S, V), figures, finite).
        Halting's exploration draws come chunk by chunk, so a split run is reproducible for its split (which
        the checkpoint keeps), not bitwise equal to the unsplit run."""
        self._inject_oom()
        poison = float("nan") if self._take_fault("nan", self.step + 1) else 1.0
        if self.micro_batches == 1:  # the plain step, unchanged
            carry, out = self.model(self.carry, inputs, labels, generator=self.generator)
            loss = out.loss if poison == 1.0 else out.loss * poison
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
            return carry, out.logits, out.metrics if finite else dict(out.metrics, loss=float(loss.detach())), finite
        B = inputs.shape[0]
        # the whole batch's normaliser: the cells scored once halted slots have taken their new samples
        batch_labels = torch.where(self.carry.halted[:, None], labels, self.carry.labels)
        n_cells = (batch_labels != PAD).sum().clamp_min(1)
        carries, logits, parts, slots, cells = [], [], [], [], []
        lm_total = halt_total = 0.0
        finite = True
        for sl in slot_chunks(B, self.micro_batches):
            carry, out = self.model(slice_carry(self.carry, sl), inputs[sl], labels[sl], generator=self.generator)
            loss, lm, halt = chunk_loss(self.model, out, carry.labels, n_cells, B)
            loss = loss * poison
            if finite and bool(torch.isfinite(loss)):
                loss.backward()  # frees this chunk's graph before the next chunk runs
            else:
                finite = False
            lm_total, halt_total = lm_total + float(lm), halt_total + float(halt)
            carries.append(carry.detach())
            logits.append(out.logits.detach())
            parts.append(out.metrics)
            slots.append(sl.stop - sl.start)
            cells.append(int((carry.labels != PAD).sum()))
        metrics = merge_chunk_metrics(parts, slots, cells)
        metrics.update(loss=(lm_total + 0.5 * halt_total) * poison, lm_loss=lm_total, halt_loss=halt_total)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)  # the finite chunks' gradients go with the step
        return cat_carries(carries), torch.cat(logits), metrics, finite

    def back_off(self, reason: str) -> bool:
        """Halve the micro-batch (twice the chunks; the effective batch is unchanged), with an alert that
        records the old and new micro-batch. Returns False when the chunks are already one slot each."""
        B = self.cfg.train.batch_size
        old = self.micro_batches
        if old >= B:
            return False
        self.micro_batches = min(B, 2 * old)
        old_size, new_size = math.ceil(B / old), math.ceil(B / self.micro_batches)
        self._backoff_alert(f"{reason} at step {self.step + 1}: micro-batch {old_size} -> {new_size} slots, "
                            f"{self.micro_batches} accumulated chunks keep the batch at {B}",
                            reason=reason, old_micro_batch=old_size, new_micro_batch=new_size,
                            micro_batches=self.micro_batches)
        return True

    def _backoff_alert(self, message: str, **fields) -> None:
        """After a back-off: hand the failed attempt's cached blocks back before the retry, and say so."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.emit_event("alert", {"level": "warning", "fault": "oom_backoff", **fields, "message": message})
        if self.output == "human":
            print(f"[warning] {message}", file=sys.stderr, flush=True)

    def _inject_oom(self) -> None:
        """Raise the injected out-of-memory error of this step, if one is due (FAULTS_ENV)."""
        if self._take_fault("oom", self.step + 1):
            raise torch.OutOfMemoryError(f"injected out-of-memory at step {self.step + 1} ({FAULTS_ENV})")

    def _check_memory_pressure(self) -> None:
        """Back off before an out-of-memory error when the card is fuller than train.vram_limit."""
        limit = self.cfg.train.vram_limit
        if limit >= 1.0 or self.step < self._pressure_quiet_until:
            return
        used = self.vram_fraction()
        if used is None or used <= limit:
            return
        if self.back_off(f"VRAM at {used:.0%} of the card (limit {limit:.0%})"):
            self._pressure_quiet_until = self.step + PRESSURE_COOLDOWN_STEPS

    def _take_fault(self, kind: str, step: int) -> bool:
        """True once per injected `kind@step` entry (FAULTS_ENV)."""
        steps = self.faults.get(kind)
        if steps and step in steps:
            steps.remove(step)
            return True
        return False

    def sleep_step(self) -> StepResult:
        """One step of sleep: the consolidation source replaces the task stream; the carry waits for wake."""
        t0 = time.perf_counter()
        rng = self.sleep.generator.get_state()
        while True:
            try:
                self._inject_oom()
                metrics, finite = self.sleep.consolidation_step(self.model, self.optimizer)
                break
            except torch.OutOfMemoryError:
                pass  # handled outside the except block, so the failed attempt's tensors can be freed
            self.sleep.generator.set_state(rng)  # the retry starts from the same random state
            halved = self.sleep.halve_batch()
            if halved is None:
                raise OutOfMemoryAtOneSlot(f"out of memory at step {self.step + 1} during sleep with a "
                                           "consolidation batch of one sample; lower model.d_model")
            self._backoff_alert(f"out of memory during sleep at step {self.step + 1}: consolidation batch "
                                f"{halved[0]} -> {halved[1]} samples", reason="out of memory", phase="sleep",
                                old_batch=halved[0], new_batch=halved[1])
        if finite:
            self._update_ema()
        self.step += 1
        metrics.update(self.optimizer.stats())
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["step_time"] = time.perf_counter() - t0
        return StepResult(metrics=metrics, finite=finite)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.cfg.train.ema_decay
        ema_p = list(self.ema.parameters())
        model_p = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)

    # ---- commands -------------------------------------------------------------------------------

    def apply_commands(self, block: bool = False) -> None:
        """Apply every queued command now (a step boundary). With block=True wait briefly for one."""
        while True:
            try:
                rec = self.server.commands.get(timeout=0.1) if block else self.server.commands.get_nowait()
            except Exception:
                return
            block = False
            self._apply(rec)

    def _apply(self, rec: Received) -> None:
        cmd = rec.command
        try:
            ok, error, result = self._execute(cmd)
        except Exception as exc:  # a command must never take the run down with it
            ok, error, result = False, f"{cmd.cmd} failed inside the engine: {exc.__class__.__name__}: {exc}", None
        self.store.log_command(cmd.id, rec.client, cmd.cmd, cmd.args, self.step, ok, error, rec.at)
        self.server.reply(rec.client, protocol.ack(cmd.id, ok, self.step, error, result))
        self.emit_event("command", {"id": cmd.id, "cmd": cmd.cmd, "ok": ok, "error": error, "client": rec.client})

    def _execute(self, cmd) -> tuple[bool, str | None, Any]:
        ok, error, result = True, None, None
        if cmd.cmd == "pause":
            if self.paused:
                ok, error = False, "the run is already paused."
            else:
                self.paused = True
                self.set_status("paused")
        elif cmd.cmd == "resume":
            if not self.paused:
                ok, error = False, "the run is not paused."
            else:
                self.paused = False
                self.set_status("running")
        elif cmd.cmd == "sleep":
            if self.sleep is None:
                ok, error = False, "sleep is not available: this run has no sleep/wake phase."
            else:
                error = self.sleep.request()  # None: accepted, it starts at the next step boundary
                ok = error is None
        elif cmd.cmd == "checkpoint":
            path = self.save_checkpoint(reason="manual")
            ok, error = path is not None, None if path else "the checkpoint could not be written (see alerts)."
            result = {"path": str(path)} if path else None
        elif cmd.cmd == "stop":
            self.stop_reason = "stopped"
        elif cmd.cmd == "inspect":
            slot = cmd.args.get("slot", 0)
            if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < self.cfg.train.batch_size:
                ok, error = False, f"slot must be an integer from 0 to {self.cfg.train.batch_size - 1}."
            else:
                result = self.model.inspect(self.carry, slot)
                self.emit_event("carry", result, store=False)
        elif cmd.cmd == "probe":
            ok, error, result = self._probe(cmd.args)
        elif cmd.cmd == "status":
            result = self.status_dict()
        return ok, error, result

    def _probe(self, args: dict) -> tuple[bool, str | None, Any]:
        from engine.tasks.puzzles import PuzzleFileError, parse_puzzle_line

        if args.get("reset"):
            self.ema.reset_carry()
        text = args.get("input")
        if text is None:
            return True, None, {"reset": True}
        if not isinstance(text, str):
            return False, "input must be a puzzle string such as 1.3.2...", None
        try:
            puzzle = parse_puzzle_line(text, where="probe")
        except PuzzleFileError as exc:
            return False, str(exc), None
        if puzzle.size * puzzle.size != self.task.seq_len:
            return False, f"this run's task takes {self.task.seq_len}-cell puzzles; the probe had {len(puzzle.inputs)}.", None
        inputs = torch.tensor([puzzle.inputs], dtype=torch.long, device=self.device)
        with torch.no_grad():
            preds = self.ema.infer(inputs)  # stateful: the carry persists across probes until reset
        answer = "".join(str(max(0, int(t) - 1)) for t in preds[0].tolist())
        return True, None, {"answer": answer, "steps": int(self.ema.infer_carry.steps[0])}

    def status_dict(self) -> dict:
        return {"status": self.status, "step": self.step, "max_steps": self.cfg.train.max_steps,
                "clients": self.server.n_clients, "dropped": self.server.dropped_total,
                "last_checkpoint": self.last_checkpoint_step}

    # ---- signals ----------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum  # acted on at the next step boundary

    # ---- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        self.server.start()
        self.store.update_run(pid=os.getpid())
        self.set_status("running")
        if self.last_checkpoint_step < 0:
            self.save_checkpoint(reason="start")  # a rollback target from the very first step
        self.emit_event("telemetry", self.telemetry.sample())  # stored once: the GPU's name for read-only views
        exit_code = EXIT_OK
        try:
            exit_code = self._loop()
        except OutOfMemoryAtOneSlot as exc:
            self.alert("error", f"{exc}; the run failed")
            self.set_status("failed")
            exit_code = EXIT_FAILED
        except Exception as exc:  # a crash: recorded, reported, exit 1
            self.alert("error", f"the engine crashed: {exc.__class__.__name__}: {exc}")
            self.set_status("failed")
            exit_code = EXIT_FAILED
            if self.output != "quiet":
                import traceback

                traceback.print_exc()
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.store.update_run(step=self.step)
            self.server.close()
            self.store.close()
        return exit_code

    def _loop(self) -> int:
        cfg = self.cfg
        deadline = self._t0 + cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
        while True:
            self.apply_commands(block=self.paused)
            if self._signal is not None:
                self.stop_reason = "stopped"
            if self.stop_reason:
                self.save_checkpoint(reason=self.stop_reason)
                self.set_status(self.stop_reason)
                self._print_line(force=True)
                return EXIT_OK
            if self.paused:
                self._maybe_telemetry()
                continue
            curriculum_done = self.curriculum is not None and self.curriculum.done  # the last level has ended
            if self.step >= cfg.train.max_steps or (deadline and time.time() >= deadline) or curriculum_done:
                self._final_eval()
                self.save_checkpoint(reason="final")
                self.set_status("finished")
                self._print_line(force=True)
                return EXIT_OK
            if self.sleep is not None:  # wake/sleep transitions happen at step boundaries
                for kind, data in self.sleep.boundary(self.step, self.model, self.carry):
                    self.emit_event(kind, data)
            result = self.sleep_step() if self.sleep is not None and self.sleep.sleeping else self.train_step()
            self._record(result)
            if not result.finite:
                if not self._roll_back():
                    return EXIT_FAILED
                continue
            if self.rollbacks and self.step > self._diverged_at:
                self.rollbacks = 0  # past the step that blew up: the next NaN starts a new count
            if self.sleep is None or not self.sleep.sleeping:
                self._check_memory_pressure()
            if cfg.eval.every and self.step % cfg.eval.every == 0:
                self._eval()
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save_checkpoint()

    def _record(self, result: StepResult) -> None:
        now = time.time()
        self.store.log_metrics(self.step, result.metrics, at=now)
        self.emit_event("metrics", result.metrics, store=False)
        self.store.update_run(step=self.step)
        self._step_times.append(result.metrics["step_time"])
        self._last_metrics = result.metrics
        self._maybe_telemetry()
        self._print_line()

    def _maybe_telemetry(self) -> None:
        now = time.time()
        if now - self._last_telemetry < self.cfg.log.telemetry_seconds:
            return
        self._last_telemetry = now
        sample = self.telemetry.sample()
        numeric = {k: v for k, v in sample.items() if isinstance(v, (int, float)) and v is not None}
        self.store.log_metrics(self.step, {f"sys/{k}": v for k, v in numeric.items()}, at=now)
        self.emit_event("telemetry", sample, store=False)

    def _eval(self) -> dict[str, float]:
        model = self.ema if self.cfg.eval.use_ema else self.model
        t0 = time.perf_counter()
        if self._eval_data is None:
            self._eval_data = held_out(self.task, self.cfg.eval.n_puzzles, self.device)
        figures = evaluate(model, self.task, self.cfg.eval.n_puzzles, self.cfg.eval.batch_size, self.device,
                           data=self._eval_data)
        figures["eval_seconds"] = time.perf_counter() - t0
        self.store.log_metrics(self.step, figures)
        self.emit_event("eval", figures)
        self._last_eval = figures
        return figures

    def _final_eval(self) -> None:
        if self.cfg.eval.every and self.step % self.cfg.eval.every != 0:
            self._eval()

    def _print_line(self, force: bool = False) -> None:
        now = time.time()
        if self.output == "quiet" or (not force and now - self._last_print < self.cfg.log.print_seconds):
            return
        self._last_print = now
        m = getattr(self, "_last_metrics", {})
        ev = getattr(self, "_last_eval", {})
        recent = self._step_times[-50:]
        sps = len(recent) / sum(recent) if recent and sum(recent) > 0 else 0.0
        if self.output == "json":
            print(json.dumps({"step": self.step, "status": self.status, "steps_per_s": sps,
                              **{k: v for k, v in m.items() if isinstance(v, float) and math.isfinite(v)}, **ev}),
                  flush=True)
            return
        parts = [f"step {self.step:>6}/{self.cfg.train.max_steps}", f"{self.status:<8}"]
        if "loss" in m:
            parts.append(f"loss {m['loss']:.4f}")
        if "exact_acc" in m:
            parts.append(f"train exact {m['exact_acc']:.3f}")
        if "eval_exact" in ev:
            parts.append(f"eval exact {ev['eval_exact']:.3f}")
        parts.append(f"{sps:.1f} steps/s")
        parts.append(f"{(now - self._t0) / 60:.1f} min")
        print("  ".join(parts), flush=True)
