"""Typed run configuration: one schema, loaded from TOML, overridden by `key.sub=value`.

Every value that reaches the engine from a file or the command line passes `validate()`,
which raises `ConfigError` with one sentence naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A user-facing configuration mistake; its message is one sentence."""


@dataclass
class ModelConfig:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    expansion: float = 4.0
    mixer: Literal["attention", "mlp"] = "attention"
    H_cycles: int = 3  # T: outer cycles; the first T-1 run without gradient
    L_cycles: int = 6  # n: latent updates per outer cycle
    halt_max_steps: int = 16  # N_sup: deep-supervision steps a slot may take
    halt_exploration: float = 0.1
    halt_threshold: float = 0.5  # training: a slot halts once sigmoid(q_halt) exceeds this
    puzzle_prefix: int = 0  # extra leading positions (the paper's 16 puzzle-embedding slots)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # per-step loss weights over the answer history y0..yT ("Cognate" form); empty = last only
    step_loss_weights: list[float] = field(default_factory=list)
    detach_cycles: bool = False  # Cognate form: each answer's loss reaches back through its own cycle only
    memory: Literal["none", "titans-mag"] = "none"
    window: int = 0  # sliding attention window (0 = full attention)
    d_mem: int = 64  # width of the neural memory MLP
    memory_chunk: int = 16
    memory_decay: float = 0.99
    memory_theta_max: float = 1.0  # cap of the memory's inner learning rate
    memory_max_grad_norm: float = 30.0  # per-token clip of the memory's inner gradients (0: off)
    # a token writes to the memory only when its surprise (relative inner loss) reaches this (0: every token)
    memory_surprise_threshold: float = 0.0
    memory_max_updates: int = 0  # most tokens per sequence that write in one memory pass, most surprising first (0: no cap)
    persistent_tokens: int = 4
    bitnet: bool = False  # BitNet b1.58 ternary hidden linears (STE); no optim preset turns it on
    compile: bool = False  # torch.compile the recursion's network f while training (each stage's first step waits)
    checkpointing: bool = False  # recompute each block's activations in the backward instead of keeping them


@dataclass
class TaskConfig:
    # the names of engine/tasks/registry.py's TASKS (a test keeps the two lists equal)
    name: Literal["sudoku", "modular", "math", "arithmetic", "algebra", "sequence", "word", "recall", "gap",
                  "surprise", "maze", "program", "dexter-memory", "dexter-tool", "dexter-reasoning",
                  "levels"] = "sudoku"
    size: int = 4  # Sudoku side: 4, 6 or 9
    difficulty: int | list[int] = 1  # a list is a mix (MIXED_DIFFICULTY_TASKS): sample i at difficulty[i % len]
    seed: int = 0
    augment: bool = True
    steps: bool = False  # math tasks: worked steps are part of the target, not only hints
    p: int = 97  # modular: the modulus
    op: Literal["add", "sub", "mul", "div"] = "mul"  # modular: the operation
    train_fraction: float = 0.5  # modular: share of the table used for training
    side: int = 11  # maze: grid side (odd)
    path: str = ""  # dexter-*: the folder `lab dexter build` wrote (dataset.json, tokenizer.json, *.jsonl)
    prompt_chars: int = 0  # levels: room for a prompt before the question, in characters
    carry_turns: bool = False  # dexter-memory: a follow-up turn continues its conversation's slot, latents kept
    references: Literal["one", "varied"] = "one"  # program: the reference is one per template, or drawn among equals


# The [task] keys each task takes (a test keeps this equal to what engine/tasks/registry.py's tasks take);
# seed and difficulty are taken by every task, since other tasks are built from them (lab eval --task, curriculum).
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "sudoku": ("size", "difficulty", "seed", "augment"),
    "modular": ("p", "op", "train_fraction", "seed"),
    "math": ("difficulty", "seed", "steps"),
    "arithmetic": ("difficulty", "seed", "steps"),
    "algebra": ("difficulty", "seed", "steps"),
    "sequence": ("difficulty", "seed", "steps"),
    "word": ("difficulty", "seed", "steps"),
    "recall": ("difficulty", "seed"),
    "gap": ("difficulty", "seed"),
    "surprise": ("difficulty", "seed"),
    "maze": ("difficulty", "seed", "side"),
    "program": ("difficulty", "seed", "references"),
    "dexter-memory": ("path", "difficulty", "seed", "carry_turns"),
    "dexter-tool": ("path", "difficulty", "seed"),
    "dexter-reasoning": ("path", "difficulty", "seed"),
    "levels": ("difficulty", "seed", "prompt_chars"),
}
TASK_KEYS_ANY_TASK = ("name", "seed", "difficulty")
# The tasks whose task.difficulty may be a list of difficulties, mixed sample by sample.
MIXED_DIFFICULTY_TASKS = ("sudoku",)


