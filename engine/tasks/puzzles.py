"""Puzzle files: one Sudoku per line, the common plain-text format.

    # a comment; blank lines are skipped too
    ...2...41..323.1
    ...2...41..323.1,4132321414232341

Each line is a puzzle, '.' or '0' for a blank, optionally followed by ',' and its solution.

The grid size follows from the length: 16 cells -> 4x4, 36 -> 6x6, 81 -> 9x9; one file holds
one size. A puzzle given without its solution is solved here and must have exactly one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.tasks.base import Sample
from engine.tasks.sudoku import count_solutions, from_tokens, is_solved_grid, solve, to_tokens

MAX_LINES = 1_000_000
SIZE_OF_LENGTH = {16: 4, 36: 6, 81: 9}
BLANKS = ".0"


class PuzzleFileError(ValueError):
    """A puzzle file a user gave is unreadable or wrong; its message is one sentence."""


@dataclass(frozen=True)
class Puzzle:
    size: int  # 4, 6 or 9
    inputs: list[int]  # tokens: 1 = blank, d + 1 = digit d
    solution: list[int] | None  # tokens of the full grid, when known

    def to_sample(self) -> Sample:
        assert self.solution is not None, "a puzzle needs its solution to become a sample"
        return Sample(inputs=list(self.inputs), labels=list(self.solution))


def read_puzzle_file(path: str | Path, *, check_unique: bool = False) -> list[Puzzle]:
    """Every puzzle of the file, each with its solution; PuzzleFileError names the first bad line.

    A puzzle without a solution is solved and must have exactly one; a given solution is checked
    against the rules and the clues, and for uniqueness too when `check_unique`.
    """
    path = Path(path)
    # First pass: syntax only, cheap, so a malformed or oversized file fails before any solving.
    parsed: list[tuple[int, list[int], list[int] | None]] = []  # (line number, puzzle, solution)
    size_line: tuple[int, int] | None = None  # (size, line number) of the first puzzle
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise PuzzleFileError(f"{path}: no such file; give the path of a puzzle file.") from None
    except IsADirectoryError:
        raise PuzzleFileError(f"{path} is a folder; give the path of a puzzle file.") from None
    except OSError as e:
        raise PuzzleFileError(f"{path} cannot be read ({e.strerror}); give a readable puzzle file.") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number > MAX_LINES:
                raise PuzzleFileError(
                    f"{path} has more than {MAX_LINES:,} lines; split it into files of at most {MAX_LINES:,} lines."
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PuzzleFileError(
                    f"{path}, line {number}: the file is not UTF-8 text; "
                    "a puzzle file is plain text, one puzzle a line."
                ) from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            puzzle, solution = _parse_line(path, number, line)
            size = SIZE_OF_LENGTH[len(puzzle)]
            if size_line is None:
                size_line = (size, number)
            elif size != size_line[0]:
                first_size, first_number = size_line
                raise PuzzleFileError(
                    f"{path}, line {number}: a {size}x{size} puzzle follows {first_size}x{first_size} ones "
                    f"(line {first_number}); one file holds puzzles of one size."
                )
            parsed.append((number, puzzle, solution))
    if not parsed:
        raise PuzzleFileError(f"{path} holds no puzzles; write one puzzle a line (lines starting with # are comments).")

    size = size_line[0]
    puzzles = []
    for number, puzzle, solution in parsed:
        where = f"{path}, line {number}"
        if solution is None:
            n_solutions = count_solutions(puzzle, size, limit=2)
            if n_solutions == 0:
                raise PuzzleFileError(f"{where}: the puzzle has no solution; every puzzle must have exactly one.")
            if n_solutions > 1:
                raise PuzzleFileError(f"{where}: the puzzle has several solutions; every puzzle must have exactly one.")
            solution = solve(puzzle, size)
        else:
            if not is_solved_grid(solution, size):
                raise PuzzleFileError(
                    f"{where}: the solution breaks the rules; each row, column and box must hold 1-{size} once."
                )
            wrong = next((i for i, (p, s) in enumerate(zip(puzzle, solution)) if p and p != s), None)
            if wrong is not None:
                r, c = divmod(wrong, size)
                raise PuzzleFileError(
                    f"{where}: the solution has {solution[wrong]} at row {r + 1}, column {c + 1} where the clue "
                    f"is {puzzle[wrong]}; a solution must keep every clue."
                )
            if check_unique and count_solutions(puzzle, size, limit=2) > 1:
                raise PuzzleFileError(f"{where}: the puzzle has several solutions; every puzzle must have exactly one.")
        puzzles.append(Puzzle(size=size, inputs=to_tokens(puzzle), solution=to_tokens(solution)))
    return puzzles


def _parse_line(path: Path, number: int, line: str) -> tuple[list[int], list[int] | None]:
    """One line -> (puzzle digits, solution digits or None), checking characters and lengths."""
    where = f"{path}, line {number}"
    parts = [p.strip() for p in line.split(",")]
    if len(parts) > 2:
        raise PuzzleFileError(
            f"{where}: the line has {len(parts) - 1} commas; write a puzzle, optionally ',' and its solution."
        )
    text = parts[0]
    if len(text) not in SIZE_OF_LENGTH:
        raise PuzzleFileError(
            f"{where}: the puzzle has {len(text)} cells; allowed are 16 (4x4), 36 (6x6) or 81 (9x9), "
            f"each a digit or '.'/'0' for a blank."
        )
    size = SIZE_OF_LENGTH[len(text)]
    puzzle = _digits(where, "puzzle", text, size, blanks_allowed=True)
    solution = None
    if len(parts) == 2:
        if len(parts[1]) != len(text):
            raise PuzzleFileError(
                f"{where}: the solution has {len(parts[1])} cells; it must have as many as the puzzle ({len(text)})."
            )
        solution = _digits(where, "solution", parts[1], size, blanks_allowed=False)
    return puzzle, solution


def _digits(where: str, what: str, text: str, size: int, blanks_allowed: bool) -> list[int]:
    allowed = f"1-{size}" + (", with '.' or '0' for a blank" if blanks_allowed else ", no blanks")
    cells = []
    for position, ch in enumerate(text, start=1):
        if ch in BLANKS and blanks_allowed:
            cells.append(0)
        elif ch in BLANKS:
            raise PuzzleFileError(
                f"{where}: the {what} has a blank at position {position}; a solution gives every cell ({allowed})."
            )
        elif ch in "123456789" and int(ch) <= size:
            cells.append(int(ch))
        elif ch in "123456789":
            raise PuzzleFileError(
                f"{where}: the {what} has the digit {ch} at position {position}, "
                f"out of range for a {size}x{size} grid; allowed: {allowed}."
            )
        else:
            raise PuzzleFileError(
                f"{where}: the {what} has the character {ch!r} at position {position}; allowed: {allowed}."
            )
    return cells


def write_puzzle_file(path: str | Path, puzzles: list[Puzzle]) -> None:
    """One line per puzzle, '.' for blanks, ',' and the solution when known; read back unchanged."""
    lines = []
    for p in puzzles:
        text = "".join(str(d) if d else "." for d in from_tokens(p.inputs))
        if p.solution is not None:
            text += "," + "".join(str(d) for d in from_tokens(p.solution))
        lines.append(text + "\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def parse_puzzle_line(text: str, where: str = "input") -> Puzzle:
    """One puzzle typed by a person (the console's probe box): digits with '.' or '0' for blanks."""
    if not isinstance(text, str) or len(text) > 1000:
        raise PuzzleFileError(f"{where}: a puzzle is a line of at most 81 cells.")
    digits, _ = _parse_line(Path(where), 1, text.strip())
    size = SIZE_OF_LENGTH[len(digits)]
    return Puzzle(size=size, inputs=to_tokens(digits), solution=None)
