"""A run is a schedule of stages. The trainer's loop asks the schedule which stage runs, takes that stage's
step, and at a boundary ends one stage and begins the next; which stage runs when is data (a list of
phases built from the config), not code in the loop.

Every stage speaks the same small interface:

    ready()            may it begin now? (sleep: only once there is something to consolidate)
    begin(step)        it becomes the running stage
    step(step)         one optimizer step -> StepResult (figures, finite, events to emit)
    end(step)          it stops running -> events to emit (sleep: the consolidation figures)
    done()             it has nothing left to do (the curriculum's last level ended)
    state_dict() / load_state_dict(state)   everything it needs to continue exactly after a resume
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass
class StepResult:
    metrics: dict[str, float]
    finite: bool
    events: list[tuple[str, dict]] = field(default_factory=list)  # (kind, data) for the recorder


class Stage(Protocol):
    name: str

    def ready(self) -> bool: ...

    def begin(self, step: int) -> None: ...

    def step(self, step: int) -> StepResult: ...

    def end(self, step: int) -> list[tuple[str, dict]]: ...

    def done(self) -> bool: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class Phase:
    stage: str  # the name of a stage of the run
    steps: int  # how many steps it runs before the next phase; 0 = until the stage is done
    first: int = 0  # a warm-up: its first run lasts this many steps instead (0: `steps` from the start) ...
    ramp: int = 1  # ... and its runs grow linearly from `first` to `steps` over this many runs

    def length(self, run: int) -> int:
        """Steps of its run number `run` (1 = the first)."""
        if not self.first or not self.steps:
            return self.steps
        return self.first + (self.steps - self.first) * min(run - 1, self.ramp) // self.ramp


class Schedule:
    """Which stage runs at each step: `phases` in order, over and over when `repeat`. A stage can be asked
    for by hand (the `sleep` command); it then begins at the next step boundary."""

    def __init__(self, phases: list[Phase], repeat: bool = True):
        assert phases, "a schedule has at least one phase"
        self.phases, self.repeat = phases, repeat
        self.index = 0
        self.since = 0  # step at which the current phase began
        self.requested: str | None = None
        self.manual = False  # the current phase began on request
        self.begun: dict[str, int] = {}  # how many times each stage has begun
        self.finished = False
        # stages that may ask to begin before the running phase's steps are up: name -> fn(steps the running
        # phase has run) -> why, or None (sleep on a signal); `trigger` holds the last switch's why
        self.early: dict[str, Callable[[int], str | None]] = {}
        self.trigger: str | None = None

    @property
    def current(self) -> str:
        return self.phases[self.index].stage

    def request(self, stage: str) -> None:
        self.requested = stage

    def due(self, step: int, stages: dict[str, Stage]) -> int | None:
        """At a step boundary: the index of the phase to switch to now, or None. Sets `finished` when the
        running stage is done and nothing follows it."""
        phase = self.phases[self.index]
        self.trigger = None
        if stages[phase.stage].done():
            last = self.index == len(self.phases) - 1
            if self.repeat or last:
                self.finished = True
                return None
            return self.index + 1
        if self.requested is not None and self.requested != phase.stage:
            target = next(i for i, p in enumerate(self.phases) if p.stage == self.requested)
        elif phase.steps and (step - self.since >= phase.length(self.run_number()) or self._asked(step)):
            target = self.index + 1
            if target == len(self.phases):
                if not self.repeat:
                    self.finished = True
                    return None
                target = 0
        else:
            return None
        return target if stages[self.phases[target].stage].ready() else None

    def run_number(self) -> int:
        """Which run of its stage the current phase is (1 = the first); the first phase began without a switch."""
        return self.begun.get(self.current, 0) + (self.current == self.phases[0].stage)

    def _next(self) -> str | None:
        last = self.index == len(self.phases) - 1
        return None if last and not self.repeat else self.phases[0 if last else self.index + 1].stage

    def _asked(self, step: int) -> bool:
        ask = self.early.get(self._next())
        self.trigger = ask(step - self.since) if ask is not None else None
        return self.trigger is not None

    def switch(self, step: int, target: int) -> None:
        self.manual = self.requested is not None
        self.requested = None
        self.index, self.since = target, step
        self.begun[self.current] = self.begun.get(self.current, 0) + 1

    def state_dict(self) -> dict:
        return {"index": self.index, "stage": self.current, "since": self.since, "requested": self.requested,
                "manual": self.manual, "begun": dict(self.begun), "finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        self.index, self.since = int(state["index"]), int(state["since"])
        self.requested, self.manual = state["requested"], bool(state["manual"])
        self.begun, self.finished = dict(state["begun"]), bool(state.get("finished", False))
