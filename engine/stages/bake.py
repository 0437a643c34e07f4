"""Prompt baking (after Bhargava et al., "Prompt Baking", 2024): the weights learn to behave without a prompt as
they did with it. For a prompt u the teacher is a frozen copy of the model taken as u's bake begins, read WITH u;
the model is trained WITHOUT u to minimise

    KL(P_teacher(. | u, x) || P(. | x))     summed over the answer positions of the level's questions x

Each level bakes pipeline.bake's prompts in order, pipeline.bake_steps optimizer steps each. Every prompt gets an
optimizer of its own (the run's settings, no warmup, rates x pipeline.bake_lr_scale): the run's optimizer carries
the curriculum's momentum and Grokfast filter, which kept pushing the weights the curriculum's way and raised
the KL it was meant to lower (docs/decisions.md, "prompt baking"); the run's optimizer state is left as it was.
Slots are carried across steps as in wake (deep supervision): every supervision step's answer is pulled towards
the teacher's final answer for that question.

The checkable prompts change the answer (`reverse`: written backwards; `letters`: each digit as a letter), so kept
they would undo the task for every later stage: each is baked into a copy of the model, measured, and dropped.
`letters` is baked as any prompt, from the model read with it. `reverse`'s teacher is the model's own answer without
the prompt, written backwards (`mirrored`): what a model that follows the prompt would say. A small model given
`reverse` after a level's practice does not write its answers backwards, so the prompted copy would bake nothing
checkable (docs/decisions.md, "Checkable prompt"); a letter for a digit is a change it can learn to make.

Figures per prompt on the level's held-out questions, before and after: `kl` (teacher with the prompt against
the model without it, per answer position); `followed` (exact without the prompt, graded against the answer the
prompt asks for: for the checkable prompt, its adherence; `followed_cell`, the same per answer position);
`task_exact` (exact without the prompt against the plain answer); and `exact_with_prompt` (the teacher with the
prompt, graded against what the prompt asks); `agree` (the model without the prompt gives the teacher's answer: for
the checkable prompt, its own earlier answer written backwards, which is its adherence whatever its arithmetic);
`agree_changed` (the same over the questions where the teacher's answer is not the model's own plain one: for the
checkable prompt, the answers that do not read the same backwards, so it is 0 before baking); `with_prompt_own`
(the teacher given the prompt does what it asks to its own plain answer: does the model follow the prompt at all);
`in_form` (the answers without the prompt are written in the prompt's form: for `letters`, letters, right or not;
`in_form_with_prompt`, the teacher's answers given the prompt).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F

from engine.accumulate import BackOff, MicroBatches
from engine.config import OptimConfig
from engine.evaluate import score
from engine.faults import Faults
from engine.model.trm import PAD, Carry, TinyRecursiveModel
from engine.optim import MuGrokfast, build_optimizer
from engine.precision import Precision
from engine.stages import StepResult
from engine.stages.levels import LevelPlan, Timed, level_event, position_events
from engine.tasks.levels import EFFECTS, effect_ids, written_as
from engine.tasks.tokenizer import Problem, stable_rng

# prompts baked into a copy and dropped: a checkable prompt (named after its effect) would undo the task
KEPT_OUT = tuple(effect for effect in EFFECTS if effect != "none")
MIRRORED = ("reverse",)  # prompts whose teacher is the model's own plain answer, written backwards
# figures of the teacher alone: one per prompt
TEACHERS = ("exact_with_prompt", "with_prompt_own", "changed", "in_form_with_prompt")


def frozen(model: TinyRecursiveModel) -> TinyRecursiveModel:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def aligned(teacher_logits: torch.Tensor, teacher_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The teacher's log-probabilities at its answer positions, moved to the student's answer positions (the two
    layouts differ by the prompt in front): (B, S, V), zero outside the answers."""
    out = torch.zeros(labels.shape + teacher_logits.shape[-1:], device=teacher_logits.device)
    logp = F.log_softmax(teacher_logits.float(), -1)
    for b in range(labels.shape[0]):
        src, dst = (teacher_labels[b] != PAD).nonzero()[:, 0], (labels[b] != PAD).nonzero()[:, 0]
        assert len(src) == len(dst), "a prompt changed the answer's length"
        out[b, dst] = logp[b, src]
    return out