@dataclass
class OptimConfig:
    # A preset fills every field left unset (None); a field set in the file or by --set wins.
    # Presets live in engine/optim.py (PRESETS); `engine.optim.resolve(cfg)` gives the concrete values.
    preset: Literal["adamw", "muon", "phase1", "phase5"] = "adamw"
    lr: float | None = None  # Muon's lr under the Muon presets, AdamW's under "adamw"
    adamw_lr: float | None = None  # the AdamW fallback (embeddings, heads, norms, biases) under Muon presets
    weight_decay: float = 0.1
    adamw_weight_decay: float | None = None  # the AdamW fallback's decay of embeddings and heads; unset = weight_decay
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    grad_clip: float = 1.0  # global gradient-norm clip before the Grokfast filter; 0 = off
    schedule: Literal["constant", "cosine"] = "constant"  # after warmup
    min_lr_ratio: float = 0.1  # cosine ends at lr x this at train.max_steps
    momentum: float | None = None  # Muon momentum
    nesterov: bool | None = None
    ns_steps: int | None = None  # Newton-Schulz iterations in Muon
    muon_lr_scaling: Literal["original", "match_rms_adamw"] = "original"  # torch.optim.Muon adjust_lr_fn
    muon_exclude: list[str] = field(default_factory=list)  # glob patterns of parameter names kept off Muon
    grokfast_alpha: float | None = None  # EMA decay of the slow-gradient filter, in [0, 1)
    grokfast_lambda: float | None = None  # amplification of the slow gradient; 0 = off
    grokfast_scope: Literal["all", "aux", "off"] = "aux"  # aux = AdamW-routed parameters only (see optim.py)
    qk_clip_tau: float | None = None  # largest allowed attention logit; 0 = off


@dataclass
class TrainConfig:
    batch_size: int = 64
    max_steps: int = 2000
    max_minutes: float = 0.0  # wall-clock budget; 0 = none
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # auto: bfloat16 on a CUDA device that supports it, float32 elsewhere; float16 needs CUDA (and a gradient scaler)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vram_limit: float = 0.85  # used/total VRAM above which the micro-batch is halved before an OOM; 1 = off
    ram_limit: float = 1.0  # used/total system RAM above which the micro-batch is halved the same way; 1 = off
    accumulation: int = 1  # the batch runs as at least this many micro-batches, their gradients accumulated
    ema_decay: float = 0.999  # of the weights' moving average that evaluation uses (eval.use_ema)
    # program task: "expert" trains on the model's own programs that pass the sandbox (engine/outcome.py)
    outcome: Literal["ce", "expert"] = "ce"
    outcome_samples: int = 4  # programs tried per fresh question: the greedy one and samples
    outcome_temperature: float = 1.0  # ... drawn at this temperature


@dataclass
class EvalConfig:
    every: int = 200
    n_puzzles: int = 256
    batch_size: int = 256
    use_ema: bool = True


@dataclass
class CheckpointConfig:
    every: int = 500
    keep: int = 3


@dataclass
class LogConfig:
    flush_seconds: float = 0.5
    telemetry_seconds: float = 2.0
    print_seconds: float = 3.0


@dataclass
class CurriculumConfig:
    # The self-shrinking question queue of engine/curriculum.py; off = the task's plain stream.
    enabled: bool = False
    questions: int = 20_000  # questions a level starts with
    levels: int = 10
    mastery: int = 3  # unhinted correct answers in a row before a question leaves the queue
    threshold: float = 0.025  # a level ends when fewer than this share of its questions remain
    max_epochs: int = 30  # ... or after this many passes over its queue
    start_level: int = 1
    hint_after: int = 2  # wrong answers in a row on a question before it gets a hint
    hint_from: float = 0.5  # ... and only once this share of the level is mastered (early hints leak answers)
    review_share: float = 0.0  # share of refilled slots that review mastered questions once they are due
    review_gap: int = 256  # questions served before a mastered question's first review; each pass doubles it
    review_unmastered: bool = False  # a level's questions still unmastered when it ends join the review too
    advance_exact: float = 0.0  # the level pipeline ends a level at this held-out exact (0 = off)
    check_every: int = 50  # ... checked every this many of the level's steps
    check_size: int = 128  # ... on this many distinct held-out questions, none of them in pipeline.probe_size
    # a level also ends once that check has not beaten its best for this many checks in a row (0 = off; never the
    # last level): a level the model cannot pass in the budget stops holding the run back from the next one
    advance_patience: int = 0


