"""Sudoku 4x4, 6x6 and 9x9: solver, generator, augmentation and the training task.

A grid is a flat row-major list of digits, 0 for a blank. Tokens shift every cell by one so
that 0 stays free for padding: pad = 0, blank = 1, digit d = d + 1 (vocabulary 11 for all sizes).

Every sample is a pure function of (size, difficulty or mix, seed, split, index): the random streams
are seeded from a stable hash of those values, and base puzzles are generated lazily, each from
its own seed, so the order in which they are first needed changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import random
from dataclasses import dataclass, field

import numpy as np

from engine.tasks.base import Sample

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # size -> (box rows, box columns)
SPLITS = ("train", "test")
TEST_FRACTION_PER_MILLE = 100  # a puzzle whose hash falls below this (of 1000) is held out

# Clues kept per difficulty; difficulty 3 removes clues until none more can go (a minimal puzzle).
CLUES_KEPT = {4: {1: 10, 2: 7, 3: 0}, 6: {1: 22, 2: 15, 3: 0}, 9: {1: 46, 2: 32, 3: 0}}
POOL_SIZE = {4: 4096, 6: 4096, 9: 2048}  # base puzzles per (split, seed, difficulty)
REUSE = {4: 4, 6: 8, 9: 16}  # one new base puzzle enters the pool every REUSE indices

# Bit d of a candidate mask stands for digit d; these tables turn a mask into its digits.
_MASK_DIGITS = [tuple(d for d in range(1, 10) if m >> d & 1) for m in range(1 << 10)]
_MASK_COUNT = [len(ds) for ds in _MASK_DIGITS]


@dataclass(frozen=True)
class _Geometry:
    size: int
    row_of: tuple[int, ...]  # cell -> row
    col_of: tuple[int, ...]  # cell -> column
    box_of: tuple[int, ...]  # cell -> box, numbered row-major
    full: int  # mask with every digit 1..size


@functools.cache
def _geometry(size: int) -> _Geometry:
    if size not in BOX_SHAPES:
        raise ValueError(f"Sudoku size {size} is not supported; allowed: 4, 6 or 9.")
    box_rows, box_cols = BOX_SHAPES[size]
    cells = range(size * size)
    return _Geometry(
        size=size,
        row_of=tuple(i // size for i in cells),
        col_of=tuple(i % size for i in cells),
        box_of=tuple((i // size) // box_rows * box_rows + (i % size) // box_cols for i in cells),
        full=sum(1 << d for d in range(1, size + 1)),
    )


# ----------------------------------------------------------------------------- solver


def _search(
    grid: list[int],
    size: int,
    limit: int,
    rng: random.Random | None = None,
    forbid: tuple[int, int] | None = None,
) -> tuple[int, list[int] | None]:
    """Depth-first search, most constrained cell first, over row/column/box bitmasks.

    Returns (number of solutions found, stopping at `limit`; the first solution or None).
    `rng` shuffles the digit order (to fill random grids); `forbid=(cell, digit)` removes one
    candidate, which lets the generator ask "is there a solution other than this one?".
    Written by hand because no trusted library solves 6x6 and counts solutions; bitmasks keep
    it fast enough in pure Python.
    """
    geo = _geometry(size)
    if len(grid) != size * size:
        raise ValueError(f"a {size}x{size} grid has {size * size} cells, got {len(grid)}.")
    row_of, col_of, box_of, full = geo.row_of, geo.col_of, geo.box_of, geo.full
    rows, cols, boxes = [0] * size, [0] * size, [0] * size
    work = list(grid)
    empties = []
    for i, v in enumerate(work):
        if v == 0:
            empties.append(i)
            continue
        if not 1 <= v <= size:
            raise ValueError(f"cell {i} holds {v}; a {size}x{size} grid allows 0 (blank) or 1-{size}.")
        bit = 1 << v
        r, c, b = row_of[i], col_of[i], box_of[i]
        if (rows[r] | cols[c] | boxes[b]) & bit:
            return 0, None  # the clues already break a rule
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
    forbid_cell, forbid_bit = (forbid[0], 1 << forbid[1]) if forbid else (-1, 0)
    n_empty = len(empties)
    count = 0
    first: list[int] | None = None

    def descend(depth: int) -> bool:
        """Fill empties[depth:]; True once `limit` solutions are found."""
        nonlocal count, first
        if depth == n_empty:
            count += 1
            if first is None:
                first = list(work)
            return count >= limit
        best_k, best_mask, best_n = depth, 0, 99
        for k in range(depth, n_empty):
            i = empties[k]
            mask = full & ~(rows[row_of[i]] | cols[col_of[i]] | boxes[box_of[i]])
            if i == forbid_cell:
                mask &= ~forbid_bit
            n = _MASK_COUNT[mask]
            if n < best_n:
                best_k, best_mask, best_n = k, mask, n
                if n <= 1:
                    break
        if best_n == 0:
            return False
        empties[depth], empties[best_k] = empties[best_k], empties[depth]
        i = empties[depth]
        r, c, b = row_of[i], col_of[i], box_of[i]
        digits = _MASK_DIGITS[best_mask]
        if rng is not None:
            digits = list(digits)
            rng.shuffle(digits)
        for d in digits:
            bit = 1 << d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            work[i] = d
            if descend(depth + 1):
                return True
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        work[i] = 0
        return False

    descend(0)
    return count, first


def solve(grid: list[int], size: int) -> list[int] | None:
    """One solution of `grid` (digits, 0 = blank), or None when it has none."""
    return _search(grid, size, limit=1)[1]


def count_solutions(grid: list[int], size: int, limit: int = 2) -> int:
    """Number of solutions, counting no further than `limit` (2 answers "unique or not")."""
    return _search(grid, size, limit=limit)[0]


def is_solved_grid(grid: list[int], size: int) -> bool:
    """True when `grid` is complete and every row, column and box holds each digit once."""
    geo = _geometry(size)
    if len(grid) != size * size or any(not 1 <= v <= size for v in grid):
        return False
    rows, cols, boxes = [0] * size, [0] * size, [0] * size
    for i, v in enumerate(grid):
        rows[geo.row_of[i]] |= 1 << v
        cols[geo.col_of[i]] |= 1 << v
        boxes[geo.box_of[i]] |= 1 << v
    return all(m == geo.full for m in rows + cols + boxes)


# ----------------------------------------------------------------------------- generator


def random_solved_grid(size: int, rng: random.Random) -> list[int]:
    """A full valid grid by randomized backtracking."""
    count, grid = _search([0] * (size * size), size, limit=1, rng=rng)
    assert count == 1 and grid is not None
    return grid


def make_puzzle(size: int, difficulty: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(puzzle, solution): clues removed in random order while the solution stays unique."""
    if difficulty not in (1, 2, 3):
        raise ValueError(f"Sudoku difficulty {difficulty} is not supported; allowed: 1, 2 or 3.")
    solution = random_solved_grid(size, rng)
    puzzle = list(solution)
    target = CLUES_KEPT[size][difficulty]
    clues = size * size
    order = list(range(size * size))
    rng.shuffle(order)
    for cell in order:
        if clues <= target:
            break
        puzzle[cell] = 0
        # The puzzle had one solution; any other solution of the reduced one must differ at `cell`.
        if _search(puzzle, size, limit=1, forbid=(cell, solution[cell]))[0]:
            puzzle[cell] = solution[cell]
        else:
            clues -= 1
    return puzzle, solution


