"""Sleep/wake consolidation: what the fast memory picked up during wake moves into the slow weights during sleep.

    wake:  the task stream trains the model; every fresh sample enters the EpisodicBuffer with its loss on
           first sight as importance (surprise)
    sleep: the batch source is the Consolidator instead: replay (uniform from the buffer), replay-surprise
           (proportional to importance), distill (the memory-free path learns the memory-assisted outputs of
           a frozen pre-sleep copy, so the knowledge survives a memory reset) or dream (the pre-sleep copy's
           own high-temperature samples, distilled the same way)

The pieces live here; engine/stages/sleep.py runs them as the sleep stage of a run's schedule.

"Memory-free path": the model run with no carried memory state, so every pass through the network starts
from an empty neural memory (`Carry.memory = None`); "memory-assisted": the memory carried across passes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import SleepConfig
from engine.model.trm import PAD, TinyRecursiveModel


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each sample's scored positions: logits (B, S, V), labels (B, S) -> (B,)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=PAD, reduction="none")  # (B, S)
    scored = (labels != PAD).sum(-1).clamp_min(1)
    return ce.sum(-1) / scored


class EpisodicBuffer:
    """Samples seen during wake, each with an importance (its surprise), a usage count and its entry step.

    When full, a new sample first takes the place of a prunable slot (unimportant, unused and old), else of
    the least important one, if it is more important than that one.
    """

    def __init__(self, capacity: int, seq_len: int, prune_importance: float, prune_usage: int, prune_age: int):
        self.capacity, self.seq_len = capacity, seq_len
        self.prune_importance, self.prune_usage, self.prune_age = prune_importance, prune_usage, prune_age
        self.inputs = torch.zeros(0, seq_len, dtype=torch.long)  # (N, S)
        self.labels = torch.zeros(0, seq_len, dtype=torch.long)
        self.importance = torch.zeros(0)  # (N,) float
        self.usage = torch.zeros(0, dtype=torch.long)
        self.born = torch.zeros(0, dtype=torch.long)  # step at which each sample entered

    def __len__(self) -> int:
        return self.importance.shape[0]

    def add(self, inputs: torch.Tensor, labels: torch.Tensor, importance: torch.Tensor, step: int) -> None:
        inputs, labels, importance = inputs.cpu(), labels.cpu(), importance.detach().float().cpu()
        free = min(self.capacity - len(self), len(importance))
        if free > 0:  # the free places take the first samples at once: one copy per batch, not per sample
            self.inputs = torch.cat([self.inputs, inputs[:free]])
            self.labels = torch.cat([self.labels, labels[:free]])
            self.importance = torch.cat([self.importance, importance[:free]])
            self.usage = torch.cat([self.usage, torch.zeros(free, dtype=torch.long)])
            self.born = torch.cat([self.born, torch.full((free,), step, dtype=torch.long)])
            inputs, labels, importance = inputs[free:], labels[free:], importance[free:]
        for x, y, imp in zip(inputs, labels, importance):  # the rest, in order, each against the kept ones
            prunable = self.prunable(step).nonzero()
            i = int(prunable[0]) if len(prunable) else int(self.importance.argmin())
            if not len(prunable) and imp <= self.importance[i]:
                continue  # less important than everything kept
            self.inputs[i], self.labels[i], self.importance[i] = x, y, imp
            self.usage[i], self.born[i] = 0, step

    def prunable(self, step: int) -> torch.Tensor:
        """(N,) bool: unimportant, unused and old."""
        return ((self.importance < self.prune_importance) & (self.usage < self.prune_usage)
                & (step - self.born > self.prune_age))

    def prune(self, step: int) -> int:
        """Drop every prunable slot; returns how many went."""
        keep = ~self.prunable(step)
        dropped = int((~keep).sum())
        for name in ("inputs", "labels", "importance", "usage", "born"):
            setattr(self, name, getattr(self, name)[keep])
        return dropped

    def important(self, above: float) -> torch.Tensor:
        """(N,) bool: the samples sleep may consolidate, those whose importance is above `above` (0: every one)."""
        if above <= 0:
            return torch.ones(len(self), dtype=torch.bool)
        return self.importance > above

    def decay(self, factor: float) -> None:
        """Surprise fades: every importance times `factor`, once per wake step."""
        if factor < 1.0:
            self.importance.mul_(factor)

    def sample(self, n: int, generator: torch.Generator, by_importance: bool, above: float = 0.0) -> torch.Tensor:
        """n indices among the samples important above `above`, uniform or proportional to importance (with
        replacement); counts the usage."""
        if by_importance:
            weights = self.importance.clamp_min(0) + 1e-6  # a sample of zero loss can still come back
            if above > 0:
                weights = weights * self.important(above)
            idx = torch.multinomial(weights, n, replacement=True, generator=generator)
        elif above > 0:
            pool = self.important(above).nonzero().squeeze(1)
            idx = pool[torch.randint(len(pool), (n,), generator=generator)]
        else:
            idx = torch.randint(len(self), (n,), generator=generator)
        self.usage.index_add_(0, idx, torch.ones_like(idx))
        return idx

    def state_dict(self) -> dict:
        return {name: getattr(self, name).clone() for name in ("inputs", "labels", "importance", "usage", "born")}

    def load_state_dict(self, state: dict) -> None:
        for name, t in state.items():
            setattr(self, name, t.cpu().clone())


@dataclass
class ConsolidationBatch:
    inputs: torch.Tensor  # (B, S)
    labels: torch.Tensor  # (B, S) the buffer's labels (replay) or the teacher's answers (distill, dream)
    teacher_logits: torch.Tensor | None  # (B, S, V): the pre-sleep copy's memory-assisted outputs

    def __getitem__(self, sl: slice) -> ConsolidationBatch:
        teacher = None if self.teacher_logits is None else self.teacher_logits[sl]
        return ConsolidationBatch(self.inputs[sl], self.labels[sl], teacher)


class Consolidator:
    """The batch source and the loss of sleep, one mode per sleep (sleep.modes alternates them: deep sleep's
    distillation, REM's dreams); its learning rate adapts within a sleep."""

    def __init__(self, cfg: SleepConfig, batch_size: int):
        self.cfg, self.batch_size = cfg, batch_size
        self.mode = cfg.mode  # this sleep's
        self.lr = cfg.lr_scale  # a multiple of each parameter group's wake learning rate
        self.loss_mean: float | None = None  # running mean of the consolidation loss within this sleep
        self.teacher: TinyRecursiveModel | None = None  # the frozen pre-sleep copy (distill, dream)

    def begin(self, model: TinyRecursiveModel, mode: str | None = None) -> None:
        self.mode = mode or self.cfg.mode
        self.lr, self.loss_mean = self.cfg.lr_scale, None
        if self.mode in ("distill", "dream"):
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def end(self) -> None:
        self.teacher = None

    @torch.no_grad()
    def next_batch(self, buffer: EpisodicBuffer, generator: torch.Generator, device) -> ConsolidationBatch:
        idx = buffer.sample(self.batch_size, generator, by_importance=self.mode == "replay-surprise",
                            above=self.cfg.consolidation_threshold)
        inputs, labels = buffer.inputs[idx].to(device), buffer.labels[idx].to(device)
        if self.mode in ("replay", "replay-surprise"):
            return ConsolidationBatch(inputs, labels, None)
        teacher = self.teacher
        if self.mode == "dream":
            # a dream: the pre-sleep model's own answer, sampled hot, becomes the input it then explains
            logits, _ = teacher.predict_logits(inputs, n_steps=1)  # (B, S, V)
            probs = F.softmax(logits / self.cfg.dream_temperature, -1)
            dreamt = torch.multinomial(probs.flatten(0, 1).cpu(), 1, generator=generator).view_as(inputs).to(device)
            swap = torch.rand(inputs.shape, generator=generator).to(device) < 0.5
            inputs = torch.where(swap & (inputs != PAD), dreamt.clamp_min(1), inputs)
        teacher_logits, _ = teacher.predict_logits(inputs, n_steps=1)  # memory-assisted
        answers = teacher_logits.argmax(-1).masked_fill(labels == PAD, PAD)
        return ConsolidationBatch(inputs, answers, teacher_logits)

    def loss(self, model: TinyRecursiveModel, batch: ConsolidationBatch,
             norm: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
        """One supervision step from fresh latents. Replay: the model's own loss; distill and dream: KL from
        the teacher's distribution to the memory-free path's, over the scored positions. `norm`: the whole
        batch's (scored cells, samples) when `batch` is one chunk of it (see engine/accumulate.py)."""
        carry = model.initial_carry(batch.inputs.shape[0], batch.inputs.device)
        if batch.teacher_logits is None:
            _, out = model(carry, batch.inputs, batch.labels, norm=norm)
            return out.loss
        carry.memory = None  # the memory-free path: every pass through f starts from an empty memory
        _, out = model(carry, batch.inputs, batch.labels, norm=norm)
        scored = batch.labels != PAD  # (B, S)
        kl = F.kl_div(F.log_softmax(out.logits, -1), F.log_softmax(batch.teacher_logits.float(), -1),
                      log_target=True, reduction="none").sum(-1)  # (B, S)
        return (kl * scored).sum() / (norm[0] if norm is not None else scored.sum().clamp_min(1))

    def adapt(self, loss: float) -> None:
        """The safeguard: halve the rate on a loss spike; raise it x1.2 when the loss is already tiny."""
        if self.loss_mean is not None and loss > self.cfg.spike_factor * self.loss_mean:
            self.lr *= 0.5
        elif loss < self.cfg.tiny_loss:
            self.lr = min(self.lr * 1.2, 10 * self.cfg.lr_scale)
        self.loss_mean = loss if self.loss_mean is None else 0.9 * self.loss_mean + 0.1 * loss

    def state_dict(self) -> dict:
        state = {"lr": self.lr, "loss_mean": self.loss_mean, "mode": self.mode}
        if self.teacher is not None:
            state["teacher"] = {k: v.clone() for k, v in self.teacher.state_dict().items()}
        return state

    def load_state_dict(self, state: dict, model: TinyRecursiveModel) -> None:
        self.lr, self.loss_mean = float(state["lr"]), state["loss_mean"]
        self.mode, self.teacher = state.get("mode", self.cfg.mode), None
        if "teacher" in state:
            self.begin(model, self.mode)
            self.lr, self.loss_mean = float(state["lr"]), state["loss_mean"]
            self.teacher.load_state_dict(state["teacher"])


class ConsolidationTrigger:
    """When a wake phase may end early for a sleep, beside the fixed schedule: the buffer has taken buffer_size new
    samples since the last sleep (it is full of unconsolidated samples), or the loss of fresh samples at first
    sight, a held-out signal, has not improved by plateau_delta for trigger_plateau wake steps (a plateau or a
    regression). Neither fires before trigger_min_wake wake steps."""

    def __init__(self, cfg: SleepConfig):
        self.cfg = cfg
        self.added = 0  # samples offered to the buffer since the last sleep
        self.average: float | None = None  # moving average of the first-sight loss
        self.best = float("inf")
        self.stale = 0  # wake steps since the average last improved

    def observe(self, fresh: int, loss_sum: float) -> None:
        """After a wake step: `fresh` samples seen for the first time, their first-sight losses summing to loss_sum."""
        self.added += fresh
        if fresh:
            loss = loss_sum / fresh
            self.average = loss if self.average is None else 0.9 * self.average + 0.1 * loss
        if self.average is not None and self.average < self.best * (1.0 - self.cfg.plateau_delta):
            self.best, self.stale = self.average, 0
        else:
            self.stale += 1

    def due(self, awake: int) -> str | None:
        """Why a sleep should begin now, after `awake` wake steps, or None."""
        if awake < self.cfg.trigger_min_wake:
            return None
        if self.cfg.trigger_buffer_full and self.added >= self.cfg.buffer_size:
            return "buffer-full"
        if self.cfg.trigger_plateau and self.stale >= self.cfg.trigger_plateau:
            return "plateau"
        return None

    def reset(self) -> None:
        """A sleep began: count afresh, and judge the plateau from where the loss stands now."""
        self.added, self.stale = 0, 0
        self.best = self.average if self.average is not None else float("inf")

    def state_dict(self) -> dict:
        return {"added": self.added, "average": self.average, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.added, self.average = int(state["added"]), state["average"]
        self.best, self.stale = float(state["best"]), int(state["stale"])