@dataclass
class SleepConfig:
    # Sleep/wake consolidation of engine/sleep.py: wake on the task stream, sleep on the episodic buffer.
    enabled: bool = False
    wake_steps: int = 1000
    sleep_steps: int = 100
    mode: Literal["replay", "replay-surprise", "distill", "dream"] = "replay"
    buffer_size: int = 4096  # samples kept from wake
    prune_importance: float = 0.05  # a slot is pruned when its importance is below this,
    prune_usage: int = 1  # ... it was replayed fewer times than this,
    prune_age: int = 5000  # ... and it entered more than this many steps ago
    lr_scale: float = 1.0  # consolidation learning rate at the start of a sleep, as a multiple of the wake lr
    spike_factor: float = 2.0  # a consolidation loss above this x its running mean halves the rate
    tiny_loss: float = 0.01  # a consolidation loss below this raises the rate x1.2
    dream_temperature: float = 2.0  # sampling temperature of dreams
    probe_size: int = 64  # buffer samples in the retention probe
    importance_decay: float = 1.0  # every wake step multiplies the buffer's importances by this (1: no decay)
    consolidation_threshold: float = 0.0  # sleep replays only samples whose importance is above this (0: all)
    consolidation_strength: float = 1.0  # share of a sleep's weight change kept when it ends (1: all of it)
    prune: Literal["sleep", "interval"] = "sleep"  # prune as each sleep ends, or every prune_every steps
    prune_every: int = 1000  # steps between prunings under prune = "interval"
    warmup_steps: int = 0  # the first wake lasts this many steps when longer than wake_steps: no early sleep
    warmup_sleep_steps: int = 0  # the first sleep's length; later ones grow to sleep_steps (0: full from the start)
    warmup_sleeps: int = 1  # sleeps over which the length grows linearly from warmup_sleep_steps to sleep_steps
    # the modes sleeps take in turn, e.g. ["distill", "dream"]: deep sleep, then REM-like; empty: always `mode`
    modes: list[str] = field(default_factory=list)
    # Consolidation on a signal, beside the fixed schedule: a wake phase ends early (never before
    # trigger_min_wake steps) once the buffer has taken buffer_size new samples since the last sleep, or once the
    # loss of fresh samples at first sight (a held-out signal) has not improved for trigger_plateau steps.
    trigger_buffer_full: bool = False
    trigger_plateau: int = 0  # patience in wake steps; 0 = off
    plateau_delta: float = 0.01  # an improvement is a drop of the first-sight loss's average by this share
    trigger_min_wake: int = 20


# The Phase-5 pipeline's stages and prompts, by the names [pipeline] uses.
PIPELINE_STAGES = ("curriculum", "bake", "selfmodel", "dream")
PIPELINE_PROMPTS = ("eudaimonia", "ooda", "identity", "reverse", "letters")
LEVELS = 10  # the levels task's levels (engine/tasks/levels.py)
# What a prompt may hold: the characters of the text tasks' alphabet (a test keeps this equal to
# engine/tasks/tokenizer.py's), and the room the self-model's tag `self t0.10-0.65` takes.
PROMPT_CHARACTERS = re.compile(r"[0-9a-zA-Z +\-*/%=<>()\[\]?.,:;#|!'^_]*")
SELF_TAG_CHARS = 15


@dataclass
class PipelineConfig:
    # The Phase-5 level pipeline (engine/stages/levels.py) on the levels task: every level from
    # curriculum.start_level to curriculum.levels runs `stages` in order. Its curriculum stage is the question
    # queue with [curriculum]'s numbers (curriculum.enabled only concerns the plain wake stage).
    enabled: bool = False
    stages: list[str] = field(default_factory=lambda: list(PIPELINE_STAGES))
    probe_size: int = 256  # distinct held-out questions per level behind every stage's figures
    prompt_share: float = 0.2  # curriculum: share of refilled slots that practise a prompt (ungraded)
    # the prompts' texts, written by the user; `reverse` and `letters` are checkable: they change the answer
    eudaimonia: str = "act for the flourishing of all"
    ooda: str = "observe, orient, decide, act"
    identity: str = "you are a small careful solver"
    reverse: str = "answer in reverse"
    letters: str = "answer in letters"  # checkable too: each digit as a letter (0 as a .. 9 as j)
    bake: list[str] = field(default_factory=lambda: list(PIPELINE_PROMPTS))  # baked in this order, each level
    bake_steps: int = 200  # optimizer steps per prompt
    bake_lr_scale: float = 0.1  # bake's rates as a multiple of the run's: Muon steps by lr whatever the loss
    selfmodel_steps: int = 500
    selfmodel_ranges: int = 3  # temperature ranges per level; they widen as the levels rise
    selfmodel_share: float = 0.5  # share of refilled slots that predict the model's own sampled answer
    dream_steps: int = 200
    dream_temperature: float = 2.0