def mirrored(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The teacher's log-probabilities over its answer written backwards (EOS stays last): (B, S, V), zero outside
    the answers. The same layout as `labels` (the plain one)."""
    out = torch.zeros(labels.shape + teacher_logits.shape[-1:], device=teacher_logits.device)
    logp = F.log_softmax(teacher_logits.float(), -1)
    for b in range(labels.shape[0]):
        where = (labels[b] != PAD).nonzero()[:, 0]
        out[b, where[:-1]] = logp[b, where[:-1].flip(0)]
        out[b, where[-1:]] = logp[b, where[-1:]]
    return out


def answer_kl(target_logp: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S) KL(target || softmax(logits)) per position, zero where `mask` is False."""
    logp = F.log_softmax(logits.float(), -1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1) * mask


class BakeStage:
    name = "bake"

    def __init__(self, plan: LevelPlan, model: TinyRecursiveModel, optim_cfg: OptimConfig, batch_size: int,
                 device: torch.device, seed: int, micro: MicroBatches, precision: Precision, faults: Faults,
                 on_back_off: Callable[[BackOff], None]):
        self.plan, self.model, self.device = plan, model, device
        self.optim_cfg, self.batch_size = optim_cfg, batch_size
        self.micro, self.precision, self.faults, self.on_back_off = micro, precision, faults, on_back_off
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.level, self.index = 0, 0  # the level being baked, and which of its prompts
        self.steps_done = 0  # optimizer steps on the current prompt
        self.drawn = 0  # questions drawn on this level
        self.teacher: TinyRecursiveModel | None = None
        self.copy: TinyRecursiveModel | None = None  # the model a kept-out prompt is baked into
        self.prompt_optimizer: MuGrokfast | None = None  # the current prompt's own optimizer
        self.carry: Carry | None = None
        self.targets = self.mask = None  # (B, S, V) the teacher's log-probabilities, (B, S) its positions
        self.before: dict[str, float] = {}
        self.reports: dict[str, dict] = {}  # str(level) -> {prompt: figures}
        self.timed = Timed()

    # ---- which prompt, on which weights ----

    @property
    def prompts(self) -> list[str]:
        return list(self.plan.prompts)

    @property
    def prompt(self) -> str:
        return self.prompts[self.index]

    @property
    def student(self) -> TinyRecursiveModel:
        return self.copy if self.copy is not None else self.model

    def _start_prompt(self) -> None:
        self.steps_done = 0
        self.teacher = frozen(self.model)
        if self.prompt in KEPT_OUT:
            self.copy = copy.deepcopy(self.model).train()
        self.prompt_optimizer = self._optimizer()
        self.carry = self.student.initial_carry(self.batch_size, self.device)
        S, V = self.carry.labels.shape[1], self.model.vocab_size
        self.targets = torch.zeros(self.batch_size, S, V, device=self.device)
        self.mask = torch.zeros(self.batch_size, S, dtype=torch.bool, device=self.device)
        self.before = self.measure()

    def _finish_prompt(self) -> None:
        after = self.measure()
        figures = {f"{k}_before": v for k, v in self.before.items() if k not in TEACHERS}
        figures.update({f"{k}_after": v for k, v in after.items() if k not in TEACHERS})
        figures.update({k: self.before[k] for k in TEACHERS if k in self.before})  # a bake resumed from older code
        figures["kept"] = float(self.copy is None)
        self.reports.setdefault(str(self.level), {})[self.prompt] = figures
        self.teacher = self.copy = self.prompt_optimizer = self.carry = self.targets = self.mask = None
        self.index += 1
        if self.index < len(self.prompts):
            self._start_prompt()

    @torch.no_grad()
    def _teacher(self, plain_in, plain, asked_in, asked, teacher_plain=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the teacher's log-probabilities at the plain layout's answer positions, the prompted model's logits).
        `teacher_plain`: the teacher's logits on plain_in when the caller has them already."""
        prompted, _ = self.plan.logits(self.teacher, asked_in)
        if self.prompt in MIRRORED:
            if teacher_plain is None:
                teacher_plain = self.plan.logits(self.teacher, plain_in)[0]
            return mirrored(teacher_plain, plain), prompted
        return aligned(prompted, asked, plain), prompted

    def _optimizer(self) -> MuGrokfast:
        return build_optimizer(self.student, dataclasses.replace(self.optim_cfg, warmup_steps=0))

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """The current prompt's figures on the level's held-out questions (see the module's docstring)."""
        plan, level, text, effect = self.plan, self.level, self.plan.prompts[self.prompt], self.plan.effect(self.prompt)
        asked_in, asked = plan.probe(level, text, effect)
        plain_in, plain = plan.probe(level)
        followed = plain.clone()
        followed[plain != PAD] = asked[asked != PAD]  # the prompt's answer at the plain layout's positions
        teacher_plain = plan.logits(self.teacher, plain_in)[0]  # read by the mirrored target and the own-answer figures
        target, prompted = self._teacher(plain_in, plain, asked_in, asked, teacher_plain)
        logits, _ = plan.logits(self.student, plain_in)
        mask = plain != PAD
        kl = answer_kl(target, logits, mask).sum() / mask.sum().clamp_min(1)
        preds = logits.argmax(-1)
        right, cells = score(preds, followed)
        teacher_answer = plain.masked_scatter(mask, target.argmax(-1)[mask])
        return {"kl": float(kl), "followed": float(right.float().mean()),
                "followed_cell": float(cells.sum()) / max(1, int(mask.sum())),
                "agree": float(score(preds, teacher_answer)[0].float().mean()),
                "task_exact": float(score(preds, plain)[0].float().mean()),
                "exact_with_prompt": float(score(prompted.argmax(-1), asked)[0].float().mean()),
                "in_form": self._in_form(preds, plain, effect),
                "in_form_with_prompt": self._in_form(prompted.argmax(-1), asked, effect),
                **self._own_answers(teacher_plain.argmax(-1), plain, asked, prompted, teacher_answer, preds, effect)}

    @staticmethod
    def _in_form(preds: torch.Tensor, plain: torch.Tensor, effect: str) -> float:
        """Share of the answers without the prompt written in the form the prompt's effect asks for (for
        `letters`, letters in place of digits), whether or not they are right."""
        rows = [written_as(effect, preds[b][plain[b] != PAD].tolist()) for b in range(plain.shape[0])]
        return sum(rows) / max(1, len(rows))

    @torch.no_grad()
    def _own_answers(self, own, plain, asked, prompted, teacher_answer, preds, effect: str) -> dict[str, float]:
        """Figures against the teacher model's own plain answer, whatever its arithmetic. `with_prompt_own`: the
        model given the prompt answers as the prompt asks of its own plain answer (for `reverse`, that answer
        backwards), over the questions where the prompt changes that answer (a one-character answer reads the same
        backwards; every question for a prompt that asks nothing of the answer). `agree_changed`: the model without
        the prompt gives the teacher's answer, over the questions where that answer is not its own plain one (the
        palindromes that make `agree` high before any baking are left out). `own`: the teacher's plain answers."""
        with_prompt, changed, agreed = [], 0, 0
        for b in range(plain.shape[0]):
            where = (plain[b] != PAD).nonzero()[:, 0]
            mine = own[b, where]
            asks = torch.tensor(effect_ids(effect, mine.tolist()), dtype=mine.dtype, device=mine.device)
            if effect == "none" or not torch.equal(asks, mine):
                with_prompt.append(torch.equal(prompted[b].argmax(-1)[asked[b] != PAD], asks))
            if not torch.equal(teacher_answer[b, where], mine):
                changed += 1
                agreed += torch.equal(preds[b, where], teacher_answer[b, where])
        return {"with_prompt_own": sum(with_prompt) / max(1, len(with_prompt)),
                "agree_changed": agreed / max(1, changed), "changed": changed / max(1, plain.shape[0])}

    # ---- the stage ----

    def ready(self) -> bool:
        return True

    def begin(self, step: int) -> None:
        t0 = time.perf_counter()
        self.timed = Timed()
        self.level, self.index, self.drawn = self.plan.level, 0, 0
        self.reports[str(self.level)] = {}
        if self.prompts:
            self._start_prompt()
        self.timed.add(t0)

    def done(self) -> bool:
        return self.level == self.plan.level and self.index >= len(self.prompts)

    def end(self, step: int) -> list[tuple[str, dict]]:
        return []

    def report(self) -> dict[str, float]:
        """The level's figures: every prompt's, keyed `<prompt>_<figure>`, and the level's held-out exact."""
        exact, cell = self.plan.exact(self.model, self.level)
        figures = {"level": self.level, "eval_exact": exact, "eval_cell": cell, **self.timed.figures()}
        for prompt, f in self.reports[str(self.level)].items():
            figures.update({f"{prompt}_{k}": v for k, v in f.items()})
        return figures

    def _questions(self, k: int) -> list[Problem]:
        task, questions = self.plan.at(self.level), self.plan.curriculum.questions
        problems = []
        for _ in range(k):
            rng = stable_rng(self.seed, "bake", self.level, self.drawn)
            self.drawn += 1
            problems.append(task.problem("train", (self.level - 1) * questions + rng.randrange(questions)))
        return problems

    @torch.no_grad()
    def _refill(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Halted slots take the level's next questions without the prompt, their targets the teacher's answer
        with it. Returns the batch's (inputs, labels): the labels are the answers the prompt asks for."""
        need = self.carry.halted.nonzero()[:, 0].tolist()
        inputs, labels = self.carry.inputs.clone(), self.carry.labels.clone()
        if not need:
            return inputs, labels
        task, text, effect = self.plan.at(self.level), self.plan.prompts[self.prompt], self.plan.effect(self.prompt)
        problems = self._questions(len(need))
        plain_in, plain = self.plan.stack([task.encode(p) for p in problems])
        asked_in, asked = self.plan.stack([task.prompted(p, text, effect) for p in problems])
        followed = plain.clone()
        followed[plain != PAD] = asked[asked != PAD]
        self.targets[need] = self._teacher(plain_in, plain, asked_in, asked)[0]
        self.mask[need] = plain != PAD
        inputs[need], labels[need] = plain_in, followed
        return inputs, labels

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        inputs, labels = self._refill()
        student = self.student
        student.train()
        carry, metrics, finite = self.micro.attempt(
            step, lambda: self._forward_backward(student, inputs, labels), [self.generator], self.on_back_off,
            inject=lambda: self.faults.raise_oom(step))
        optimizer = self.prompt_optimizer
        if finite and self.precision.unscale(optimizer):
            optimizer.step(lr_scale=self.plan.cfg.bake_lr_scale)
        optimizer.zero_grad(set_to_none=True)
        self.carry = carry
        self.steps_done += 1
        metrics.update({"bake/prompt": float(self.index), "pipeline/level": float(self.level)})
        if self.steps_done >= self.plan.cfg.bake_steps:
            self._finish_prompt()
        if self.micro.chunks > 1:
            metrics["micro_batches"] = float(self.micro.chunks)
        metrics["step_time"] = time.perf_counter() - t0
        self.timed.add(t0, step=True)
        events = [level_event(self.report())] if self.done() else []
        return StepResult(metrics, finite, events + position_events(self, self.timed.steps))

    def position(self) -> dict:
        total = len(self.prompts) * self.plan.cfg.bake_steps
        done = self.index * self.plan.cfg.bake_steps + (self.steps_done if self.index < len(self.prompts) else 0)
        return self.plan.position(self.name, done / total if total else 1.0, self.timed.steps)

    def _forward_backward(self, student: TinyRecursiveModel, inputs: torch.Tensor, labels: torch.Tensor
                          ) -> tuple[Carry, dict[str, float], bool]:
        optimizer = self.prompt_optimizer
        optimizer.zero_grad(set_to_none=True)  # a retry after an out-of-memory error starts clean
        B = inputs.shape[0]
        n_cells = self.mask.sum().clamp_min(1)
        carries, total, followed, finite = [], 0.0, 0.0, True
        for sl in self.micro.split(B):
            with self.precision.autocast():
                carry, out = student(self.carry.slots(sl), inputs[sl], labels[sl], generator=self.generator,
                                     norm=(n_cells, B))
            loss = answer_kl(self.targets[sl], out.logits, self.mask[sl]).sum() / n_cells
            if finite and bool(torch.isfinite(loss)):
                self.precision.backward(loss)
            else:
                finite = False
            carries.append(carry)
            total += float(loss.detach())
            followed += out.metrics["exact_acc"]
        if not finite:
            optimizer.zero_grad(set_to_none=True)
        carry = carries[0] if len(carries) == 1 else Carry.cat(carries)
        return carry, {"bake_kl": total, "bake_followed": followed}, finite

    # ---- resume ----

    def state_dict(self) -> dict:
        state = {"level": self.level, "index": self.index, "steps_done": self.steps_done, "drawn": self.drawn,
                 "generator": self.generator.get_state(), "before": dict(self.before), "timed": self.timed.state_dict(),
                 "reports": {k: {p: dict(f) for p, f in v.items()} for k, v in self.reports.items()}}
        if self.teacher is not None:  # in the middle of a prompt
            state["teacher"] = {k: v.clone() for k, v in self.teacher.state_dict().items()}
            state["carry"] = self.carry.to_state()
            state["targets"], state["mask"] = self.targets.clone(), self.mask.clone()
            state["prompt_optimizer"] = self.prompt_optimizer.state_dict()
        if self.copy is not None:
            state["copy"] = {k: v.clone() for k, v in self.copy.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.level, self.index = int(state["level"]), int(state["index"])
        self.steps_done, self.drawn = int(state["steps_done"]), int(state["drawn"])
        self.generator.set_state(state["generator"].cpu())
        self.before = dict(state["before"])
        self.timed.load_state_dict(state["timed"])
        self.reports = {k: {p: dict(f) for p, f in v.items()} for k, v in state["reports"].items()}
        self.teacher = self.copy = self.prompt_optimizer = self.carry = self.targets = self.mask = None
        if "copy" in state:
            self.copy = copy.deepcopy(self.model).train()
            self.copy.load_state_dict(state["copy"])
        if "teacher" in state:
            self.teacher = frozen(self.model)
            self.teacher.load_state_dict(state["teacher"])
            self.carry = Carry.from_state({k: v.to(self.device) for k, v in state["carry"].items()})
            self.targets, self.mask = state["targets"].to(self.device), state["mask"].to(self.device)
            self.prompt_optimizer = self._optimizer()
            self.prompt_optimizer.load_state_dict(state["prompt_optimizer"])
