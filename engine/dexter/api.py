"""What a host application imports: the three Dexter models behind plain calls.

    memory = MemoryTRM.from_checkpoint("dexter/built/models/memory")        # or a run folder
    memory.retrieve("what website projects do I have?")  -> {"memories": [...], "confidence": 0.93, ...}
    memory.retrieve("tell me more")                      # understood in the context of the call before
    ToolTRM.from_checkpoint(...).select_tool("open notes.md", ["file_system.read", "file_system.search"],
                                             previous_error="FileNotFoundError: notes.md does not exist")
    ReasoningTRM.from_checkpoint(...).plan("build a website for Harbor") / .next_step(goal, completed)
    every model: reset_carry()

The carry (`use_carry=True`, the default) is what persists between calls, until reset_carry(). A memory model
trained with task.carry_turns (the preset) carries its latents z_H, z_L: each call starts from where the last
one ended, as the wake stage trained a conversation's follow-up turn to continue its slot, so "tell me more" is
read in the state the earlier turns left. A memory model trained without it carries the conversation's earlier
queries as text context instead. The tool model carries the last error met on each task, the reasoning model the
steps done towards each goal; both start every call from the initial latents, as they were trained.
A call runs up to N_sup supervision steps and stops early once the halting head is confident (`halt_early`).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch

from engine import checkpoint, config
from engine.build import build_model
from engine.dexter.dataset import CONTEXT_TURNS, complexity, memory_query, reasoning_query, tool_query
from engine.dexter.task import Layout
from engine.dexter.vocab import EOS, PAD
from engine.model.bitlinear import BitLinear, TernaryFileError, TernaryLinear, convert_to_bitnet, export_ternary, \
    load_ternary
from engine.model.fast import FastRecursion

WEIGHTS = "model.safetensors"
TERNARY = "model-ternary.safetensors"  # export_ternary's file in a kept folder


class DexterAPIError(ValueError):
    """A bad checkpoint or call; the message is one sentence."""


class DexterModel:
    kind = ""

    def __init__(self, model, layout: Layout, use_carry: bool = True, carry_latents: bool = False,
                 halt_early: bool = True, fast: bool = True):
        self.model, self.layout, self.vocab, self.use_carry = model.eval(), layout, layout.vocab, use_carry
        # the same answers with fewer operations (engine/model/fast.py); None for a model it does not cover
        self.fast = FastRecursion.of(self.model) if fast else None
        # latents go forward only into a model trained to read them (task.carry_turns); others restart each call
        self.trained_carry, self.carry_latents = carry_latents, carry_latents and use_carry
        self.halt_early = halt_early
        self.last_steps = 0  # supervision steps the last call took
        self.reset_carry()

    @classmethod
    def from_checkpoint(cls, path: str | Path, use_carry: bool = True, use_ema: bool = True, halt_early: bool = True,
                        ternary: bool = False):
        """A model from a folder `lab dexter train` kept (model.safetensors, config.toml, tokenizer.json,
        dataset.json), that folder's model.safetensors, or a run folder (its newest checkpoint that verifies).
        `ternary`: the folder's ternary export (model-ternary.safetensors, see export_ternary) instead."""
        path = Path(path)
        folder = path.parent if path.name == WEIGHTS else path
        if not (folder / "config.toml").is_file():
            raise DexterAPIError(f"{path} is neither a folder `lab dexter train` kept nor a run folder (it has no "
                                 "config.toml).")
        kept = (folder / WEIGHTS).is_file()
        cfg = cls._config(path, folder, kept)
        if ternary:
            return cls._from_ternary(cfg, folder, use_carry, halt_early)
        if kept:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                tensors = load_file(str(folder / WEIGHTS))
            except (SafetensorError, OSError) as exc:
                raise DexterAPIError(f"{folder / WEIGHTS} could not be read ({exc}); copy it again from its run.") \
                    from None
        else:
            ckpt, warnings = checkpoint.load_latest(folder / "checkpoints")
            if ckpt is None:
                why = f" ({warnings[0]})" if warnings else ""
                raise DexterAPIError(f"run {folder.name} has no usable checkpoint{why}; train it first.")
            tensors = ckpt.tensors
        layout, model = cls._build(cfg)
        prefix = "ema." if use_ema else "model."
        weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            model.load_state_dict(weights)
        except RuntimeError:
            raise DexterAPIError(f"{path}: the weights do not fit the model its config.toml describes (a vocabulary "
                                 "or size that changed?); retrain or copy the matching files.") from None
        return cls(model, layout, use_carry, carry_latents=cfg.task.carry_turns, halt_early=halt_early)

    @classmethod
    def _config(cls, path: Path, folder: Path, kept: bool) -> config.RunConfig:
        try:
            cfg = config.load(folder / "config.toml", [f"task.path={folder}"] if kept else None)
        except config.ConfigError as exc:
            raise DexterAPIError(str(exc)) from None
        if cfg.task.name != f"dexter-{cls.kind}":
            raise DexterAPIError(f"{path} holds a model trained on task {cfg.task.name!r}, not the Dexter {cls.kind} "
                                 f"model; load it with the class for its task.")
        return cfg

    @classmethod
    def _build(cls, cfg: config.RunConfig):
        try:
            layout = Layout(cls.kind, cfg.task.path)
        except ValueError as exc:
            raise DexterAPIError(str(exc)) from None
        return layout, build_model(cfg, layout)

    @classmethod
    def _from_ternary(cls, cfg: config.RunConfig, folder: Path, use_carry: bool, halt_early: bool):
        from safetensors import SafetensorError

        file = folder / TERNARY
        if not file.is_file():
            raise DexterAPIError(f"{folder} has no {TERNARY}; write one with `lab dexter export {folder}`.")
        layout, model = cls._build(cfg)
        try:
            load_ternary(model, file)
        except (TernaryFileError, SafetensorError, OSError, KeyError, ValueError) as exc:
            raise DexterAPIError(f"{file} could not be loaded ({str(exc).rstrip('.')}); export it again.") from None
        return cls(model, layout, use_carry, carry_latents=cfg.task.carry_turns, halt_early=halt_early)

    def ternary(self) -> DexterModel:
        """This model with every hidden linear ternary, b1.58 of its trained weights (the embedding and the heads
        stay float32): what export_ternary writes and from_checkpoint(..., ternary=True) loads back."""
        model = copy.deepcopy(self.model)
        if not any(isinstance(m, (BitLinear, TernaryLinear)) for m in model.modules()):
            convert_to_bitnet(model)
        return type(self)(model, self.layout, self.use_carry, self.trained_carry, self.halt_early)

    def export_ternary(self, path: str | Path) -> dict[str, int]:
        """Write the ternary model's weights, packed 2 bits a weight, as one safetensors file (whole or not at all).
        Returns the byte counts of the packed weights and of the file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            sizes = export_ternary(self.ternary().model, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise DexterAPIError(f"{path} could not be written ({exc.strerror or exc}).") from None
        return {**sizes, "file_bytes": path.stat().st_size}

    def reset_carry(self) -> None:
        """Forget the conversation: start the next call as if it were the first."""
        self.latents: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.inference_mode()
    def _answer(self, text: str, answer_kind: str) -> tuple[list[int], torch.Tensor]:
        """(answer tokens after the kind token, probabilities (n, V) of the answer positions from the kind token on)
        for one input text; a model that carries latents starts from the last call's and keeps this call's."""
        try:
            inputs, start = self.layout.query(text, answer_kind)
        except ValueError as exc:
            raise DexterAPIError(str(exc)) from None
        x = torch.tensor([inputs], dtype=torch.long, device=self.model.H_init.device)
        if self.fast is not None:
            z_H, z_L, self.last_steps = self.fast.recur(x, self.latents, halt_early=self.halt_early)
            probs = self.fast.rows(z_H, start, stop=(EOS, PAD))
        else:
            logits, _, (z_H, z_L, self.last_steps) = self.model.recur(
                x, self.latents, halt_early=self.halt_early, memory=self.model.initial_memory(1))
            probs = logits[0, start:].float().softmax(-1)  # (S - start, V)
        if self.carry_latents:
            self.latents = (z_H, z_L)
        preds = probs.max(-1).indices.tolist()  # as argmax (the first largest), at ~0.6x its CPU time
        preds[0] = self.vocab.id(answer_kind)
        return self.layout.answer(preds, 0)[1:], probs

    @staticmethod
    def _confidence(probs: torch.Tensor, n: int) -> float:
        """Geometric mean of the chosen tokens' probabilities over the answer and its EOS."""
        top = probs[1:2 + n].amax(-1).clamp_min(1e-9)
        return float(math.exp(top.log().mean())) if len(top) else 0.0


