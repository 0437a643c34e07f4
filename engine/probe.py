"""The `probe` command: the EMA model answers one puzzle typed by a person, statefully (its carry persists
across probes until a reset), so the console can watch an answer form step by step. Sudoku-shaped runs only."""

from __future__ import annotations

from typing import Any

import torch

from engine.tasks.puzzles import PuzzleFileError, parse_puzzle_line


def probe(model, seq_len: int, device: torch.device, args: dict) -> tuple[bool, str | None, Any]:
    if args.get("reset"):
        model.reset_carry()
    text = args.get("input")
    if text is None:
        return True, None, {"reset": True}
    if not isinstance(text, str):
        return False, "input must be a puzzle string such as 1.3.2...", None
    try:
        puzzle = parse_puzzle_line(text, where="probe")
    except PuzzleFileError as exc:
        return False, str(exc), None
    if puzzle.size * puzzle.size != seq_len:
        return False, f"this run's task takes {seq_len}-cell puzzles; the probe had {len(puzzle.inputs)}.", None
    inputs = torch.tensor([puzzle.inputs], dtype=torch.long, device=device)
    with torch.no_grad():
        preds = model.infer(inputs)
    answer = "".join(str(max(0, int(t) - 1)) for t in preds[0].tolist())
    return True, None, {"answer": answer, "steps": int(model.infer_carry.steps[0])}
