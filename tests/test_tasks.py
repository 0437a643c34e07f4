"""The generated tasks: determinism, disjoint splits, correct answers, layout, hints, registry."""

import ast
import hashlib
import json
import operator
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from engine.config import ConfigError, TaskConfig
from engine.tasks.arith import MathTask
from engine.tasks.maze import MazeTask
from engine.tasks.memory import MemoryTask
from engine.tasks.modular import NUMBER_BASE, ModularTask
from engine.tasks.program import ProgramTask
from engine.tasks.registry import (
    DATASET_TASKS,
    TASKS,
    UnknownTaskError,
    describe_tasks,
    get_task,
    list_tasks,
    show_samples,
    task_from_config,
)
from engine.tasks.tokenizer import BLANK, EOS, HINT, PAD, SEP, TOKENIZER, Problem, split_of, stable_rng

GENERATED = ["math", "arithmetic", "algebra", "sequence", "word", "recall", "gap", "surprise", "maze", "program",
             "levels"]
ROOT = Path(__file__).resolve().parents[1]


def digest(task, split, n):
    h = hashlib.sha256()
    for i in range(n):
        s = task.sample(split, i)
        h.update(json.dumps([s.inputs, s.labels]).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- determinism and splits


@pytest.mark.parametrize("name", GENERATED)
def test_samples_are_pure_functions_of_seed_split_index(name):
    a, b = get_task(name, difficulty=2, seed=3), get_task(name, difficulty=2, seed=3)
    for i in (0, 7, 123):
        assert a.sample("train", i) == b.sample("train", i)
    # out of order and repeated calls give the same thing
    assert [a.sample("test", i) for i in (5, 1, 5)] == [b.sample("test", 5), b.sample("test", 1), b.sample("test", 5)]
    # a different seed gives a different stream; different indices differ
    other = get_task(name, difficulty=2, seed=4)
    assert digest(a, "train", 20) != digest(other, "train", 20)
    assert len({tuple(a.sample("train", i).inputs) for i in range(20)}) >= 15


def fingerprint() -> str:
    return "".join(digest(get_task(name, difficulty=3, seed=1), "train", 5) for name in ("math", "recall", "maze", "program"))


def test_samples_do_not_depend_on_python_hash_seed():
    seed = "7" if os.environ.get("PYTHONHASHSEED") != "7" else "8"  # surely not this process's hash seed
    code = "import sys; sys.path.insert(0, 'tests'); from test_tasks import fingerprint; print(fingerprint())"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fingerprint()


@pytest.mark.parametrize("name", GENERATED)
@pytest.mark.parametrize("difficulty", [1, 3])
def test_train_and_test_never_share_an_item(name, difficulty):
    task = get_task(name, difficulty=difficulty)
    train = {task.problem("train", i).prompt for i in range(300)}
    test = {task.problem("test", i).prompt for i in range(100)}
    assert train.isdisjoint(test)
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "test" for p in test)


def test_small_item_spaces_split_cleanly():
    # difficulty-1 arithmetic has only 200 distinct questions: the test share must still never train
    task = MathTask("arithmetic", 1)
    train = {task.problem("train", i).prompt for i in range(3000)}
    test = {task.problem("test", i).prompt for i in range(300)}
    assert train.isdisjoint(test)
    assert len(train) > 150 and 5 < len(test) < 50


def test_variants_keep_template_and_split_and_change_values():
    for name in ("arithmetic", "algebra", "word", "recall", "maze", "program"):
        task = get_task(name, difficulty=2)
        base = task.problem("train", 11)
        variants = [task.variant(base, n) for n in range(1, 6)]
        assert task.variant(base, 0) == base
        assert all(v.template == base.template for v in variants)
        assert all(split_of(v.prompt) == "train" for v in variants)
        assert len({v.prompt for v in variants} | {base.prompt}) >= 4
        assert task.variant(base, 3) == variants[2]  # deterministic


# ----------------------------------------------------------------------------- answers are right

BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expression: str) -> int:
    """Independent evaluator for the arithmetic prompts (+, -, *, parentheses)."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp):
            return BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant):
            return node.value
        raise AssertionError(ast.dump(node))

    return walk(ast.parse(expression, mode="eval"))


def side(text: str, x: int) -> int:
    """Value of a linear side like '3x-5', 'x+2', '-x+7' at x."""
    total = 0
    for sign, coef, var in re.findall(r"([+-]?)(\d*)(x?)", text):
        if not coef and not var:
            continue
        value = int(coef) if coef else 1
        value *= x if var else 1
        total += -value if sign == "-" else value
    return total


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_arithmetic_and_algebra_answers_are_right(difficulty):
    arith, algebra = MathTask("arithmetic", difficulty), MathTask("algebra", difficulty)
    for i in range(200):
        p = arith.problem("train", i)
        assert int(p.answer) == evaluate(p.prompt), p
        q = algebra.problem("train", i)
        left, right = q.prompt.split("=")
        x = int(q.answer)
        assert side(left, x) == side(right, x), q
        assert side(left, x + 1) != side(right, x + 1)  # and the solution is unique


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_sequence_answers_continue_the_rule(difficulty):
    task = MathTask("sequence", difficulty)
    for i in range(200):
        p = task.problem("train", i)
        terms = [int(t) for t in p.prompt.rstrip(",?").split(",")] + [int(p.answer)]
        kind = p.template.split("/")[1]
        d1 = [b - a for a, b in zip(terms, terms[1:])]
        if kind in ("arithmetic_sequence", "falling_sequence"):
            assert len(set(d1)) == 1
        elif kind == "geometric_sequence":
            assert len({b / a for a, b in zip(terms, terms[1:])}) == 1
        elif kind == "fibonacci_like":
            assert all(terms[k] == terms[k - 1] + terms[k - 2] for k in range(2, len(terms)))
        else:
            assert len({b - a for a, b in zip(d1, d1[1:])}) == 1


def test_word_problem_steps_end_in_the_answer():
    task = MathTask("word", 3)
    for i in range(100):
        p = task.problem("train", i)
        numbers = [int(n) for n in re.findall(r"\d+", p.prompt)]
        assert all(str(n) in p.prompt for n in numbers)
        for step in p.steps:  # every worked step is true arithmetic
            lhs, rhs = step.split("=")
            assert evaluate(lhs.replace("/", "//")) == int(rhs), step
        assert p.steps[-1].endswith("=" + p.answer)


@pytest.mark.parametrize("kind", ["recall", "gap", "surprise"])
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_memory_answer_is_the_queried_fact(kind, difficulty):
    task = MemoryTask(kind, difficulty)
    for i in range(100):
        p = task.problem("train", i)
        body, query = p.prompt.rsplit(" ?", 1)
        facts = dict(f.split("=") for f in body.split() if "=" in f and f.split("=")[0] == query)
        assert facts == {query: p.answer}  # the queried key is stated exactly once, with the answer
        assert body.count(query + "=") == 1


def test_surprise_routine_facts_are_fixed_and_the_rare_one_is_not():
    task = MemoryTask("surprise", 2)
    routine, rare_values = {}, set()
    for i in range(200):
        p = task.problem("train", i)
        for fact in p.prompt.rsplit(" ?", 1)[0].split():
            key, value = fact.split("=")
            if key.islower():
                assert routine.setdefault(key, value) == value  # always the same value: predictable
            else:
                rare_values.add(value)
    assert len(rare_values) > 150  # high entropy: almost never repeats


def test_gap_grows_with_difficulty():
    gaps = []
    for d in (1, 2, 3):
        p = MemoryTask("gap", d).problem("train", 0)
        gaps.append(len(p.prompt))
    assert gaps[0] < gaps[1] < gaps[2]


# ----------------------------------------------------------------------------- mazes


def reference_bfs(grid: str, side: int, start: int, goal: int) -> tuple[int, int]:
    """(length of the shortest path, number of shortest paths) from start to goal."""
    dist, ways = {start: 0}, {start: 1}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        r, c = divmod(cell, side)
        for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            nxt = rr * side + cc
            if not (0 <= rr < side and 0 <= cc < side) or grid[nxt] == "#":
                continue
            if nxt not in dist:
                dist[nxt], ways[nxt] = dist[cell] + 1, 0
                queue.append(nxt)
            if dist[nxt] == dist[cell] + 1:
                ways[nxt] += ways[cell]
    return dist[goal], ways[goal]


@pytest.mark.parametrize("difficulty", [1, 2, 3])
@pytest.mark.parametrize("side", [7, 11])
def test_maze_answer_is_a_shortest_path(difficulty, side):
    task = MazeTask(difficulty, side=side)
    for i in range(40):
        sample = task.sample("train", i)
        grid, solved = TOKENIZER.decode(sample.inputs), TOKENIZER.decode(sample.labels)
        assert len(grid) == len(solved) == side * side == task.seq_len
        start, goal = grid.index("S"), grid.index("G")
        marked = {k for k, ch in enumerate(solved) if ch == "*"} | {start, goal}
        # same maze, only open cells marked
        assert all(grid[k] == solved[k] for k in range(side * side) if solved[k] != "*")
        assert all(grid[k] == "." for k in marked - {start, goal})
        # the marked cells are a connected chain from S to G with as many steps as BFS says,
        # and the only shortest path, so the answer is well defined
        assert (len(marked) - 1, 1) == reference_bfs(grid, side, start, goal)
        only_marked = "".join(ch if k in marked else "#" for k, ch in enumerate(grid))
        assert reference_bfs(only_marked, side, start, goal)[0] == len(marked) - 1


def test_maze_difficulty_lengthens_the_path_then_adds_loops():
    side, rooms = 15, 7 * 7
    lengths, open_cells = [], []
    for d in (1, 2, 3):
        task = MazeTask(d, side=side)
        solved = [TOKENIZER.decode(task.sample("train", i).labels) for i in range(30)]
        lengths.append(sum(s.count("*") for s in solved))
        open_cells.append(max(sum(ch != "#" for ch in s) for s in solved))
    assert lengths[0] < lengths[1] and lengths[0] < lengths[2]
    # a perfect maze (one route between any two rooms) has rooms + (rooms - 1) open cells; loops add more
    assert open_cells[0] == open_cells[1] == 2 * rooms - 1 < open_cells[2]


def test_maze_hint_marks_the_start_of_the_path():
    task = MazeTask(2, side=11)
    p = task.problem("train", 3)
    plain, hinted = task.encode(p), task.encode(p, hint=2)
    assert plain.labels == hinted.labels
    shown = [k for k, t in enumerate(hinted.inputs) if TOKENIZER.decode([t]) == "*"]
    path = task.path_cells(p)
    assert 0 < len(shown) < len(path) and set(shown) == set(path[: len(shown)])


def test_bad_maze_side_is_one_sentence():
    with pytest.raises(ConfigError, match="odd number from 7 to 31"):
        MazeTask(1, side=8)


# ----------------------------------------------------------------------------- layout and hints


@pytest.mark.parametrize("name", ["math", "recall", "gap", "surprise", "program"])
def test_text_layout(name):
    for steps in ([False, True] if name == "math" else [False]):
        for d in (1, 2, 3):
            task = get_task(name, difficulty=d, steps=steps) if name == "math" else get_task(name, difficulty=d)
            for i in range(50):
                p = task.problem("train", i)
                s = task.encode(p)
                assert len(s.inputs) == len(s.labels) == task.seq_len
                sep = s.inputs.index(SEP)
                assert TOKENIZER.decode(s.inputs[:sep]) == p.prompt
                assert all(t == PAD for t in s.labels[: sep + 1])
                target = TOKENIZER.decode(s.labels)
                assert target == (";".join(p.steps + (p.answer,)) if steps else p.answer)
                n = len(TOKENIZER.encode(target))
                assert s.labels[sep + 1 + n] == EOS and set(s.inputs[sep + 1 : sep + 2 + n]) == {BLANK}
                assert task.grade(p, s.labels) and not task.grade(p, s.inputs)


def test_hints_add_steps_then_part_of_the_answer_never_all_of_it():
    task = MathTask("arithmetic", 2)
    p = next(task.problem("train", i) for i in range(100) if task.problem("train", i).template.endswith("mul_two_digit"))
    plain = task.encode(p)
    previous = plain.inputs
    for h in range(1, task.max_hint(p) + 1):
        s = task.encode(p, h)
        assert TOKENIZER.decode(s.labels) == p.answer and s.inputs != previous
        assert task.grade(p, s.labels, s) and not task.grade(p, plain.labels, s)  # the hint shifts the answer
        previous = s.inputs
        assert HINT in s.inputs
        sep = s.inputs.index(SEP)
        hint_text = TOKENIZER.decode(s.inputs[s.inputs.index(HINT) + 1 : sep])
        assert hint_text == ";".join(p.steps[: min(h, len(p.steps))])
        assert BLANK in s.inputs[sep:]  # at least one answer character always left to the model
    assert task.encode(p, 99) == task.encode(p, task.max_hint(p))


def test_steps_in_target_hint_reveals_whole_steps():
    task = MathTask("algebra", 2, steps=True)
    p = task.problem("train", 0)
    s = task.encode(p, 1)
    sep = s.inputs.index(SEP)
    revealed = TOKENIZER.decode([t for t in s.inputs[sep + 1 :] if t not in (BLANK, PAD)])
    assert revealed == p.steps[0] + ";"


# ----------------------------------------------------------------------------- programs


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_reference_programs_pass_their_python_computed_cases(difficulty):
    task = ProgramTask(difficulty)
    for i in range(100):
        p = task.problem("train", i)
        result = task.check(p, p.answer)
        assert result.ok and result.passed == len(p.cases), (p, result)
        assert task.grade(p, task.encode(p).labels)


def test_every_program_a_template_knows_passes_and_varied_references_keep_the_questions():
    from engine.tasks.program import MAKERS

    for name, make in MAKERS.items():  # each written form computes the function, on many values and inputs
        for i in range(40):
            rng = stable_rng("forms", name, i)
            question, programs, function, ranges = make(rng)
            cases = [(x, tuple(function(*x))) for x in (tuple(rng.randint(lo, hi) for lo, hi in ranges)
                                                         for _ in range(10))]
            assert len(set(programs)) == len(programs) >= 3, name
            for program in programs:
                assert ProgramTask(1).check(Problem(name, question, program, cases=tuple(cases)), program).ok, program
                assert len(question) + len(program) + 2 <= ProgramTask.seq_len
    for difficulty in (1, 2, 3):
        one, varied = ProgramTask(difficulty), ProgramTask(difficulty, references="varied")
        pairs = [(one.problem("train", i), varied.problem("train", i)) for i in range(60)]
        assert all((a.prompt, a.cases) == (b.prompt, b.cases) and varied.check(b, b.answer).ok for a, b in pairs)
        assert sum(a.answer != b.answer for a, b in pairs) > 30  # the reference is often not the first form
        for template in one.templates():  # one kind of question, several layouts of its target
            assert len({re.sub(r"-?\d+", "#", b.answer) for a, b in pairs if b.template == template}) >= 2, template
        for a, b in pairs:  # varied: the input does not tell the reference's length, so it does not tell the form
            assert varied.encode(b).inputs == varied.encode(a).inputs and PAD not in varied.encode(b).inputs
            assert varied.encode(b).labels == one.encode(b).labels and varied.grade(b, varied.encode(b).labels)
    with pytest.raises(ConfigError, match="references 'many' is not one of one, varied"):
        get_task("program", references="many")


def test_program_grading_runs_the_program_rather_than_comparing_text():
    task = ProgramTask(1)
    p = next(task.problem("train", i) for i in range(100) if task.problem("train", i).template == "program/affine")
    a, b = re.fullmatch(r"f\(x\)=x\*(\d+)([+-]\d+)", p.prompt).groups()
    other = f"{int(b)} swap {a} * + ."  # different text, same function
    assert other != p.answer and task.check(p, other).ok
    wrong = f"{a} * ."
    result = task.check(p, wrong)
    assert not result.ok and result.failed >= 1 and "expected" in result.first_error
    s = task.encode(p)
    sep = s.inputs.index(SEP)
    predicted = list(s.labels)
    predicted[sep + 1 :] = TOKENIZER.encode(other) + [EOS] + [PAD] * (len(s.labels) - sep - 2 - len(other))
    assert task.grade(p, predicted)
    looping = TOKENIZER.encode("1 while 1 end") + [EOS]
    predicted[sep + 1 : sep + 1 + len(looping)] = looping
    assert not task.grade(p, predicted)


# ----------------------------------------------------------------------------- registry and CLI helpers


def test_registry_lists_every_task_and_builds_each():
    assert list_tasks() == list(TASKS)
    assert set(GENERATED) | {"sudoku", "modular"} | set(DATASET_TASKS) == set(list_tasks())
    rows = {r["name"]: r for r in describe_tasks()}
    assert set(rows) == set(list_tasks())
    for name, row in rows.items():  # a task served from a built dataset has the dataset's sizes, not its own
        assert row["description"] and (name in DATASET_TASKS or row["seq_len"] > 0 and row["vocab_size"] > 1)
    assert rows["maze"]["seq_len"] == 121 and rows["math"]["vocab_size"] == TOKENIZER.vocab_size


def test_unknown_task_and_bad_params_are_one_sentence():
    with pytest.raises(UnknownTaskError) as err:
        get_task("chess")
    assert "'chess'" in str(err.value) and "maze" in str(err.value) and str(err.value).count(".") == 1
    with pytest.raises(ConfigError, match="out of range"):
        get_task("maze", difficulty=4)
    with pytest.raises(ConfigError, match="does not take size"):
        get_task("arithmetic", size=9)
    with pytest.raises(ConfigError, match="split"):
        get_task("recall").sample("validation", 0)


def test_task_from_config_passes_only_what_the_task_takes():
    task = task_from_config(TaskConfig(name="arithmetic", difficulty=3, seed=5, steps=True))
    assert isinstance(task, MathTask) and task.difficulty == 3 and task.seed == 5 and task.steps
    assert task_from_config(TaskConfig(name="maze", difficulty=2)).seq_len == 121
    assert task_from_config(TaskConfig(name="sudoku", size=4)).seq_len == 16


def test_show_samples_prints_readable_samples():
    text = show_samples("arithmetic", n=3, split="test", difficulty=2)
    assert text.count("--- #") == 3 and "question:" in text and "answer:" in text
    assert show_samples("arithmetic", n=3, split="test", difficulty=2) == text
    maze = show_samples("maze", n=1)
    assert "S" in maze and "G" in maze and "*" in maze
    with pytest.raises(ConfigError):
        show_samples("modular", n=2, difficulty=2)
    with pytest.raises(ConfigError):
        show_samples("maze", n=0)


# ---- modular arithmetic (the grokking task) ----

def test_modular_task_splits_the_whole_table_in_seeded_halves():
    task = ModularTask(p=11, op="mul", train_fraction=0.5, seed=3)
    seen = {}
    for split in ("train", "test"):
        for i in range(task.size(split)):
            s = task.sample(split, i)
            a, b = s.inputs[0] - NUMBER_BASE, s.inputs[2] - NUMBER_BASE
            assert s.labels[3] - NUMBER_BASE == (a * b) % 11 and s.labels[:3] == [0, 0, 0]
            assert (a, b) not in seen
            seen[(a, b)] = split
    assert len(seen) == 121 and abs(task.size("train") - 60.5) <= 1  # half the table, the rest is test
    assert all(seen[(b, a)] == split for (a, b), split in seen.items())  # a pair and its mirror share a split
    n = task.size("train")
    assert task.sample("train", 7) == ModularTask(p=11, seed=3).sample("train", 7 + n)  # wraps, deterministic
    assert task.sample("train", 0) != ModularTask(p=11, seed=4).sample("train", 0) or \
        task.sample("train", 1) != ModularTask(p=11, seed=4).sample("train", 1)
    inputs, labels = task.tensors("test")
    assert inputs[5].tolist() == task.sample("test", 5).inputs and labels[5].tolist() == task.sample("test", 5).labels


def test_modular_division_uses_the_inverse_and_bad_settings_are_config_errors():
    task = ModularTask(p=7, op="div")
    assert all((task.answer(a, b) * b) % 7 == a for a in range(7) for b in range(1, 7))
    assert task.size("train") + task.size("test") == 7 * 6  # no division by zero
    with pytest.raises(ConfigError, match="task.op"):
        ModularTask(op="pow")
    with pytest.raises(ConfigError, match="task.p"):
        ModularTask(p=96)