class MemoryTRM(DexterModel):
    kind = "memory"

    def reset_carry(self) -> None:
        super().reset_carry()
        self.turns: list[str] = []

    def retrieve(self, query: str, context: str | None = None) -> dict:
        """Up to three memories for `query`, with a confidence in [0, 1]. Without a `context`, a carried model
        reads the query in the context of the conversation's earlier queries."""
        if not isinstance(query, str) or not query.strip():
            raise DexterAPIError("retrieve() needs a query: a non-empty string.")
        text_carry = self.use_carry and not self.carry_latents  # else the conversation rides in the latents
        used = context if context is not None else " | ".join(self.turns[-CONTEXT_TURNS:]) if text_carry else ""
        answer, probs = self._answer(memory_query(" ".join(query.split()), used), "<MEM_FACT>")
        if self.use_carry:
            self.turns.append(" ".join(query.split()))
        memories = [self.vocab.decode(f) for f in self.layout.facts(answer)][:3]
        return {"memories": memories, "confidence": self._confidence(probs, len(answer)), "context": used}


class ToolTRM(DexterModel):
    kind = "tool"

    def reset_carry(self) -> None:
        super().reset_carry()
        self.errors: dict[str, str] = {}

    def select_tool(self, task: str, available_tools: list[str], previous_error: str | None = None,
                    context: str = "") -> dict:
        """The tool for `task`, always one of `available_tools` (names the model does not know are set aside,
        each with a warning). A carried model remembers the last error met on a task for the calls after it."""
        if not isinstance(task, str) or not task.strip():
            raise DexterAPIError("select_tool() needs a task: a non-empty string.")
        if isinstance(available_tools, str) or not available_tools or \
                not all(isinstance(t, str) for t in available_tools):
            raise DexterAPIError("select_tool() needs available_tools: a non-empty list of tool names.")
        known = [t for t in dict.fromkeys(available_tools) if t in self.vocab.tool_ids]
        warnings = [f"unknown tool {t!r}: the tool model was not trained on it, so it was set aside."
                    for t in available_tools if t not in self.vocab.tool_ids]
        if not known:
            raise DexterAPIError(f"none of the {len(available_tools)} available tools (the first: "
                                 f"{available_tools[0][:60]!r}) is one of the {len(self.vocab.tools)} the tool model "
                                 f"knows (such as {', '.join(self.vocab.tools[:3])}).")
        task = " ".join(task.split())
        if previous_error is None and self.use_carry:
            previous_error = self.errors.get(task)
        elif previous_error and self.use_carry:
            self.errors[task] = previous_error
        text = tool_query(task, known, context, " ".join((previous_error or "").split()))
        _, probs = self._answer(text, "<TOOL_RESULT>")
        ids = [self.vocab.tool_ids[t] for t in known]
        p = probs[1, ids]
        p = p / p.sum().clamp_min(1e-12)  # a choice among the available tools only
        best = int(p.argmax())
        return {"selected_tool": known[best], "confidence": float(p[best]),
                "scores": {t: round(float(v), 4) for t, v in zip(known, p)}, "warnings": warnings,
                "previous_error": previous_error or ""}