# ----------------------------------------------------------------------------- augmentation


def augment(
    puzzle: list[int], solution: list[int], size: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """The same random symmetry applied to puzzle and solution; validity and uniqueness survive.

    Digits relabelled; rows shuffled within each band and bands shuffled; columns likewise
    within stacks; transposed half the time when boxes are square (a 6x6 box is 2x3, so not there).
    """
    symmetry = random_symmetry(size, rng)
    return apply_symmetry(symmetry, puzzle), apply_symmetry(symmetry, solution)


def random_symmetry(size: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(source cell of every cell, digit map) of a random validity-preserving transformation."""
    box_rows, box_cols = BOX_SHAPES[size]
    row_order = _block_shuffle(size, box_rows, rng)  # new row r takes old row row_order[r]
    col_order = _block_shuffle(size, box_cols, rng)
    transpose = box_rows == box_cols and rng.random() < 0.5
    digit_map = [0, *rng.sample(range(1, size + 1), size)]  # blank stays blank
    if transpose:
        source = [row_order[c] * size + col_order[r] for r in range(size) for c in range(size)]
    else:
        source = [row_order[r] * size + col_order[c] for r in range(size) for c in range(size)]
    return source, digit_map


def apply_symmetry(symmetry: tuple[list[int], list[int]], grid: list[int]) -> list[int]:
    """The grid moved and relabelled by a symmetry from `random_symmetry`."""
    source, digit_map = symmetry
    return [digit_map[grid[s]] for s in source]


def _block_orders(size: int, block: int) -> list[list[int]]:
    """Every permutation of range(size) that `_block_shuffle` can draw."""
    return [[b * block + inner[k][i] for k, b in enumerate(outer) for i in range(block)]
            for outer in itertools.permutations(range(size // block))
            for inner in itertools.product(itertools.permutations(range(block)), repeat=size // block)]


@functools.cache
def _all_moves(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of the K cell moves `random_symmetry` draws, as (K, size * size) arrays: the source cell of every cell
    (as `apply_symmetry` reads it), and where every cell lands."""
    box_rows, box_cols = BOX_SHAPES[size]
    rows, cols = _block_orders(size, box_rows), _block_orders(size, box_cols)
    cells = [(r, c) for r in range(size) for c in range(size)]
    sources = [[ro[r] * size + co[c] for r, c in cells] for ro in rows for co in cols]
    if box_rows == box_cols:
        sources += [[ro[c] * size + co[r] for r, c in cells] for ro in rows for co in cols]
    sources = np.array(sources, dtype=np.int64)
    return sources, sources.argsort(1)


def canonical_form(grid: list[int], size: int) -> tuple[int, ...]:
    """The same tuple for every grid one symmetry (`random_symmetry`) away from `grid`: the smallest of its images,
    each with its digits renumbered by first appearance. Sizes 4 and 6 (128 and 3,456 cell moves); 9x9 has 3.4
    million, too many to try."""
    if size not in (4, 6):
        raise ValueError(f"the canonical form is computed for 4x4 and 6x6 grids only, not {size}x{size}.")
    sources, lands = _all_moves(size)
    cells = np.asarray(grid, dtype=np.int64)
    # the first cell of each digit in each image; a digit that is absent comes after all cells
    first = np.stack([lands[:, cells == d].min(1) if (cells == d).any() else np.full(len(lands), cells.size + d)
                      for d in range(1, size + 1)], 1)  # (K, D)
    number = np.ones((len(lands), size + 1), dtype=np.uint8)  # blank -> 1, digits -> 2.. by first appearance
    number[:, 1:] = first.argsort(1).argsort(1) + 2
    images = np.take_along_axis(number, cells[sources], 1)  # (K, S), no zero byte: bytes compare as the grids
    return tuple(v - 1 for v in min(np.ascontiguousarray(images).view(f"S{cells.size}")[:, 0].tolist()))


def _block_shuffle(size: int, block: int, rng: random.Random) -> list[int]:
    """A permutation of range(size) that moves whole blocks and shuffles within each block."""
    blocks = list(range(size // block))
    rng.shuffle(blocks)
    order = []
    for b in blocks:
        inner = list(range(b * block, (b + 1) * block))
        rng.shuffle(inner)
        order += inner
    return order


# ----------------------------------------------------------------------------- tokens, splits


def to_tokens(grid: list[int]) -> list[int]:
    """Digits (0 = blank) -> tokens (1 = blank, d + 1 = digit d)."""
    return [v + 1 for v in grid]


def from_tokens(tokens: list[int]) -> list[int]:
    """Tokens -> digits (0 = blank); pad is not a cell."""
    assert all(t >= 1 for t in tokens), "a Sudoku grid holds no pad tokens"
    return [t - 1 for t in tokens]


def split_of(puzzle: list[int]) -> str:
    """The split a puzzle belongs to, from a stable hash of its exact cells (same for all seeds)."""
    digest = hashlib.blake2b(bytes(puzzle), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "little") % 1000 < TEST_FRACTION_PER_MILLE else "train"


def _stable_seed(*parts: object) -> int:
    """A seed from a stable hash of `parts` (Python's hash() changes between processes)."""
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------- the task


@dataclass
class _DistinctScan:
    kept: list[int] = field(default_factory=list)  # base puzzles kept, in pool order
    forms: set[tuple[int, ...]] = field(default_factory=set)  # their canonical forms
    next_base: int = 0  # the next pool entry to read


class SudokuTask:
    """Sudoku puzzles as token sequences: inputs are the clues, labels the full solution.

    Base puzzles come from a lazily filled pool per (split, seed, difficulty); index i picks one
    of the first 1 + i // REUSE bases (so generation cost is spread over the stream) and, with
    `augment`, applies a fresh random symmetry. A drawn puzzle whose hash puts it in the other
    split is drawn again, so train and test never share an exact puzzle.

    A list of difficulties is a mix: sample i has difficulty mix[i % len(mix)] and is the next
    sample of that difficulty's own stream (a difficulty listed twice comes twice as often), so
    the mix's samples of each difficulty are exactly the samples a task of that difficulty serves.
    """

    name = "sudoku"
    vocab_size = 11

    def __init__(self, size: int = 4, difficulty: int | list[int] = 1, seed: int = 0, augment: bool = True,
                 pool_size: int | None = None):
        _geometry(size)  # raises for an unsupported size
        mix = list(difficulty) if isinstance(difficulty, (list, tuple)) else [difficulty]
        if not mix or any(isinstance(d, bool) or d not in (1, 2, 3) for d in mix):
            raise ValueError(f"Sudoku difficulty {difficulty} is not supported; allowed: 1, 2 or 3, or a list of them.")
        self.mix = tuple(mix) if len(set(mix)) > 1 else None
        # per difficulty of the mix: its own task, and the positions of the mix it fills
        self._mixed = {d: (SudokuTask(size, d, seed, augment, pool_size), [p for p, m in enumerate(mix) if m == d])
                       for d in set(mix)} if self.mix else {}
        self.size = size
        self.difficulty = self.mix or mix[0]  # a mix serves from its difficulties' tasks, never from its own pools
        self.seed = seed
        self.augment = augment
        self.seq_len = size * size
        self.pool_size = pool_size or POOL_SIZE[size]
        self.reuse = REUSE[size] if augment else 1
        self._pool: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        self._distinct: dict[str, _DistinctScan] = {}  # per split: how far distinct_samples has read the pool

    def base_puzzle(self, split: str, j: int) -> tuple[list[int], list[int]]:
        """Pool entry j of `split`: (puzzle, solution) as digits, generated on first use."""
        key = (split, j)
        if key not in self._pool:
            rng = random.Random(_stable_seed("sudoku-base", self.size, self.difficulty, self.seed, split, j))
            puzzle, solution = make_puzzle(self.size, self.difficulty, rng)
            if not self.augment:
                # Served as is, so relabel it (an equally random puzzle) until it lies in its split.
                while split_of(puzzle) != split:
                    symmetry = random_symmetry(self.size, rng)
                    puzzle, solution = apply_symmetry(symmetry, puzzle), apply_symmetry(symmetry, solution)
            self._pool[key] = (puzzle, solution)
        return self._pool[key]

    def sample(self, split: str, index: int) -> Sample:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not known; allowed: 'train' or 'test'.")
        if index < 0:
            raise ValueError(f"sample index {index} is negative; indices start at 0.")
        if self.mix:
            rounds, position = divmod(index, len(self.mix))
            task, positions = self._mixed[self.mix[position]]
            return task.sample(split, rounds * len(positions) + positions.index(position))
        rng = random.Random(_stable_seed("sudoku-sample", self.size, self.difficulty, self.seed, split, index))
        available = min(self.pool_size, 1 + index // self.reuse)
        for _ in range(10_000):
            puzzle, solution = self.base_puzzle(split, rng.randrange(available))
            if self.augment:
                symmetry = random_symmetry(self.size, rng)
                puzzle = apply_symmetry(symmetry, puzzle)
            if split_of(puzzle) == split:
                if self.augment:  # the solution only for a puzzle that is kept
                    solution = apply_symmetry(symmetry, solution)
                return Sample(inputs=to_tokens(puzzle), labels=to_tokens(solution))
        raise AssertionError("no puzzle of this split found in 10,000 draws")

    def distinct_samples(self, split: str, n: int | None = None, skip: int = 0) -> list[Sample]:
        """Items skip .. skip + n - 1 of the split's distinct puzzles (n None: all from skip on), for evaluation
        sets of distinct items.

        `sample(split, i)` reuses each base puzzle about REUSE times (its first 300 test samples at 6x6 are
        symmetries of some 38 bases); here there is one puzzle per base, in pool order, and a base that is a
        symmetry of an earlier one is left out (at 9x9 an exact repeat: there two random puzzles one symmetry
        apart are practically impossible). With `augment` each is one fixed symmetry of its base that lies in the
        split. Disjoint ranges never share a puzzle up to symmetry: a validation set taken with skip = the test
        set's size holds none of the test puzzles.
        """
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not known; allowed: 'train' or 'test'.")
        if self.mix:
            raise ValueError("a mix of difficulties has no one set of distinct puzzles; ask a task of each difficulty.")
        scan = self._distinct.setdefault(split, _DistinctScan())
        while n is None or len(scan.kept) < skip + n:
            j = scan.next_base
            if j >= self.pool_size:
                if n is None:
                    break
                raise ValueError(f"the {split} split of {self.size}x{self.size} Sudoku at difficulty {self.difficulty} "
                                 f"holds only {len(scan.kept)} distinct puzzles; ask for at most that many.")
            scan.next_base += 1
            puzzle = self.base_puzzle(split, j)[0]
            form = canonical_form(puzzle, self.size) if self.size in (4, 6) else tuple(puzzle)
            if form not in scan.forms:
                scan.forms.add(form)
                scan.kept.append(j)
        end = len(scan.kept) if n is None else skip + n
        return [self._distinct_sample(split, j) for j in scan.kept[skip:end]]

    def _distinct_sample(self, split: str, j: int) -> Sample:
        puzzle, solution = self.base_puzzle(split, j)
        if self.augment:  # base puzzles with augment are not held to their split: move this one into it
            rng = random.Random(_stable_seed("sudoku-distinct", self.size, self.difficulty, self.seed, split, j))
            for _ in range(10_000):
                symmetry = random_symmetry(self.size, rng)
                moved = apply_symmetry(symmetry, puzzle)
                if split_of(moved) == split:
                    puzzle, solution = moved, apply_symmetry(symmetry, solution)
                    break
            else:
                raise AssertionError("no symmetry of this base puzzle lies in its split in 10,000 draws")
        return Sample(inputs=to_tokens(puzzle), labels=to_tokens(solution))

    def render(self, sample: Sample) -> str:
        return render_grids(sample.inputs, sample.labels)


def render_grids(*token_grids: list[int]) -> str:
    """Grids side by side, `.` for blanks, `|` and `-` between boxes."""
    size = math.isqrt(len(token_grids[0]))
    box_rows, box_cols = BOX_SHAPES[size]
    symbols = {0: "?", 1: "."} | {d + 1: str(d) for d in range(1, 10)}

    def lines(tokens: list[int]) -> list[str]:
        out = []
        for r in range(size):
            if r and r % box_rows == 0:
                out.append("-+-".join("-" * (2 * box_cols - 1) for _ in range(size // box_cols)))
            cells = [symbols.get(t, "?") for t in tokens[r * size:(r + 1) * size]]
            out.append(" | ".join(" ".join(cells[c:c + box_cols]) for c in range(0, size, box_cols)))
        return out

    columns = [lines(g) for g in token_grids]
    return "\n".join("    ".join(row) for row in zip(*columns))
