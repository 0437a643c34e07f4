"""Wake: training on the task stream (or the curriculum's question queue), one supervision step per optimizer
step, with the carry kept across steps.

    halted slots take fresh samples -> model(carry, batch) -> loss -> backward (chunk by chunk when the
    batch runs as micro-batches) -> MuGrokfast step -> carry detached and kept -> halted answers graded
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from engine.accumulate import BackOff, MicroBatches, merge_chunk_metrics
from engine.curriculum import CurriculumFeed
from engine.faults import Faults
from engine.model.trm import PAD, Carry, TinyRecursiveModel
from engine.optim import MuGrokfast
from engine.precision import Precision
from engine.stages import StepResult
from engine.tasks.base import Task, batch

# (carry after the step, its logits (B, S, V), the step number): who else sees each wake step (sleep's buffer)
Observer = Callable[[Carry, torch.Tensor, int], None]


class WakeStage:
    name = "wake"

    def __init__(self, model: TinyRecursiveModel, optimizer: MuGrokfast, task: Task, batch_size: int,
                 device: torch.device, generator: torch.Generator, micro: MicroBatches, precision: Precision,
                 faults: Faults, on_back_off: Callable[[BackOff], None], feed: CurriculumFeed | None = None,
                 observers: list[Observer] = ()):
        self.model, self.optimizer, self.task, self.device = model, optimizer, task, device
        self.generator, self.micro, self.precision, self.faults = generator, micro, precision, faults
        self.on_back_off, self.feed, self.observers = on_back_off, feed, list(observers)
        self.carry: Carry = model.initial_carry(batch_size, device)
        self.data_index = 0  # next training sample index: the stream position

    def ready(self) -> bool:
        return True

    def begin(self, step: int) -> None:
        pass

    def end(self, step: int) -> list[tuple[str, dict]]:
        return []

    def done(self) -> bool:
        return self.feed is not None and self.feed.done  # the curriculum's last level has ended

    def next_data(self, need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the halted slots with the next samples of the training stream."""
        inputs, labels = self.carry.inputs.clone(), self.carry.labels.clone()
        if self.feed is not None:  # the queue's next questions; a slot keeps its old data once it is done
            for slot, sample in self.feed.fill(need.tolist()).items():
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

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        inputs, labels = self.next_data(self.carry.halted)
        self.model.train()
        carry, logits, metrics, finite = self.micro.attempt(
            step, lambda: self.forward_backward(inputs, labels, step), [self.generator], self.on_back_off,
            inject=lambda: self.faults.raise_oom(step))
        for observe in self.observers:  # fresh samples enter sleep's episodic buffer
            observe(carry, logits, step)
        if finite and self.precision.unscale(self.optimizer):
            self.optimizer.step()  # schedule, clipping, Grokfast, Muon/AdamW and QK-clip in one place
        self.optimizer.zero_grad(set_to_none=True)
        self.carry = carry.detach()
        events = []
        if self.feed is not None:  # a slot that halted gave its final answer this step: grade it
            change = self.feed.grade(carry.halted.tolist(), logits.argmax(-1).tolist())
            if change is not None:
                events.append(("curriculum", change))
            metrics.update(self.feed.metrics())
        if self.micro.chunks > 1:
            metrics["micro_batches"] = float(self.micro.chunks)
        metrics["step_time"] = time.perf_counter() - t0
        return StepResult(metrics, finite, events)

    def forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor, step: int
                         ) -> tuple[Carry, torch.Tensor, dict[str, float], bool]:
        """Forward and backward of the batch as the micro-batches' slot chunks, each scored against the whole
        batch, so the accumulated gradient is the batch's. Returns (carry, logits (B, S, V), figures, finite).
        Halting's exploration draws come chunk by chunk, so a split run is reproducible for its split (which
        the checkpoint keeps), not bitwise equal to the unsplit run."""
        self.optimizer.zero_grad(set_to_none=True)  # a retry after an out-of-memory error starts clean
        poison = self.faults.loss_factor(step)
        B = inputs.shape[0]
        # the cells scored once the halted slots have taken their new samples
        n_cells = (torch.where(self.carry.halted[:, None], labels, self.carry.labels) != PAD).sum().clamp_min(1)
        carries, logits, parts = [], [], []
        finite = True
        for sl in self.micro.split(B):
            with self.precision.autocast():
                carry, out = self.model(self.carry.slots(sl), inputs[sl], labels[sl], generator=self.generator,
                                        norm=(n_cells, B))
            loss = out.loss * poison
            if finite and bool(torch.isfinite(loss)):
                self.precision.backward(loss)  # frees this chunk's graph before the next chunk runs
            else:
                finite = False
            carries.append(carry)
            logits.append(out.logits.detach())
            parts.append(out.metrics if poison == 1.0 else dict(out.metrics, loss=float(loss.detach())))
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)  # the finite chunks' gradients go with the step
        carry = carries[0] if len(carries) == 1 else Carry.cat(carries)
        return carry, logits[0] if len(logits) == 1 else torch.cat(logits), merge_chunk_metrics(parts), finite

    def state_dict(self) -> dict:
        state = {"carry": self.carry.to_state(), "data_index": self.data_index}
        if self.feed is not None:
            state["curriculum"] = self.feed.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.carry = Carry.from_state({k: v.to(self.device) for k, v in state["carry"].items()})
        self.data_index = int(state["data_index"])
        if self.feed is not None and "curriculum" in state:
            self.feed.load_state_dict(state["curriculum"])