@dataclass
class ObjectivesConfig:
    # The wake loss's mix (engine/objectives.py): task x the answer's cross-entropy + the halting BCE + each term
    # x its weight. The default is the task loss alone; configs/objectives.toml holds the 70/20/10 preset.
    task: float = 1.0
    reconstruction: float = 0.0  # masked input spans predicted from both sides
    consistency: float = 0.0  # memory-assisted answers against the memory-free (slow weights') ones, every cycle
    carry: float = 0.0  # time-scale 1: the carried latents settle across the recursion's cycles
    memory: float = 0.0  # time-scale 2: the neural memory recalls the episode it has read
    slow: float = 0.0  # time-scale 3: the slow weights' answer stays near their moving average's (across sleeps)
    coherence: float = 0.0  # the answers y1..yT agree with the last one
    span_fraction: float = 0.15  # reconstruction: about this share of the input is hidden (spans start at it / length)
    span_length: int = 3


OBJECTIVE_TERMS = ("reconstruction", "consistency", "carry", "memory", "slow", "coherence")


@dataclass
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    sleep: SleepConfig = field(default_factory=SleepConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)


# Allowed ranges: (low, high) inclusive; None = unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "model.d_model": (8, 4096),
    "model.n_layers": (1, 32),
    "model.n_heads": (1, 64),
    "model.expansion": (0.5, 16),
    "model.H_cycles": (1, 16),
    "model.L_cycles": (1, 32),
    "model.halt_max_steps": (1, 64),
    "model.halt_exploration": (0.0, 1.0),
    "model.halt_threshold": (0.0, 1.0),
    "model.puzzle_prefix": (0, 256),
    "model.rope_theta": (1.0, 1e7),
    "model.norm_eps": (1e-12, 1e-2),
    "model.window": (0, 65536),
    "model.d_mem": (4, 4096),
    "model.memory_chunk": (1, 1024),
    "model.memory_decay": (0.0, 1.0),
    "model.memory_theta_max": (1e-6, 2.0),
    "model.memory_max_grad_norm": (0.0, 1e6),
    "model.persistent_tokens": (0, 64),
    "model.memory_surprise_threshold": (0.0, 1e6),
    "model.memory_max_updates": (0, 10**6),
    "task.size": (4, 9),
    "task.difficulty": (1, 3),
    "task.seed": (0, 2**31 - 1),
    "task.p": (2, 1000),
    "task.train_fraction": (0.01, 0.99),
    "task.side": (7, 31),
    "task.prompt_chars": (0, 200),
    "train.outcome_samples": (1, 64),
    "train.outcome_temperature": (0.01, 10.0),
    "curriculum.questions": (1, 10_000_000),
    "curriculum.levels": (1, 1000),
    "curriculum.mastery": (1, 1000),
    "curriculum.threshold": (0.0, 1.0),
    "curriculum.max_epochs": (1, 1_000_000),
    "curriculum.start_level": (1, 1000),
    "curriculum.hint_after": (1, 1000),
    "curriculum.hint_from": (0.0, 1.0),
    "curriculum.review_share": (0.0, 0.9),
    "curriculum.review_gap": (1, 10_000_000),
    "curriculum.advance_exact": (0.0, 1.0),
    "curriculum.check_every": (1, 1_000_000),
    "curriculum.check_size": (1, 100_000),
    "curriculum.advance_patience": (0, 1_000_000),
    "sleep.wake_steps": (1, 10**9),
    "sleep.sleep_steps": (1, 10**9),
    "sleep.buffer_size": (1, 10**7),
    "sleep.prune_importance": (0.0, 1e6),
    "sleep.prune_usage": (0, 10**9),
    "sleep.prune_age": (0, 10**9),
    "sleep.lr_scale": (0.0, 100.0),
    "sleep.spike_factor": (1.0, 1e6),
    "sleep.tiny_loss": (0.0, 1e6),
    "sleep.dream_temperature": (0.01, 100.0),
    "sleep.probe_size": (1, 65536),
    "sleep.importance_decay": (0.0, 1.0),
    "sleep.consolidation_threshold": (0.0, 1e6),
    "sleep.consolidation_strength": (0.0, 1.0),
    "sleep.prune_every": (1, 10**9),
    "sleep.warmup_steps": (0, 10**9),
    "sleep.warmup_sleep_steps": (0, 10**9),
    "sleep.warmup_sleeps": (1, 10**6),
    "sleep.trigger_plateau": (0, 10**9),
    "sleep.plateau_delta": (0.0, 1.0),
    "sleep.trigger_min_wake": (1, 10**9),
    "objectives.task": (0.0, 100.0),
    "objectives.reconstruction": (0.0, 100.0),
    "objectives.consistency": (0.0, 100.0),
    "objectives.carry": (0.0, 100.0),
    "objectives.memory": (0.0, 100.0),
    "objectives.slow": (0.0, 100.0),
    "objectives.coherence": (0.0, 100.0),
    "objectives.span_fraction": (0.01, 0.9),
    "objectives.span_length": (1, 64),
    "pipeline.probe_size": (1, 100_000),
    "pipeline.prompt_share": (0.0, 1.0),
    "pipeline.bake_steps": (1, 10**9),
    "pipeline.bake_lr_scale": (0.0, 100.0),
    "pipeline.selfmodel_steps": (1, 10**9),
    "pipeline.selfmodel_ranges": (1, 16),
    "pipeline.selfmodel_share": (0.0, 1.0),
    "pipeline.dream_steps": (1, 10**9),
    "pipeline.dream_temperature": (0.01, 100.0),
    "optim.lr": (0.0, 1.0),
    "optim.adamw_lr": (0.0, 1.0),
    "optim.adamw_weight_decay": (0.0, 10.0),
    "optim.min_lr_ratio": (0.0, 1.0),
    "optim.momentum": (0.0, 0.9999),
    "optim.ns_steps": (1, 20),
    "optim.grokfast_alpha": (0.0, 0.9999),
    "optim.grokfast_lambda": (0.0, 100.0),
    "optim.qk_clip_tau": (0.0, 1e4),
    "optim.weight_decay": (0.0, 10.0),
    "optim.beta1": (0.0, 0.99999),
    "optim.beta2": (0.0, 0.99999),
    "optim.warmup_steps": (0, 10_000_000),
    "optim.grad_clip": (0.0, 1e6),
    "train.batch_size": (1, 65536),
    "train.max_steps": (1, 10**9),
    "train.max_minutes": (0.0, 10**7),
    "train.seed": (0, 2**31 - 1),
    "train.threads": (0, 1024),
    "train.vram_limit": (0.05, 1.0),
    "train.ram_limit": (0.05, 1.0),
    "train.accumulation": (1, 65536),
    "train.ema_decay": (0.0, 1.0),
    "eval.every": (0, 10**9),
    "eval.n_puzzles": (1, 10**6),
    "eval.batch_size": (1, 65536),
    "checkpoint.every": (0, 10**9),
    "checkpoint.keep": (1, 1000),
    "log.flush_seconds": (0.01, 60.0),
    "log.telemetry_seconds": (0.1, 3600.0),
    "log.print_seconds": (0.1, 3600.0),
}

