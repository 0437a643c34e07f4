"""The `probe` command: the EMA model answers one input typed by a person, statefully (its carry persists
across probes until a reset), so the console and `lab ctl RUN probe TEXT` can watch an answer form.

- Sudoku-shaped runs take a puzzle line: each probe is one more supervision step on it (a new puzzle restarts).
- Text tasks (the Dexter models: their task has `probe_input`) take text: each probe runs the model's full
  recursion and reports the answer and how far the carry moved. A task trained to carry its latents into the
  next turn (task.carry_turns) starts from the last probe's latents; the others from the initial ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from engine.tasks.puzzles import PuzzleFileError, parse_puzzle_line


def probe(model, task, device: torch.device, args: dict) -> tuple[bool, str | None, Any]:
    if args.get("reset"):
        model.reset_carry()
    text = args.get("input")
    if text is None:
        return True, None, {"reset": True}
    if hasattr(task, "probe_input"):
        return probe_text(model, task, device, text)
    if not isinstance(text, str):
        return False, "input must be a puzzle string such as 1.3.2...", None
    try:
        puzzle = parse_puzzle_line(text, where="probe")
    except PuzzleFileError as exc:
        return False, str(exc), None
    if puzzle.size * puzzle.size != task.seq_len:
        return False, f"this run's task takes {task.seq_len}-cell puzzles; the probe had {len(puzzle.inputs)}.", None
    inputs = torch.tensor([puzzle.inputs], dtype=torch.long, device=device)
    with torch.no_grad():
        preds = model.infer(inputs)
    answer = "".join(str(max(0, int(t) - 1)) for t in preds[0].tolist())
    return True, None, {"answer": answer, "steps": int(model.infer_carry.steps[0])}


def probe_text(model, task, device: torch.device, text) -> tuple[bool, str | None, Any]:
    """A text task's answer to `text`, and the carry's change: the mean over positions of how far z_H and z_L
    moved from where the probe started (the last probe's latents when the task carries them, else the initial)."""
    if not isinstance(text, str) or not text.strip():
        return False, "input must be non-empty text, such as a question for this run's model.", None
    try:
        ids = task.probe_input(" ".join(text.split()))
    except ValueError as exc:
        return False, str(exc), None
    x = torch.tensor([ids], dtype=torch.long, device=device)
    prev = model.infer_carry
    carried = getattr(task, "carry_turns", False) and prev is not None and prev.z_H.shape[0] == 1
    start = model.initial_carry(1, device)
    latents = (prev.z_H, prev.z_L) if carried else (start.z_H, start.z_L)
    logits, q_halt, (z_H, z_L, steps) = model.recur(x, latents, memory=model.initial_memory(1, device))
    preds = logits.argmax(-1)
    model.infer_carry = dataclasses.replace(start, z_H=z_H, z_L=z_L, inputs=x, halted=torch.zeros_like(start.halted),
                                            steps=torch.full_like(start.steps, steps))

    def moved(after: torch.Tensor, before: torch.Tensor) -> float:
        return round(float((after - before)[0].float().norm(dim=-1).mean()), 5)

    return True, None, {"answer": task.probe_answer(ids, preds[0].tolist()), "steps": steps,
                        "q_halt": round(float(q_halt[0]), 4), "carried": carried,
                        "z_H_change": moved(z_H, latents[0]), "z_L_change": moved(z_L, latents[1])}
