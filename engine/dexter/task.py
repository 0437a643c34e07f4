"""The built Dexter datasets as ordinary engine tasks: `task.name = "dexter-memory"` (or tool, reasoning) with
`task.path` = the folder `lab dexter build` wrote.

One example is laid out over the model's positions like the lab's text tasks, with the answer's first token
(which output the caller asks for: <MEM_FACT>, <TOOL_RESULT>, <REASON_PLAN> or <REASON_STEP>) given:

    inputs:  {input tokens} <ANSWER KIND> BLANK BLANK ... BLANK BLANK ...
    labels:  PAD ...        <ANSWER KIND> a     n         EOS   PAD ...

The training stream is the training examples in a fresh order every pass (a pure function of seed and
index); the held-out stream is the held-out examples in file order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from engine.dexter.dataset import FORMAT, KINDS, META, TOKENIZER, memory_query, reasoning_query, tool_query
from engine.dexter.vocab import BLANK, EOS, PAD, Vocabulary, VocabularyError
from engine.tasks.base import Sample
from engine.tasks.tokenizer import check_split, stable_int

DESCRIPTIONS = {
    "memory": "dexter/memory: a query (and earlier turns) -> up to 3 relevant facts; graded by the set of facts",
    "tool": "dexter/tool: a task, the available tools and any previous error -> the tool; graded on the tool",
    "reasoning": "dexter/reasoning: a goal and what is done -> the plan or the next step; graded exactly",
}
PROBE_ANSWER = {"memory": "<MEM_FACT>", "tool": "<TOOL_RESULT>", "reasoning": "<REASON_PLAN>"}


class Layout:
    """A built vocabulary and one model's sequence length: text in, positions out, and back."""

    def __init__(self, kind: str, path: str | Path):
        if kind not in KINDS:
            raise ValueError(f"there is no Dexter model {kind!r}; allowed: {', '.join(KINDS)}.")
        if not str(path):
            raise ValueError("task.path is empty; set it to the folder `lab dexter build RAW_DIR OUT` wrote.")
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            raise ValueError(f"task.path {str(path)!r} holds no built Dexter dataset ({META} is missing); "
                             "build one with `lab dexter build RAW_DIR OUT` and set task.path = OUT.")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            seq_len = int(meta["kinds"][kind]["seq_len"])
            assert meta["format"] == FORMAT and 8 <= seq_len <= 4096
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise ValueError(f"{meta_path} is not a dataset summary of this lab's format {FORMAT} with a {kind} "
                             "model; rebuild it with `lab dexter build`.") from None
        try:
            self.vocab = Vocabulary.load(path / TOKENIZER)
        except VocabularyError as exc:
            raise ValueError(str(exc)) from None
        self.kind, self.path, self.meta, self.seq_len = kind, path, meta, seq_len
        self.vocab_size = self.vocab.size

    def encode(self, input_text: str, output_text: str) -> Sample:
        head, answer = self.vocab.encode(input_text), self.vocab.encode(output_text) + [EOS]
        assert len(head) + len(answer) <= self.seq_len, f"{input_text!r} does not fit in {self.seq_len} positions"
        pad = [PAD] * (self.seq_len - len(head) - len(answer))
        # blanks to the end, not only over the answer: a caller asking a question does not know its length
        inputs = head + answer[:1] + [BLANK] * (self.seq_len - len(head) - 1)
        return Sample(inputs=inputs, labels=[PAD] * len(head) + answer + pad)

    def query(self, input_text: str, answer_kind: str) -> tuple[list[int], int]:
        """(inputs, answer start) for a question with no known answer: every free position is an answer blank.
        Raises ValueError when the question does not fit."""
        head = self.vocab.encode(input_text)
        if len(head) + 2 > self.seq_len:
            raise ValueError(f"the {self.kind} model reads {self.seq_len} positions and this input takes "
                             f"{len(head)} tokens; shorten it.")
        inputs = head + [self.vocab.id(answer_kind)] + [BLANK] * (self.seq_len - len(head) - 1)
        return inputs, len(head)

    def answer(self, predicted: list[int], start: int) -> list[int]:
        """The predicted answer's tokens from `start` up to (not including) EOS or PAD."""
        out = []
        for t in predicted[start:]:
            if t in (EOS, PAD):
                break
            out.append(t)
        return out

    def facts(self, answer: list[int]) -> list[tuple[int, ...]]:
        """A memory answer's facts as token tuples: <MEM_FACT> f1 <SEP> f2 <SEP> f3."""
        sep, head = self.vocab.id("<SEP>"), self.vocab.id("<MEM_FACT>")
        body = answer[1:] if answer and answer[0] == head else answer
        parts, cur = [], []
        for t in body:
            if t == sep:
                parts.append(tuple(cur))
                cur = []
            else:
                cur.append(t)
        parts.append(tuple(cur))
        return [p for p in parts if p]


