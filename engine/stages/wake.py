"""Wake: training on the task stream (or the curriculum's question queue), one supervision step per optimizer
step, with the carry kept across steps.

    halted slots take fresh samples -> model(carry, batch) -> loss -> backward (chunk by chunk when the
    batch runs as micro-batches) -> MuGrokfast step -> carry detached and kept -> halted answers graded

Under several processes each rank keeps its share of the slots (engine/distributed.py) and the step is the
one-process step of the whole batch: the stream is dealt out in global slot order, the loss is normalised by
the whole batch's scored cells, halting draws the whole batch's random numbers, and the figures are merged.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from engine.accumulate import BackOff, MicroBatches, merge_chunk_metrics
from engine.curriculum import CurriculumFeed
from engine.distributed import ModelCall, World
from engine.faults import Faults
from engine.model.titans import start_stats, take_stats, utilisation
from engine.model.trm import PAD, Carry, TinyRecursiveModel
from engine.objectives import Objectives
from engine.optim import MuGrokfast
from engine.outcome import OutcomeTargets
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
                 observers: list[Observer] = (), world: World | None = None, forward: torch.nn.Module | None = None,
                 outcome: OutcomeTargets | None = None, objectives: Objectives | None = None):
        self.model, self.optimizer, self.task, self.device = model, optimizer, task, device
        self.generator, self.micro, self.precision, self.faults = generator, micro, precision, faults
        self.on_back_off, self.feed, self.observers = on_back_off, feed, list(observers)
        self.outcome = outcome  # tool use learning from the sandbox's outcome, or None (cross-entropy alone)
        self.world = world or World()
        self.forward = forward or ModelCall(model)  # DistributedDataParallel around it under several processes
        # the loss's mix beside the task loss; None (the task loss alone) unless the config asks for more
        self.objectives = objectives if objectives is not None and objectives.active else None
        self.batch_size = batch_size  # the global batch
        self.slots = self.world.shard(batch_size)  # this rank's carry slots
        self.carry: Carry = model.initial_carry(self.slots.stop - self.slots.start, device)
        self.halted = torch.ones(batch_size, dtype=torch.bool)  # every slot's, on every rank: who takes new data
        self.data_index = 0  # next training sample index: the stream position
        # task.carry_turns: the stream's items are chains of turns; per slot (whole batch): example numbers of its
        # chain's current turn and of its last turn, and the turn's place; a slot goes on to the next turn
        self.chained = getattr(task, "carry_turns", False) and feed is None
        self.turn = torch.zeros(batch_size, dtype=torch.long)
        self.turns = torch.zeros(batch_size, dtype=torch.long)  # turns in the slot's chain (0: none yet)
        self.chain_of = torch.zeros(batch_size, dtype=torch.long)  # the slot's stream item

    def ready(self) -> bool:
        return True

    def begin(self, step: int) -> None:
        pass

    def end(self, step: int) -> list[tuple[str, dict]]:
        return []

    def done(self) -> bool:
        return self.feed is not None and self.feed.done  # the curriculum's last level has ended

    def next_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the halted slots of this rank with the next samples of the training stream: the halted slots of
        the whole batch take the next samples in slot order, whichever rank holds them."""
        inputs, labels = self.carry.inputs.clone(), self.carry.labels.clone()
        if self.feed is not None:  # the queue's next questions; a slot keeps its old data once it is done
            for slot, sample in self.feed.fill(self.halted.tolist()).items():
                inputs[slot] = torch.tensor(sample.inputs, dtype=torch.long, device=self.device)
                labels[slot] = torch.tensor(sample.labels, dtype=torch.long, device=self.device)
            return inputs, labels
        if self.chained:
            return self.next_turns(inputs, labels)
        position = self.halted.cumsum(0) - 1  # each halted slot's place among the batch's halted slots
        need = self.halted[self.slots]
        idx = (self.data_index + position[self.slots][need]).tolist()
        self.data_index += int(self.halted.sum())
        if idx:
            new_in, new_lab = batch(self.task, "train", idx)
            if self.outcome is not None:  # the model's own passing programs replace the reference ones
                new_lab = self.outcome.relabel(self.model, new_in.to(self.device), new_lab, idx)
            need = need.to(self.device)
            inputs[need] = new_in.to(self.device)
            labels[need] = new_lab.to(self.device)
        return inputs, labels

    def next_turns(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chained stream: a halted slot whose chain has turns left takes the next turn with its latents kept (the
        carry's follow_up); the other halted slots take the next chains of the stream, in slot order."""
        going_on = self.halted & (self.turn + 1 < self.turns)
        fresh = self.halted & ~going_on
        position = fresh.cumsum(0) - 1
        self.chain_of[fresh] = self.data_index + position[fresh]
        self.data_index += int(fresh.sum())
        self.turn = torch.where(fresh, 0, self.turn + going_on.long())
        for g in fresh.nonzero().flatten().tolist():
            self.turns[g] = len(self.task.chain("train", int(self.chain_of[g])))
        local = range(self.slots.start, self.slots.stop)
        for i, g in enumerate(local):
            if self.halted[g]:
                sample = self.task.turn_sample("train", self.task.chain("train", int(self.chain_of[g]))[self.turn[g]])
                inputs[i] = torch.tensor(sample.inputs, dtype=torch.long, device=self.device)
                labels[i] = torch.tensor(sample.labels, dtype=torch.long, device=self.device)
        self.carry = self.carry.follow_up(going_on[self.slots].to(self.device), inputs, labels)
        return inputs, labels

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        inputs, labels = self.next_data()
        n_cells = self.scored_cells(labels)  # a collective: outside the out-of-memory retries
        self.model.train()
        carry, logits, metrics, finite = self.micro.attempt(
            step, lambda: self.forward_backward(inputs, labels, step, n_cells), [self.generator],
            self.on_back_off, inject=lambda: self.faults.raise_oom(step))
        metrics, finite = self.share(metrics, finite, carry.halted, time.perf_counter() - t0)
        metrics.update(self.memory_figures(carry))
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
        if self.outcome is not None:
            metrics.update(self.outcome.metrics())
        if self.micro.chunks > 1:
            metrics["micro_batches"] = float(self.micro.chunks)
        metrics["step_time"] = time.perf_counter() - t0
        return StepResult(metrics, finite, events)

    def memory_figures(self, carry: Carry) -> dict[str, float]:
        """The neural memory's surprise frequency, update rate and utilisation over this step (this rank's slots)."""
        figures = take_stats(self.model)
        if carry.memory is not None:
            figures["memory_utilisation"] = utilisation(self.model, carry.memory)
        return figures

    def scored_cells(self, labels: torch.Tensor) -> torch.Tensor:
        """The cells scored over the whole batch (every rank's slots) once the halted slots have taken their new
        samples (`labels`: this rank's, after next_data)."""
        mine = (torch.where(self.carry.halted[:, None], labels, self.carry.labels) != PAD).sum()
        return self.world.sum(mine).clamp_min(1)

    def forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor, step: int, n_cells: torch.Tensor
                         ) -> tuple[Carry, torch.Tensor, dict[str, float], bool]:
        """Forward and backward of this rank's slots as the micro-batches' slot chunks, each scored against the
        whole batch (`n_cells` scored cells, batch_size slots), so the accumulated gradient is the batch's.
        Every chunk draws halting's random numbers for the whole batch from the step's generator state and takes
        its own slots', so neither micro-batches nor ranks change a slot's draws.
        Returns (carry, logits (B, S, V), this rank's figures, finite)."""
        self.optimizer.zero_grad(set_to_none=True)  # a retry after an out-of-memory error starts clean
        start_stats(self.model)  # the memory counts its surprising tokens and writes from here
        poison = self.faults.loss_factor(step)
        B, start = self.batch_size, self.generator.get_state()
        carries, logits, parts = [], [], []
        finite = True
        chunks = self.micro.split(inputs.shape[0])
        for i, sl in enumerate(chunks):
            self.generator.set_state(start)
            with self.world.sync_gradients(self.forward, last=i == len(chunks) - 1):
                with self.precision.autocast():
                    carry, out = self.forward(TinyRecursiveModel.__call__, self.carry.slots(sl), inputs[sl],
                                              labels[sl], generator=self.generator, norm=(n_cells, B),
                                              slots=(self.slots.start + sl.start, B), objectives=self.objectives)
                loss = out.loss * poison
                finite = finite and bool(torch.isfinite(loss))
                # every chunk goes backward, finite or not: under several processes each rank's last chunk must
                # reach the gradient all-reduce; DDP averages over ranks and a rank's loss is its share of the sum
                self.precision.backward(loss * self.world.size)  # frees this chunk's graph before the next runs
            carries.append(carry)
            logits.append(out.logits.detach())
            parts.append(out.metrics if poison == 1.0 else dict(out.metrics, loss=float(loss.detach())))
        carry = carries[0] if len(carries) == 1 else Carry.cat(carries)
        return carry, logits[0] if len(logits) == 1 else torch.cat(logits), merge_chunk_metrics(parts), finite

    def share(self, metrics: dict[str, float], finite: bool, halted: torch.Tensor, seconds: float
              ) -> tuple[dict[str, float], bool]:
        """The step's figures and finiteness over every rank, and every slot's halted flag; one gather."""
        if self.world.size == 1:
            self.halted = halted.cpu()
            return metrics, finite
        keys = sorted(metrics)
        row = torch.tensor([metrics[k] for k in keys] + [float(finite), seconds], dtype=torch.float64)
        rows = self.world.gather_rows(torch.cat([row, halted.cpu().double()])[None])  # (W, K + 2 + B / W)
        K = len(keys)
        self.halted = rows[:, K + 2:].flatten().bool()
        merged = merge_chunk_metrics([dict(zip(keys, r[:K].tolist())) for r in rows])
        merged.update({f"step_time_rank{r}": float(rows[r, K + 1]) for r in range(self.world.size)})
        return merged, bool(rows[:, K].all())

    def global_carry(self) -> Carry:
        """The whole batch's carry, on every rank (a collective: every rank calls it at the same point)."""
        if self.world.size == 1:
            return self.carry
        return Carry.from_state({k: self.world.gather_rows(v) for k, v in self.carry.to_state().items()})

    def state_dict(self) -> dict:
        state = {"carry": self.global_carry().to_state(), "data_index": self.data_index}
        if self.chained:
            state["chains"] = torch.stack([self.chain_of, self.turn, self.turns])
        if self.feed is not None:
            state["curriculum"] = self.feed.state_dict()
        if self.outcome is not None:
            state["outcome"] = self.outcome.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        carry = Carry.from_state({k: v.to(self.device) for k, v in state["carry"].items()})
        assert carry.halted.shape[0] == self.batch_size, "a checkpoint holds the whole batch's carry"
        self.halted = carry.halted.cpu()
        self.carry = carry.slots(self.slots)  # a run saved at any number of processes resumes at any other
        self.data_index = int(state["data_index"])
        if self.chained and "chains" in state:
            self.chain_of, self.turn, self.turns = (t.long().clone() for t in state["chains"])
        if self.feed is not None and "curriculum" in state:
            self.feed.load_state_dict(state["curriculum"])
        if self.outcome is not None and "outcome" in state:
            self.outcome.load_state_dict(state["outcome"])
