"""Mazes: an N x N grid in, the same grid with its shortest path marked out.

Cells: `#` wall, `.` open, `S` start, `G` goal; the labels mark the path cells between S and
G with `*` (every position is predicted, like Sudoku). Mazes are carved by a depth-first
walk over the rooms at odd coordinates, so the side is odd. Difficulty sets how far G lies
from S (the nearest, middle or farthest third of the rooms, by path length) and, at 3, opens
extra walls so the maze has loops. A maze whose shortest path is not unique is drawn again,
so the answer is always well defined.
"""

from __future__ import annotations

import math
import random
from collections import deque

from engine.config import ConfigError
from engine.tasks.base import Sample
from engine.tasks.tokenizer import TOKENIZER, Problem, TextTask

WALL, OPEN, START, GOAL, PATH = "#", ".", "S", "G", "*"


def carve(side: int, rng: random.Random, extra_openings: int = 0) -> list[str]:
    """A perfect maze (one route between any two rooms) plus `extra_openings` walls knocked out."""
    grid = [WALL] * (side * side)
    rooms = [(r, c) for r in range(1, side, 2) for c in range(1, side, 2)]
    start = rng.choice(rooms)
    grid[start[0] * side + start[1]] = OPEN
    stack = [start]
    while stack:  # iterative depth-first walk: no recursion limit on big mazes
        r, c = stack[-1]
        fresh = [(r + dr, c + dc) for dr, dc in ((-2, 0), (2, 0), (0, -2), (0, 2))
                 if 0 < r + dr < side and 0 < c + dc < side and grid[(r + dr) * side + c + dc] == WALL]
        if not fresh:
            stack.pop()
            continue
        nr, nc = rng.choice(fresh)
        grid[((r + nr) // 2) * side + (c + nc) // 2] = OPEN
        grid[nr * side + nc] = OPEN
        stack.append((nr, nc))
    walls = [(r, c) for r in range(1, side - 1) for c in range(1, side - 1)
             if grid[r * side + c] == WALL and (r % 2) != (c % 2)]  # walls between two rooms
    for r, c in rng.sample(walls, min(extra_openings, len(walls))):
        grid[r * side + c] = OPEN
    return grid


def neighbours(cell: int, side: int) -> list[int]:
    r, c = divmod(cell, side)
    out = []
    if r > 0:
        out.append(cell - side)
    if r < side - 1:
        out.append(cell + side)
    if c > 0:
        out.append(cell - 1)
    if c < side - 1:
        out.append(cell + 1)
    return out


def bfs(grid: list[str] | str, side: int, start: int) -> tuple[list[int], list[int]]:
    """Distances from `start` over non-wall cells (-1 = unreachable) and the number of
    shortest paths to each cell, capped at 2 (all we need to know is 'unique or not')."""
    dist = [-1] * (side * side)
    count = [0] * (side * side)
    dist[start], count[start] = 0, 1
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for nxt in neighbours(cell, side):
            if grid[nxt] == WALL:
                continue
            if dist[nxt] < 0:
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
            if dist[nxt] == dist[cell] + 1:
                count[nxt] = min(2, count[nxt] + count[cell])
    return dist, count


def shortest_path(grid: list[str] | str, side: int, start: int, goal: int) -> list[int] | None:
    """Cells from start to goal (both included) along a shortest path, or None if unreachable."""
    dist, _ = bfs(grid, side, start)
    if dist[goal] < 0:
        return None
    path = [goal]
    while path[-1] != start:
        cell = path[-1]
        path.append(next(n for n in neighbours(cell, side) if grid[n] != WALL and dist[n] == dist[cell] - 1))
    return path[::-1]


class MazeTask(TextTask):
    """N x N mazes (N odd); the answer marks the shortest path from S to G."""

    name = "maze"
    description = "maze: mark the shortest path from S to G (found by BFS) on an N x N grid"

    def __init__(self, difficulty: int = 1, seed: int = 0, side: int = 11):
        if isinstance(side, bool) or not isinstance(side, int) or side % 2 == 0 or not 7 <= side <= 31:
            raise ConfigError(f"maze side {side!r} is not allowed; allowed is an odd number from 7 to 31.")
        super().__init__(difficulty, seed)
        self.side = side
        self.seq_len = side * side

    def templates(self) -> list[str]:
        return [f"maze/{self.side}"]

    def make(self, template: str, rng: random.Random) -> Problem | None:
        side, d = self.side, self.difficulty
        grid = carve(side, rng, extra_openings=side // 2 if d == 3 else 0)
        rooms = [r * side + c for r in range(1, side, 2) for c in range(1, side, 2)]
        start = rng.choice(rooms)
        dist, count = bfs(grid, side, start)
        far = max(dist[r] for r in rooms)
        # difficulty picks the nearest, middle or farthest third of the rooms by path length
        lo, hi = far * (d - 1) / 3, far * d / 3
        goals = [r for r in rooms if r != start and lo < dist[r] <= hi and count[r] == 1]
        if not goals:
            return None
        goal = rng.choice(goals)
        grid[start], grid[goal] = START, GOAL
        solved = list(grid)
        for cell in shortest_path(grid, side, start, goal)[1:-1]:
            solved[cell] = PATH
        return Problem(template, "".join(grid), "".join(solved))

    # -- layout: the grid in place, every cell predicted

    def path_cells(self, problem: Problem) -> list[int]:
        """The path cells between S and G, in order from S."""
        start, goal = problem.prompt.index(START), problem.prompt.index(GOAL)
        return shortest_path(problem.prompt, self.side, start, goal)[1:-1]

    def max_hint(self, problem: Problem) -> int:
        return 3

    def encode(self, problem: Problem, hint: int = 0) -> Sample:
        grid = list(problem.prompt)
        if hint > 0:  # a hint marks the first part of the path, from S
            path = self.path_cells(problem)
            for cell in path[: min(len(path) - 1, math.ceil(len(path) * min(hint, 3) / 4))]:
                grid[cell] = PATH
        return Sample(inputs=TOKENIZER.encode("".join(grid)), labels=TOKENIZER.encode(problem.answer))

    def render(self, sample: Sample) -> str:
        maze, solved = TOKENIZER.decode(sample.inputs), TOKENIZER.decode(sample.labels)
        s = self.side
        rows = [f"{maze[r * s:(r + 1) * s]}   {solved[r * s:(r + 1) * s]}" for r in range(s)]
        return "\n".join([f"{'maze':<{s}}   solution"] + rows)

