"""The adaptive question queue: mastered questions leave, failures get hints, successes spawn variants.

A level starts with `questions` questions. The trainer asks for a batch (`next_batch`), grades
the model's answers and reports them (`report`):

- correct without a hint: the question's streak rises; at `mastery` in a row it leaves the
  queue, otherwise it is replaced by a variant (same template, new values);
- correct with a hint: replaced by a variant with one hint level less (hints fade; only
  unhinted answers count toward mastery, so "mastered" means solved alone);
- wrong: the streak resets and the question stays, unchanged, for the model to try again;
  once `hint_from` of the level is mastered, its `hint_after`-th wrong answer in a row adds one
  hint level (a worked step, then part of the answer, written into the model's input).

Why hints wait: a model that predicts every answer position at once learns nothing from a
revealed character but to copy it, so a hint swaps the practice a failed question needs for a
free answer, and a hinted success retires the question to a variant before it was ever solved
alone. While most of a level is unmastered, failures are the model not having learned yet,
which practice fixes; hints are for the questions that keep failing once the rest is learned
(docs/decisions.md, "curriculum hints").

Mastered questions come back for spaced review (`review_share` of the refilled slots, when any
is due): a question is due `review_gap` served questions after it was mastered, and each review
it passes doubles its gap; one it fails goes back into the queue when it is of the current level,
or is due again after one gap when it is of an earlier level. With `review_unmastered`, the
questions a level leaves unmastered when it ends join the review as well, due after one gap.
Without review a mastered question was never seen again, and the model forgot it
(docs/decisions.md, "Curriculum against uniform").

A level ends when fewer than `threshold` of its questions remain, after `max_epochs` passes over
its queue, or when the caller ends it (`end_level`: the level pipeline does, on held-out figures);
the next level is harder. After the last level the queue is `done`.

Every change is an event (`drain_events`) for the run store and the console, and the whole
state is plain JSON-able data (`state_dict` / `load_state_dict`), so a resumed run serves
exactly the batches it would have served. Variants and hints come from a `QuestionProvider`;
the default one, `ProgrammaticProvider`, uses the task generators.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass
from typing import Protocol

from engine.config import ConfigError, CurriculumConfig, TaskConfig
from engine.tasks.base import Sample
from engine.tasks.registry import get_task, task_params
from engine.tasks.tokenizer import Problem, TextTask, stable_rng

STATE_VERSION = 3
HINT_AFTER = 2  # wrong answers in a row on a question before it gets its first hint
HINT_FROM = 0.5  # ... and only once at least this share of the level is mastered
ID, INDEX, VARIANT, STREAK, HINT, ATTEMPTS, MISSES = range(7)  # fields of a queue entry (a plain list)
DUE, R_LEVEL, R_INDEX, R_VARIANT, BOX = range(5)  # fields of a review entry (a plain list, kept as a heap)


class QuestionProvider(Protocol):
    seq_len: int
    vocab_size: int

    def question(self, level: int, index: int, variant: int) -> Problem:
        """Question `index` of the run as asked at `level`; variant n >= 1: same template, new values."""
        ...

    def encode(self, problem: Problem, hint: int) -> Sample:
        """The problem laid out for the model, with hint level `hint` (0 = none) in the input."""
        ...

    def max_hint(self, problem: Problem) -> int:
        ...

    def grade(self, problem: Problem, predicted: list[int], sample: Sample | None = None) -> bool:
        """Whether the model's predicted ids (one per position of `sample`, the layout it was
        shown, by default the unhinted one) answer the problem."""
        ...


class ProgrammaticProvider:
    """Questions from a generated task; level L mixes difficulties 1..3, harder as L rises.

    Level 1 is all difficulty 1, the last level all difficulty 3; in between, each question's
    difficulty is drawn so that the share of harder questions rises with every level.
    """

    def __init__(self, task: str = "arithmetic", levels: int = 10, seed: int = 0, **params):
        self.name, self.levels, self.seed = task, levels, seed
        self.tasks = {d: get_task(task, difficulty=d, seed=seed, **params) for d in (1, 2, 3)}
        if not isinstance(self.tasks[1], TextTask):
            raise ConfigError(f"task {task!r} cannot feed the curriculum; it needs a generated task "
                              "such as arithmetic, math, recall, maze or program.")
        self.seq_len, self.vocab_size = self.tasks[1].seq_len, self.tasks[1].vocab_size
        assert all(t.seq_len == self.seq_len for t in self.tasks.values()), "difficulties must share one layout"

    @classmethod
    def from_config(cls, task: TaskConfig, curriculum: CurriculumConfig) -> ProgrammaticProvider:
        """The provider for [task] and [curriculum]; difficulty comes from the level, not task.difficulty."""
        taken = set(task_params(task.name)) - {"difficulty", "seed"}
        params = {k: v for k, v in dataclasses.asdict(task).items() if k in taken}
        return cls(task.name, levels=curriculum.levels, seed=task.seed, **params)

    def difficulty(self, level: int, index: int) -> int:
        position = 2 * (level - 1) / (self.levels - 1) if self.levels > 1 else 0.0  # 0..2 over the levels
        harder = stable_rng(self.seed, "difficulty", level, index).random() < position - int(position)
        return min(3, 1 + int(position) + harder)

    def question(self, level: int, index: int, variant: int) -> Problem:
        task = self.tasks[self.difficulty(level, index)]
        return task.variant(task.problem("train", index), variant)

    # the difficulties differ only in their templates; layout, hints and grading are shared
    def encode(self, problem: Problem, hint: int) -> Sample:
        return self.tasks[1].encode(problem, hint)

    def max_hint(self, problem: Problem) -> int:
        return self.tasks[1].max_hint(problem)

    def grade(self, problem: Problem, predicted: list[int], sample: Sample | None = None) -> bool:
        return self.tasks[1].grade(problem, predicted, sample)


@dataclass(frozen=True)
class Item:
    id: int  # report the answer under this id; it changes whenever the question changes
    level: int
    index: int  # the question's number in the run
    variant: int
    hint: int  # hint level applied to `sample`
    streak: int  # unhinted correct answers in a row so far
    problem: Problem
    sample: Sample  # what the model sees, the hint already in its input


class CurriculumQueue:
    def __init__(self, provider: QuestionProvider, questions: int = 20_000, levels: int = 10, mastery: int = 3,
                 threshold: float = 0.025, max_epochs: int = 30, start_level: int = 1, seed: int = 0,
                 hint_after: int | None = None, hint_from: float | None = None, review_gap: int = 256,
                 review_unmastered: bool = False):
        if not 1 <= start_level <= levels:
            raise ConfigError(f"curriculum.start_level = {start_level} is out of range; allowed is 1 to "
                              f"curriculum.levels = {levels}.")
        assert questions >= 1 and mastery >= 1 and max_epochs >= 1 and 0.0 <= threshold <= 1.0
        self.provider = provider
        self.hint_after = HINT_AFTER if hint_after is None else hint_after
        self.hint_from = HINT_FROM if hint_from is None else hint_from
        assert self.hint_after >= 1 and 0.0 <= self.hint_from <= 1.0
        self.questions, self.levels, self.mastery = questions, levels, mastery
        self.threshold, self.max_epochs, self.seed = threshold, max_epochs, seed
        assert review_gap >= 1
        self.review_gap, self.review_unmastered = review_gap, review_unmastered
        self.served = 0  # questions served so far, queue and review: the clock of the review gaps
        self.reviews: list[list[int]] = []  # mastered questions, a heap by the served count they are due at
        self.reviewing: dict[int, list[int]] = {}  # id -> review entry, for reviews served and not yet graded
        self.events: list[dict] = []
        self._problems: dict[int, Problem] = {}  # id -> problem, a cache: rebuilt on demand after a resume
        self.next_id = 0
        self.done = False
        self._start_level(start_level)

    @classmethod
    def from_config(cls, cfg: CurriculumConfig, provider: QuestionProvider, seed: int = 0) -> CurriculumQueue:
        return cls(provider, questions=cfg.questions, levels=cfg.levels, mastery=cfg.mastery,
                   threshold=cfg.threshold, max_epochs=cfg.max_epochs, start_level=cfg.start_level,
                   hint_after=cfg.hint_after, hint_from=cfg.hint_from, review_gap=cfg.review_gap, seed=seed,
                   review_unmastered=cfg.review_unmastered)

    # ------------------------------------------------------------------------- levels and epochs

    def _start_level(self, level: int) -> None:
        self.level, self.epoch, self.size, self.remaining = level, 0, self.questions, self.questions
        first = (level - 1) * self.questions  # each level asks new questions
        self.entries: list[list[int] | None] = [
            [self.next_id + i, first + i, 0, 0, 0, 0, 0] for i in range(self.questions)
        ]
        self.next_id += self.questions
        self.slot_of = {entry[ID]: slot for slot, entry in enumerate(self.entries)}
        self._problems.clear()
        self._shuffle()
        self._emit("level_start")

    def _shuffle(self) -> None:
        self.order = list(range(len(self.entries)))
        stable_rng(self.seed, "order", self.level, self.epoch).shuffle(self.order)
        self.cursor = 0

    def _next_epoch(self) -> None:
        """One pass over the queue is over: drop the mastered slots, count it, maybe end the level."""
        self.entries = [e for e in self.entries if e is not None]
        self.slot_of = {entry[ID]: slot for slot, entry in enumerate(self.entries)}
        self.epoch += 1
        self._emit("epoch")
        if self.epoch >= self.max_epochs:
            self._end_level("epochs")
        else:
            self._shuffle()

    def end_level(self, reason: str) -> None:
        """End the current level now (the caller's judgement, e.g. held-out figures), as the queue ends it."""
        assert not self.done, "the queue is done"
        self._end_level(reason)

    def _end_level(self, reason: str) -> None:
        self._emit("level_end", reason=reason, epochs=self.epoch)
        if self.review_unmastered:
            # a level ended on held-out figures can leave most of its questions unmastered, and then review
            # (mastered questions only) would give the level almost no practice after it ends
            due = self.served + self.review_gap
            for e in self.entries:
                if e is not None:
                    heapq.heappush(self.reviews, [due, self.level, e[INDEX], e[VARIANT], 0])
        if self.level >= self.levels:
            self.done = True
            self._emit("done")
        else:
            self._start_level(self.level + 1)

    # ------------------------------------------------------------------------- the trainer's side

    def next_batch(self, n: int) -> list[Item]:
        """The next `n` questions in queue order, all of one level: fewer once the level ends on its passes
        (the next level's questions wait for the next call: in the level pipeline they belong to the next
        curriculum stage, after the level's other stages) or the queue is done. A queue smaller than `n` is
        served round after round, so the same question may come twice."""
        items: list[Item] = []
        level = self.level
        while len(items) < n and not self.done and self.level == level:
            if self.cursor >= len(self.order):
                self._next_epoch()
                continue
            entry = self.entries[self.order[self.cursor]]
            self.cursor += 1
            if entry is not None:
                items.append(self._item(entry))
        self.served += len(items)
        return items

    def due_reviews(self, n: int) -> list[Item]:
        """Up to `n` mastered questions whose review is due, the longest overdue first; graded like the queue's."""
        items: list[Item] = []
        while len(items) < n and self.reviews and self.reviews[0][DUE] <= self.served and not self.done:
            review = heapq.heappop(self.reviews)
            problem = self.provider.question(review[R_LEVEL], review[R_INDEX], review[R_VARIANT])
            self.reviewing[self.next_id] = review
            items.append(Item(id=self.next_id, level=review[R_LEVEL], index=review[R_INDEX],
                              variant=review[R_VARIANT], hint=0, streak=self.mastery, problem=problem,
                              sample=self.provider.encode(problem, 0)))
            self.next_id += 1
        self.served += len(items)
        return items

    def _reviewed(self, review: list[int], ok: bool) -> bool:
        """A graded review: passed, its gap doubles; failed, back into the queue when it is of this level
        (True), else due again after one gap."""
        if not ok and review[R_LEVEL] == self.level:
            entry = [self.next_id, review[R_INDEX], review[R_VARIANT], 0, 0, 0, 1]
            self.entries.append(entry)
            self.order.append(len(self.entries) - 1)  # asked again within this pass
            self.slot_of[entry[ID]] = len(self.entries) - 1
            self.next_id += 1
            self.remaining += 1
            return True
        review[BOX] = review[BOX] + 1 if ok else 0
        review[DUE] = self.served + self.review_gap * 2 ** min(review[BOX], 20)
        heapq.heappush(self.reviews, review)
        return False

    def _problem(self, entry: list[int]) -> Problem:
        if entry[ID] not in self._problems:
            self._problems[entry[ID]] = self.provider.question(self.level, entry[INDEX], entry[VARIANT])
        return self._problems[entry[ID]]

    def _item(self, entry: list[int]) -> Item:
        problem = self._problem(entry)
        return Item(id=entry[ID], level=self.level, index=entry[INDEX], variant=entry[VARIANT], hint=entry[HINT],
                    streak=entry[STREAK], problem=problem, sample=self.provider.encode(problem, entry[HINT]))

    def report(self, item_ids: list[int], correct: list[bool]) -> None:
        """Grades for served items. Ids no longer in the queue (answered twice in one batch, or
        from a level that has ended) are counted as stale and change nothing."""
        assert len(item_ids) == len(correct), "one grade per item"
        mastered, variants, hinted, retried, stale = [], [], [], [], 0
        reviewed = forgotten = 0
        for item_id, ok in zip(item_ids, correct):
            if item_id in self.reviewing:
                reviewed += 1
                forgotten += self._reviewed(self.reviewing.pop(item_id), bool(ok))
                continue
            slot = self.slot_of.pop(item_id, None)
            if slot is None:
                stale += 1
                continue
            entry = self.entries[slot]
            problem = self._problems.pop(item_id, None)
            entry[ATTEMPTS] += 1
            if ok:
                entry[MISSES] = 0
                if entry[HINT] == 0:
                    entry[STREAK] += 1
                if entry[STREAK] >= self.mastery:
                    self.entries[slot] = None
                    self.remaining -= 1
                    mastered.append(item_id)
                    heapq.heappush(self.reviews, [self.served + self.review_gap, self.level, entry[INDEX],
                                                  entry[VARIANT], 0])
                    continue
                entry[VARIANT] += 1
                entry[HINT] = max(0, entry[HINT] - 1)
                variants.append(item_id)
            else:
                entry[STREAK] = 0
                entry[MISSES] += 1
                problem = problem or self.provider.question(self.level, entry[INDEX], entry[VARIANT])
                if entry[MISSES] >= self.hint_after and self.mastered_share() >= self.hint_from:
                    entry[HINT] = min(entry[HINT] + 1, self.provider.max_hint(problem))
                    hinted.append(item_id)
                else:
                    retried.append(item_id)
            entry[ID] = self.next_id  # a changed question answers under a new id
            self.next_id += 1
            self.slot_of[entry[ID]] = slot
            if not ok:
                self._problems[entry[ID]] = problem  # same question, only the hint changed
        self._emit("report", correct=sum(map(bool, correct)), total=len(correct), mastered=mastered,
                   variants=variants, hinted=hinted, retried=retried, stale=stale, reviewed=reviewed,
                   forgotten=forgotten)
        if self.remaining == 0 or self.remaining < self.threshold * self.size:
            self._end_level("threshold")

    # ------------------------------------------------------------------------- events and state

    def mastered_share(self) -> float:
        """Share of the level's questions mastered so far: has the model learned the level's basics?"""
        return 1.0 - self.remaining / self.size

    def _emit(self, kind: str, **data) -> None:
        self.events.append({"kind": kind, "level": self.level, "epoch": self.epoch, "size": self.size,
                            "remaining": self.remaining, **data})

    def drain_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events

    def summary(self) -> dict:
        """The queue at a glance, for the console: counts by streak and by hint level."""
        live = [e for e in self.entries if e is not None]
        streaks = [sum(1 for e in live if e[STREAK] == s) for s in range(self.mastery)]
        hints = {}
        for e in live:
            hints[e[HINT]] = hints.get(e[HINT], 0) + 1
        return {"level": self.level, "levels": self.levels, "epoch": self.epoch, "size": self.size,
                "remaining": self.remaining, "done": self.done, "by_streak": streaks,
                "by_hint": {str(k): v for k, v in sorted(hints.items())}}

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "settings": {"questions": self.questions, "levels": self.levels, "mastery": self.mastery,
                         "threshold": self.threshold, "max_epochs": self.max_epochs, "seed": self.seed,
                         "hint_after": self.hint_after, "hint_from": self.hint_from, "review_gap": self.review_gap,
                         "review_unmastered": self.review_unmastered},
            "level": self.level, "epoch": self.epoch, "size": self.size, "remaining": self.remaining,
            "done": self.done, "next_id": self.next_id, "cursor": self.cursor,
            "order": list(self.order), "entries": [None if e is None else list(e) for e in self.entries],
            "served": self.served, "reviews": [list(r) for r in self.reviews],
            "reviewing": {str(k): list(v) for k, v in self.reviewing.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; its settings (sizes, mastery, threshold...) win over the constructor's."""
        version = state.get("version")
        assert version in (1, 2, STATE_VERSION), f"curriculum state version {version}"
        settings = state["settings"]
        # version 1 hinted at the first wrong answer and kept no count of misses
        self.hint_after, self.hint_from = settings.get("hint_after", 1), settings.get("hint_from", 0.0)
        self.questions, self.levels, self.mastery = settings["questions"], settings["levels"], settings["mastery"]
        self.threshold, self.max_epochs, self.seed = settings["threshold"], settings["max_epochs"], settings["seed"]
        self.level, self.epoch, self.size = state["level"], state["epoch"], state["size"]
        self.remaining, self.done, self.next_id = state["remaining"], state["done"], state["next_id"]
        self.cursor, self.order = state["cursor"], list(state["order"])
        self.entries = [None if e is None else list(e) + [0] * (MISSES + 1 - len(e)) for e in state["entries"]]
        self.slot_of = {e[ID]: slot for slot, e in enumerate(self.entries) if e is not None}
        # versions 1 and 2 had no review: mastered questions had left for good
        self.review_gap = settings.get("review_gap", self.review_gap)
        self.review_unmastered = settings.get("review_unmastered", False)
        self.served, self.reviews = state.get("served", 0), [list(r) for r in state.get("reviews", [])]
        self.reviewing = {int(k): list(v) for k, v in state.get("reviewing", {}).items()}
        self._problems.clear()
        self.events = []


class CurriculumFeed:
    """The trainer's side of the queue: which question each batch slot holds, and its grade when it halts.

    A slot keeps its question across supervision steps; when the model halts it, the answer it
    gave at that step is graded and reported. All state is plain data, so a resumed run grades
    the questions its slots were holding, exactly as the interrupted run would have.
    """

    def __init__(self, queue: CurriculumQueue, provider: QuestionProvider, batch_size: int,
                 review_share: float = 0.0):
        self.queue, self.provider = queue, provider
        self.slots: list[Item | None] = [None] * batch_size
        self.passed = self.failed = 0  # answers graded in the current level
        self.reviews = 0  # review questions served so far: their position in the level's question set
        self.review_share = review_share
        self.review_credit = 0.0  # slots owed to spaced review: review_share of every refill, carried over

    @classmethod
    def from_config(cls, task: TaskConfig, curriculum: CurriculumConfig, batch_size: int) -> CurriculumFeed:
        provider = ProgrammaticProvider.from_config(task, curriculum)
        return cls(CurriculumQueue.from_config(curriculum, provider, seed=task.seed), provider, batch_size,
                   review_share=curriculum.review_share)

    @property
    def done(self) -> bool:
        return self.queue.done

    def fill(self, need: list[bool]) -> dict[int, Sample]:
        """New questions for the slots in `need`: {slot: sample}. Once the queue is done, none."""
        slots = [i for i, n in enumerate(need) if n]
        self.review_credit += self.review_share * len(slots)
        items = self.queue.due_reviews(int(self.review_credit))
        self.review_credit -= int(self.review_credit)  # owed slots with nothing due go to the queue
        # Near the end of a level fewer questions remain than slots; serving the last few again
        # and again overfits them and undoes the level, so the other slots review the level's
        # whole question set (ungraded, no hints).
        level = self.queue.level  # the queue may end it while serving; the refill stays within it
        items += self.queue.next_batch(min(len(slots) - len(items), max(1, self.queue.remaining)))
        for slot in slots:
            self.slots[slot] = None
        samples = {}
        for slot, item in zip(slots, items):
            self.slots[slot] = item
            samples[slot] = item.sample
        if items:
            first = (level - 1) * self.queue.questions
            for slot in slots[len(items):]:
                index = first + self.reviews % self.queue.questions
                self.reviews += 1
                samples[slot] = self.provider.encode(self.provider.question(level, index, 0), 0)
        return samples

    def grade(self, halted: list[bool], predicted: list[list[int]]) -> dict | None:
        """Grade the halted slots' answers and report them; the change as one event, or None."""
        ids, correct = [], []
        for slot, (h, pred) in enumerate(zip(halted, predicted)):
            item = self.slots[slot]
            if h and item is not None:
                ids.append(item.id)
                correct.append(bool(self.provider.grade(item.problem, pred, item.sample)))
        if not ids:
            return None
        level = self.queue.level
        self.queue.report(ids, correct)
        changes = self.queue.drain_events()
        if self.queue.level != level:
            self.passed = self.failed = 0
        else:
            self.passed += sum(correct)
            self.failed += len(correct) - sum(correct)
        summary = self.queue.summary()
        hinted = sum(v for k, v in summary["by_hint"].items() if k != "0")
        report = next((c for c in changes if c["kind"] == "report"), {})
        return {**summary, "changes": [c["kind"] for c in changes if c["kind"] != "report"],
                "mastered": len(report.get("mastered", ())),
                # the console's queue table: one row per graded batch, with the level's running counts
                "item": {"id": f"L{level} batch of {len(ids)}", "pass": self.passed, "fail": self.failed,
                         "hint": hinted}}

    def metrics(self) -> dict[str, float]:
        return {"curriculum/remaining": float(self.queue.remaining), "curriculum/level": float(self.queue.level),
                "curriculum/remaining_fraction": self.queue.remaining / max(1, self.queue.size)}

    def state_dict(self) -> dict:
        # a slot's question is rebuilt from (level, index, variant, hint); the problem text is not stored
        slots = [None if it is None else [it.id, it.level, it.index, it.variant, it.hint, it.streak]
                 for it in self.slots]
        return {"queue": self.queue.state_dict(), "slots": slots, "passed": self.passed, "failed": self.failed,
                "reviews": self.reviews, "review_credit": self.review_credit}

    def load_state_dict(self, state: dict) -> None:
        self.queue.load_state_dict(state["queue"])
        self.passed, self.failed = state["passed"], state["failed"]
        self.reviews = int(state.get("reviews", 0))
        self.review_credit = float(state.get("review_credit", 0.0))
        self.slots = []
        for s in state["slots"]:
            if s is None:
                self.slots.append(None)
                continue
            item_id, level, index, variant, hint, streak = s
            problem = self.provider.question(level, index, variant)
            self.slots.append(Item(id=item_id, level=level, index=index, variant=variant, hint=hint, streak=streak,
                                   problem=problem, sample=self.provider.encode(problem, hint)))