# Choices that are not expressible as a Literal type.
CHOICES: dict[str, tuple[Any, ...]] = {
    "task.size": (4, 6, 9),
}

# Strings that must match a pattern, with what is allowed in words: the run folder is named after `name`.
PATTERNS: dict[str, tuple[re.Pattern, str]] = {
    "name": (re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}"),
             "1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"),
}

# Keys that have moved: a config that still sets one is told where it went.
MOVED: dict[str, str] = {
    "optim.ste": "model.bitnet",
    "model.ema_decay": "train.ema_decay",
}


def _fields(cls) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp):
    """`float | None` -> float: None only ever comes from a default (TOML has no null)."""
    if get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


def _is_int_or_ints(tp) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and set(get_args(tp)) == {int, list[int]}


def _describe(tp) -> str:
    tp = _unwrap_optional(tp)
    if _is_int_or_ints(tp):
        return "an integer or a list of integers"
    if get_origin(tp) is list and get_args(tp) == (str,):
        return "a list of strings"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a non-empty string"
    if get_origin(tp) is list:
        return "a list of numbers"
    return str(tp)


def _coerce(key: str, tp, value: Any, where: str) -> Any:
    """Check one leaf value against its declared type; return it in canonical form."""

    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."

    def bad(extra: str = "") -> ConfigError:
        return ConfigError(f"{where}: {key} = {shown} is not allowed; expected {_describe(tp)}{extra}.")

    tp = _unwrap_optional(tp)
    if _is_int_or_ints(tp):
        if not isinstance(value, list):
            return _coerce(key, int, value, where)
        if not 1 <= len(value) <= 64:
            raise bad(" (1 to 64 entries)")
        return [_coerce(key, int, v, where) for v in value]
    if get_origin(tp) is list and get_args(tp) == (str,):
        if not isinstance(value, list) or len(value) > 64 or not all(
            isinstance(v, str) and v.strip() and len(v) <= 200 for v in value
        ):
            raise bad(" (at most 64 non-empty strings)")
        return list(value)
    if get_origin(tp) is Literal:
        if value not in get_args(tp) or isinstance(value, bool):
            raise bad()
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        value = int(value)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if not math.isfinite(value):
            raise bad(" (finite)")
    elif tp is str:
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise bad(" of at most 200 characters")
        if key in PATTERNS and not PATTERNS[key][0].fullmatch(value):
            raise ConfigError(f"{where}: {key} = {shown} is not allowed; allowed is {PATTERNS[key][1]}.")
        return value
    elif get_origin(tp) is list:
        if not isinstance(value, list) or len(value) > 64:
            raise bad(" (at most 64 entries)")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or v < 0:
                raise bad(" (each finite and >= 0)")
            out.append(float(v))
        return out
    lo, hi = RANGES.get(key, (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where}: {key} = {value!r} is out of range; allowed is {lo} to {hi}.")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(
            f"{where}: {key} = {value!r} is not allowed; allowed is one of "
            + ", ".join(str(c) for c in CHOICES[key]) + "."
        )
    return value


