"""The levels task: the Phase-5 pipeline's question space, its prompts and its hints."""

from __future__ import annotations

import ast
import operator

import pytest

from engine.config import ConfigError
from engine import config
from engine.tasks.levels import LEVELS, TEMPLATES, LevelTask, self_tag, temperature_ranges
from engine.tasks.registry import get_task
from engine.tasks.tokenizer import BLANK, CHARS, PAD, SEP, TOKENIZER, split_of

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def value(expression: str) -> int:
    def walk(node):
        if isinstance(node, ast.BinOp):
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant), ast.dump(node)
        return node.value

    return walk(ast.parse(expression, mode="eval").body)


@pytest.mark.parametrize("level", range(1, LEVELS + 1))
def test_every_level_has_thousands_of_distinct_right_questions_that_fit(level):
    task = LevelTask(level, prompt_chars=20)
    problems = [task.problem("train", i) for i in range(6000)]
    assert len({p.prompt for p in problems}) >= (1500 if level == 1 else 3500)  # level 1 holds 1,800 train questions
    for p in problems[:500]:
        assert int(p.answer) == value(p.prompt)
        s = task.prompted(p, "x" * 20, "reverse")  # the longest prompt fits beside any question
        assert len(s.inputs) == task.seq_len
    if level > 1:  # a new level asks mostly new questions
        before = {LevelTask(level - 1).problem("train", i).prompt for i in range(2000)}
        assert sum(p.prompt in before for p in problems) < 0.15 * len(problems)


def test_a_prompt_sits_before_the_question_and_its_effect_sets_the_label():
    task = LevelTask(3, prompt_chars=24)
    p = next(task.problem("train", i) for i in range(100) if len(task.problem("train", i).answer) >= 3)
    plain, none, rev = task.encode(p), task.prompted(p, "be kind", "none"), task.prompted(p, "answer in reverse", "reverse")
    assert TOKENIZER.decode(none.inputs[:none.inputs.index(SEP)]) == "be kind: " + p.prompt
    assert TOKENIZER.decode(none.labels) == TOKENIZER.decode(plain.labels) == p.answer
    assert TOKENIZER.decode(rev.labels) == p.answer[::-1]
    # the same number of answer positions with and without a prompt: the answers line up for distillation
    assert sum(t != PAD for t in plain.labels) == sum(t != PAD for t in rev.labels)
    assert task.seq_len == 24 + 2 + 9 + 1 + 4 + 1 and LevelTask(3).seq_len == 15


def test_hints_reveal_part_of_the_answer_and_revealed_positions_are_not_scored():
    task = LevelTask(6)
    p = next(task.problem("train", i) for i in range(100) if len(task.problem("train", i).answer) == 4)
    assert task.max_hint(p) == 3
    for h in (1, 2, 3):
        s = task.encode(p, h)
        sep = s.inputs.index(SEP)
        shown = [t for t in s.inputs[sep + 1:] if t not in (BLANK, PAD)]
        assert TOKENIZER.decode(shown) == p.answer[:h]
        assert s.labels[sep + 1:sep + 1 + h] == [PAD] * h  # copying a revealed character earns nothing
        assert TOKENIZER.decode(s.labels) == p.answer[h:]
        assert task.grade(p, task.encode(p).labels, s)


def test_held_out_questions_are_distinct_and_never_trained():
    for level, n in ((2, 300), (1, 300)):
        task = LevelTask(level)
        held = task.distinct_problems("test", n)
        assert len({p.prompt for p in held}) == len(held) and all(split_of(p.prompt) == "test" for p in held)
        assert {p.prompt for p in held}.isdisjoint(task.problem("train", i).prompt for i in range(3000))
        # level 1 holds 2,000 questions, a tenth of them held out: its set is all of those
        assert len(held) == n if level == 2 else 150 < len(held) < 250


def test_bad_levels_are_one_sentence():
    with pytest.raises(ConfigError, match="level 11 is out of range"):
        LevelTask(11)
    with pytest.raises(ConfigError, match="out of range"):
        get_task("levels", difficulty=4)  # the config reaches levels 1 to 3; the pipeline builds the rest


def test_temperature_ranges_widen_with_the_level_and_the_config_knows_the_tag_and_the_alphabet():
    spans = [temperature_ranges(level, LEVELS, 3) for level in range(1, LEVELS + 1)]
    assert all(len(r) == 3 and r[0][0] == 0.1 for r in spans)
    widths = [r[-1][1] - r[-1][0] for r in spans]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # wider as the levels rise
    tags = {self_tag(*r) for n in range(1, 17) for level in range(1, LEVELS + 1)
            for r in temperature_ranges(level, LEVELS, n)}
    assert {len(t) for t in tags} == {config.SELF_TAG_CHARS}
    assert set(TEMPLATES) == set(range(1, config.LEVELS + 1))
    printable = {chr(i) for i in range(32, 127)} | {"é", "→", "\t"}
    assert {c for c in printable if config.PROMPT_CHARACTERS.fullmatch(c)} == set(CHARS)