class DexterTask:
    """One Dexter model's built dataset, served as (inputs, labels) samples and graded the way its model is used."""

    def __init__(self, kind: str, path: str = "", difficulty: int = 1, seed: int = 0, carry_turns: bool = False):
        if difficulty != 1:
            raise ValueError("the Dexter datasets have one difficulty; leave task.difficulty at 1.")
        if carry_turns and kind != "memory":
            raise ValueError(f"task.carry_turns is for the memory model's conversations; the {kind} model has none.")
        self.layout = Layout(kind, path)
        self.kind, self.seed, self.carry_turns = kind, seed, carry_turns
        self.name = f"dexter-{kind}"
        self.description = DESCRIPTIONS[kind]
        self.vocab, self.vocab_size, self.seq_len = self.layout.vocab, self.layout.vocab_size, self.layout.seq_len
        self.examples = {"train": [], "test": []}
        file = Path(path) / f"{kind}.jsonl"
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            raise ValueError(f"{file} could not be read; rebuild the dataset with `lab dexter build`.") from None
        for n, line in enumerate(lines, start=1):
            try:
                e = json.loads(line)
                assert e["split"] in self.examples and isinstance(e["input"], str) and isinstance(e["output"], str)
                assert len(self.vocab.encode(e["input"])) + len(self.vocab.encode(e["output"])) < self.seq_len
            except (ValueError, KeyError, TypeError, AssertionError):
                raise ValueError(f"{file} line {n} is not an example this build wrote; rebuild the dataset with "
                                 "`lab dexter build`.") from None
            self.examples[e["split"]].append(e)
        for split, rows in self.examples.items():
            if not rows:
                raise ValueError(f"{file} has no {split} examples; rebuild the dataset from more records.")
        self._order: tuple[int, int, list[int]] | None = None  # (pass, items, its order): the stream's
        # with carry_turns the training stream is over chains: a conversation's turns in order, anything else alone
        self.chains = {split: _chains(rows) if carry_turns else [[i] for i in range(len(rows))]
                       for split, rows in self.examples.items()}

    @staticmethod
    def description_of(name: str) -> str:
        return DESCRIPTIONS[name.removeprefix("dexter-")] + " (vocabulary and length: the dataset at task.path)"

    def size(self, split: str) -> int:
        check_split(split)
        return len(self.examples[split])

    def problem(self, split: str, index: int) -> dict:
        """The example behind sample (split, index)."""
        check_split(split)
        return self._streamed(split, index, self.examples[split])

    def _streamed(self, split: str, index: int, items: list):
        """Item `index` of a split's stream: held out in file order, training in a fresh order every pass."""
        if split == "test":
            return items[index % len(items)]
        epoch, i = divmod(index, len(items))
        return items[self._pass_order(epoch, len(items))[i]]

    def _pass_order(self, epoch: int, n: int) -> list[int]:
        if self._order is None or self._order[:2] != (epoch, n):
            order = list(range(n))
            random.Random(stable_int("dexter", self.kind, self.seed, epoch)).shuffle(order)
            self._order = (epoch, n, order)
        return self._order[2]

    def sample(self, split: str, index: int) -> Sample:
        e = self.problem(split, index)
        return self.layout.encode(self.input_of(e), e["output"])

    def input_of(self, e: dict) -> str:
        """The model's input text: with carry_turns a turn is its query alone, its conversation being in the
        latents carried from the turns before."""
        turn = self.carry_turns and e["group"].startswith("conversation:")
        return memory_query(e["query"]) if turn else e["input"]

    # ---- the chained stream (carry_turns): a slot takes a conversation's turns one after another ----

    def chain(self, split: str, index: int) -> list[int]:
        """Stream item `index` as example numbers in turn order (training: a fresh order of chains every pass)."""
        check_split(split)
        return self._streamed(split, index, self.chains[split])

    def turn_sample(self, split: str, example: int) -> Sample:
        e = self.examples[split][example]
        return self.layout.encode(self.input_of(e), e["output"])

    # ---- probes: a person's text in, the answer out (engine/probe.py) ----

    def probe_input(self, text: str) -> list[int]:
        """`text` as this model's input positions: a query (memory), a task with every known tool available
        (tool), a goal to plan (reasoning); text that starts with one of the layout's markers is taken as it is.
        Raises ValueError (one sentence) when it does not fit."""
        if not text.startswith("<"):
            text = {"memory": lambda: memory_query(text), "reasoning": lambda: reasoning_query(text),
                    "tool": lambda: tool_query(text, self.vocab.tools)}[self.kind]()
        kind = "<REASON_STEP>" if self.kind == "reasoning" and "state: done" in text else PROBE_ANSWER[self.kind]
        try:
            return self.layout.query(text, kind)[0]
        except ValueError as exc:
            raise ValueError(f"the probe {exc}") from None

    def probe_answer(self, inputs: list[int], predicted: list[int]) -> str:
        start = inputs.index(BLANK) - 1  # the answer's kind token, given, sits before the first blank
        return self.vocab.decode([inputs[start]] + self.layout.answer(predicted, start)[1:])

    def render(self, sample: Sample) -> str:
        start = next(i for i, t in enumerate(sample.labels) if t != PAD)
        return f"input:  {self.vocab.decode(sample.inputs[:start])}\n" \
               f"answer: {self.vocab.decode(self.layout.answer(sample.labels, start))}"

    def grade(self, problem: dict, predicted: list[int], sample: Sample | None = None) -> bool:
        """Memory: every relevant fact among the first three predicted. Tool: the right tool. Reasoning: the
        whole answer."""
        sample = sample or self.layout.encode(self.input_of(problem), problem["output"])
        start = next(i for i, t in enumerate(sample.labels) if t != PAD)
        if self.kind == "memory":
            got = set(self.layout.facts(self.layout.answer(predicted, start))[:3])
            return all(tuple(self.vocab.encode(f)) in got for f in problem["facts"])
        if self.kind == "tool":
            return predicted[start + 1] == sample.labels[start + 1]
        return all(p == t for p, t in zip(predicted, sample.labels) if t != PAD)


def _chains(rows: list[dict]) -> list[list[int]]:
    """Example numbers grouped by conversation in turn order; examples of no conversation stand alone."""
    chains: dict[str, list[int]] = {}
    for i, e in enumerate(rows):
        key = e["group"] if e["group"].startswith("conversation:") else f"#{i}"
        chains.setdefault(key, []).append(i)
    return [sorted(c, key=lambda i: rows[i].get("turn", 0)) for c in chains.values()]


def single_turn(kind: str):
    """The tool or reasoning task's constructor: their examples are single turns, so no carry_turns to take."""
    def task(path: str = "", difficulty: int = 1, seed: int = 0) -> DexterTask:
        return DexterTask(kind, path, difficulty, seed)
    return task