class ReasoningTRM(DexterModel):
    kind = "reasoning"

    def reset_carry(self) -> None:
        super().reset_carry()
        self.done: dict[str, list[str]] = {}

    def plan(self, goal: str, constraints: tuple[str, ...] = ()) -> dict:
        """The plan's steps and its complexity (simple: up to 3 steps, moderate: 4 or 5, complex: more)."""
        goal = self._goal(goal)
        answer, probs = self._answer(reasoning_query(goal, "", tuple(constraints)), "<REASON_PLAN>")
        steps = [s.strip() for s in self.vocab.decode(answer).split(" then ") if s.strip()]
        return {"plan_steps": steps, "complexity": complexity(len(steps)),
                "confidence": self._confidence(probs, len(answer))}

    def next_step(self, goal: str, completed: list[str] | None = None, constraints: tuple[str, ...] = ()) -> dict:
        """The next action towards `goal` after the `completed` steps ("done" when nothing is left). Without
        `completed`, a carried model uses the steps it gave for this goal before."""
        goal = self._goal(goal)
        if completed is None:
            completed = self.done.get(goal, []) if self.use_carry else []
        answer, probs = self._answer(reasoning_query(goal, completed[-1] if completed else "",
                                                            tuple(constraints)), "<REASON_STEP>")
        step = self.vocab.decode(answer)
        if self.use_carry:
            self.done[goal] = list(completed) + ([step] if step != "done" else [])
        return {"next_step": step, "done": step == "done", "confidence": self._confidence(probs, len(answer))}

    @staticmethod
    def _goal(goal: str) -> str:
        if not isinstance(goal, str) or not goal.strip():
            raise DexterAPIError("a goal must be a non-empty string.")
        return " ".join(goal.split())



MODELS = {cls.kind: cls for cls in (MemoryTRM, ToolTRM, ReasoningTRM)}


def open_model(path: str | Path, **options) -> DexterModel:
    """The Dexter model in `path` (as from_checkpoint takes it), whichever of the three its config.toml names."""
    import tomllib

    path = Path(path)
    folder = path.parent if path.name == WEIGHTS else path
    try:
        name = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))["task"]["name"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        raise DexterAPIError(f"{path} is not a folder `lab dexter train` kept nor a run folder (no readable "
                             "config.toml naming its task).") from None
    cls = MODELS.get(str(name).removeprefix("dexter-")) if str(name).startswith("dexter-") else None
    if cls is None:
        raise DexterAPIError(f"{path} holds a model of task {name!r}, not a Dexter model (dexter-memory, dexter-tool "
                             "or dexter-reasoning).")
    return cls.from_checkpoint(path, **options)