def _build(cls, data: dict, prefix: str, where: str, overridden: frozenset[str] = frozenset()):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{prefix.rstrip('.')}] must be a table of settings.")
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        full = prefix + key
        if full in MOVED:
            raise _moved(full, where)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key {full!r}; allowed here: {allowed}.")
        tp = fields[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full + ".", where, overridden)
        else:
            # a value from the command line is blamed on --set, not on a file that does not hold it
            kwargs[key] = _coerce(full, tp, value, f"--set {full}" if full in overridden else where)
    return cls(**kwargs)


def _moved(key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: {key} has moved to {MOVED[key]}; set {MOVED[key]} instead.")


def _check_task_keys(cfg: RunConfig, data: dict, file_task: str | None, overridden: set[str], where: str) -> RunConfig:
    """A [task] key set explicitly must be one its task takes; defaults are never refused.

    A key from --set is checked against the task that runs, one from the file against the file's task; a file key
    that only the file's task takes goes back to its default when --set task.name picks another task (so does the
    file's mix of difficulties when the task picked does not mix them)."""
    task = cfg.task.name
    file_task = file_task if file_task in TASK_KEYS else task
    left_out = {}
    for key in data.get("task", {}):
        if key in TASK_KEYS_ANY_TASK:
            continue
        if f"task.{key}" in overridden:
            if key not in TASK_KEYS[task]:
                raise ConfigError(f"--set task.{key}: task {task!r} does not take task.{key}; "
                                  f"it takes: {', '.join(TASK_KEYS[task])}.")
        elif key not in TASK_KEYS[file_task]:
            raise ConfigError(f"{where}: task {file_task!r} does not take task.{key}; "
                              f"it takes: {', '.join(TASK_KEYS[file_task])}.")
        elif key not in TASK_KEYS[task]:
            left_out[key] = getattr(TaskConfig(), key)
    file_mix = isinstance(cfg.task.difficulty, list) and "task.difficulty" not in overridden
    if file_mix and file_task in MIXED_DIFFICULTY_TASKS and task not in MIXED_DIFFICULTY_TASKS:
        left_out["difficulty"] = TaskConfig().difficulty
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **left_out))


def _check_cross(cfg: RunConfig, where: str) -> None:
    t = cfg.task
    if isinstance(t.difficulty, list) and t.name not in MIXED_DIFFICULTY_TASKS:
        raise ConfigError(f"{where}: task.difficulty = {t.difficulty} is a mix of difficulties, which task {t.name!r} "
                          "does not take; set one difficulty, 1 to 3.")
    if t.name == "modular" and (t.p < 2 or any(t.p % d == 0 for d in range(2, int(t.p**0.5) + 1))):
        raise ConfigError(f"{where}: task.p = {t.p} is not allowed; the modulus must be a prime.")
    if t.name.startswith("dexter-") and not t.path:
        raise ConfigError(f"{where}: task {t.name!r} needs task.path, the folder `lab dexter build RAW_DIR OUT` wrote; "
                          "set task.path = OUT.")
    if t.carry_turns and cfg.curriculum.enabled:
        raise ConfigError(f"{where}: task.carry_turns = true needs curriculum.enabled = false; the curriculum's queue "
                          "hands out single questions, not a conversation's turns in order.")
    if t.name == "maze" and t.side % 2 == 0:
        raise ConfigError(f"{where}: task.side = {t.side} is not allowed; a maze side must be odd (7 to 31).")
    if cfg.train.outcome != "ce" and (t.name != "program" or cfg.curriculum.enabled or cfg.pipeline.enabled):
        raise ConfigError(f"{where}: train.outcome = {cfg.train.outcome!r} needs task.name = 'program' trained on its "
                          "plain stream (curriculum and pipeline off); set train.outcome = 'ce' otherwise.")
    if cfg.train.dtype == "float16" and cfg.train.device != "cuda":
        raise ConfigError(f"{where}: train.dtype = 'float16' needs train.device = 'cuda' (it is "
                          f"{cfg.train.device!r}); on a CPU use 'bfloat16' or 'float32'.")
    m = cfg.model
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"{where}: model.d_model = {m.d_model} must be divisible by model.n_heads = {m.n_heads}."
        )
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"{where}: model.d_model / model.n_heads must be even for rotary embeddings.")
    if m.step_loss_weights and len(m.step_loss_weights) != m.H_cycles + 1:
        raise ConfigError(
            f"{where}: model.step_loss_weights has {len(m.step_loss_weights)} entries; "
            f"it must have model.H_cycles + 1 = {m.H_cycles + 1} (one per answer y0..yT) or be empty."
        )
    if m.memory == "titans-mag" and m.mixer != "attention":
        raise ConfigError(f"{where}: model.memory = 'titans-mag' needs model.mixer = 'attention'.")
    _check_sleep(cfg, where)
    _check_objectives(cfg, where)
    if cfg.pipeline.enabled:
        _check_pipeline(cfg, where)


SLEEP_MODES = get_args(get_type_hints(SleepConfig)["mode"])


def _check_sleep(cfg: RunConfig, where: str) -> None:
    s = cfg.sleep
    unknown = [m for m in s.modes if m not in SLEEP_MODES]
    if unknown:
        raise ConfigError(f"{where}: sleep.modes = {s.modes} is not allowed ({unknown[0]!r} is not a mode); "
                          f"allowed are {', '.join(SLEEP_MODES)}, in any order and number.")
    if s.warmup_sleep_steps > s.sleep_steps:
        raise ConfigError(f"{where}: sleep.warmup_sleep_steps = {s.warmup_sleep_steps} is longer than sleep.sleep_steps"
                          f" = {s.sleep_steps}; the sleeps grow towards sleep_steps, so set it to at most that.")
    if cfg.train.accumulation > cfg.train.batch_size:
        raise ConfigError(f"{where}: train.accumulation = {cfg.train.accumulation} is more than train.batch_size = "
                          f"{cfg.train.batch_size}; a micro-batch holds at least one sample.")


def _check_objectives(cfg: RunConfig, where: str) -> None:
    o, m = cfg.objectives, cfg.model
    if o.task == 0 and not any(getattr(o, t) for t in OBJECTIVE_TERMS):
        raise ConfigError(f"{where}: every weight under [objectives] is 0, so nothing would be trained; give "
                          "objectives.task or one of " + ", ".join(OBJECTIVE_TERMS) + " a weight above 0.")
    for term in ("consistency", "memory"):
        if getattr(o, term) and m.memory == "none":
            raise ConfigError(f"{where}: objectives.{term} = {getattr(o, term)} needs a neural memory; set "
                              "model.memory = 'titans-mag' or objectives." + term + " = 0.")
    if o.coherence and m.H_cycles < 2:
        raise ConfigError(f"{where}: objectives.coherence = {o.coherence} compares the answers of the recursion's "
                          f"cycles, but model.H_cycles = {m.H_cycles}; set model.H_cycles >= 2 or "
                          "objectives.coherence = 0.")


def _check_pipeline(cfg: RunConfig, where: str) -> None:
    p, c, room = cfg.pipeline, cfg.curriculum, cfg.task.prompt_chars
    if cfg.task.name != "levels":
        raise ConfigError(f"{where}: pipeline.enabled needs task.name = 'levels' (it is {cfg.task.name!r}); the "
                          "pipeline's levels are that task's levels.")
    if cfg.sleep.enabled:
        raise ConfigError(f"{where}: pipeline.enabled and sleep.enabled cannot both be on; the pipeline's schedule "
                          "has its own dream stage, so set sleep.enabled = false.")
    if c.levels > LEVELS or c.start_level > c.levels:
        raise ConfigError(f"{where}: the pipeline runs curriculum.start_level = {c.start_level} to curriculum.levels"
                          f" = {c.levels}; allowed is 1 <= start_level <= levels <= {LEVELS}.")
    for key, names, allowed in (("stages", p.stages, PIPELINE_STAGES), ("bake", p.bake, PIPELINE_PROMPTS)):
        unknown = [n for n in names if n not in allowed]
        if unknown or len(set(names)) != len(names):
            what = f"{unknown[0]!r} is not one of them" if unknown else "a name repeats"
            raise ConfigError(f"{where}: pipeline.{key} = {names} is not allowed ({what}); allowed are "
                              f"{', '.join(allowed)}, each at most once.")
    if not p.stages or p.stages[0] != "curriculum":
        raise ConfigError(f"{where}: pipeline.stages = {p.stages} must begin with 'curriculum': every later stage "
                          "works on what the level's curriculum trained.")
    for name in p.bake:
        text = getattr(p, name)
        if not PROMPT_CHARACTERS.fullmatch(text):
            odd = "".join(sorted({ch for ch in text if not PROMPT_CHARACTERS.fullmatch(ch)}))
            raise ConfigError(f"{where}: pipeline.{name} has characters outside the alphabet ({odd!r}); use "
                              "letters, digits, spaces and +-*/%=<>()[]?.,:;#|!'^_.")
        if len(text) > room:
            raise ConfigError(f"{where}: pipeline.{name} has {len(text)} characters but task.prompt_chars = {room}; "
                              f"raise task.prompt_chars to at least {len(text)} or shorten the prompt.")
    if "selfmodel" in p.stages and room < SELF_TAG_CHARS:
        raise ConfigError(f"{where}: the self-model stage puts a {SELF_TAG_CHARS}-character tag before its questions "
                          f"but task.prompt_chars = {room}; raise it to at least {SELF_TAG_CHARS}.")


def check_processes(cfg: RunConfig, processes: int) -> None:
    """Raise ConfigError when the run cannot be shared among `processes` data-parallel processes."""
    if processes <= 1:
        return
    B = cfg.train.batch_size
    if B % processes:
        raise ConfigError(f"train.batch_size = {B} does not split evenly over {processes} processes; "
                          f"use a multiple of {processes}, or another number of processes.")
    if cfg.curriculum.enabled:
        raise ConfigError("curriculum.enabled = true runs in one process only; "
                          "run it without --nproc/--nnodes or switch the curriculum off.")


def parse_override(text: str) -> tuple[str, Any]:
    """`model.d_model=128` -> ("model.d_model", 128); the value is read as a TOML value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not of the form key.sub=value.")
    key, raw = text.split("=", 1)
    key = key.strip()
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words are strings: --set model.mixer=mlp
    return key, value


def _apply_override(data: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: {key!r} is not a valid key.")
    node = data
    cls = RunConfig
    if key in MOVED:
        raise _moved(key, where)
    for i, part in enumerate(parts):
        fields = _fields(cls)
        if part not in fields:
            prefix = ".".join(parts[:i])
            allowed = ", ".join(sorted(fields))
            raise ConfigError(
                f"{where}: unknown key {key!r}; allowed {'under ' + prefix if prefix else 'at the top'}: {allowed}."
            )
        tp = fields[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"{where}: {key!r} is a section; set one of its keys instead.")
            node[part] = value
        else:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])!r} is a value, not a section.")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: [{'.'.join(parts[: i + 1])}] must be a table of settings.")
            cls = tp


def from_dict(data: dict, where: str = "config", overrides: list[str] | None = None) -> RunConfig:
    data = _deepcopy(data)
    file_task = data["task"].get("name", TaskConfig().name) if isinstance(data.get("task"), dict) else None
    overridden = set()
    for text in overrides or []:
        key, value = parse_override(text)
        _apply_override(data, key, value, f"--set {key}")
        overridden.add(key)
    cfg = _build(RunConfig, data, "", where, frozenset(overridden))
    cfg = _check_task_keys(cfg, data, file_task, overridden, where)
    try:
        _check_cross(cfg, where)
    except ConfigError as exc:
        # a clash between settings names the --set that took part, so the user is not sent to a file that is fine
        named = [key for key in sorted(overridden) if key in str(exc)]
        if not named:
            raise
        raise ConfigError(str(exc).replace(f"{where}:", f"{where} with --set {', '.join(named)}:", 1)) from None
    return cfg


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: no such config file; pass a TOML file such as configs/quickstart.toml.")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the file is not UTF-8 text; a config must be a TOML file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc}); fix the syntax and try again.") from None
    return from_dict(data, where, overrides)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def to_toml(cfg: RunConfig) -> str:
    d = to_dict(cfg)
    lines = []
    for k, v in d.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for kk, vv in v.items():
                if vv is None:  # unset: TOML has no null, and leaving it out keeps it unset on reload
                    continue
                if k == "task" and kk not in TASK_KEYS[cfg.task.name] + TASK_KEYS_ANY_TASK:
                    continue  # a key the task does not take would be refused on reload
                lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d
