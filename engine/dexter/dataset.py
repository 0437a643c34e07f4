"""`lab dexter build RAW_DIR OUT`: the memory, tool and reasoning datasets, in the design's layouts.

    memory     <MEM_QUERY> {query} context: {earlier user turns}      ->  <MEM_FACT> {fact} <SEP> {fact} <SEP> {fact}
    tool       <TOOL_CALL> task: {task} available: [{tools}] context: {ui state}         ->  <TOOL_RESULT> {tool}
               <TOOL_ERROR> {previous error} <TOOL_CALL> task: {task} available: [...]  ->  <TOOL_RESULT> {tool}
               (a call that failed: <TOOL_ERROR> {tool} {error name})
    reasoning  <REASON_TASK> {goal} state: start constraints: [{constraints}]  ->  <REASON_PLAN> {step} then {step} ...
               <REASON_TASK> {goal} state: done {last step} constraints: [...] ->  <REASON_STEP> {next step | done}

Every example has a group, and a stable hash of the group puts it in the train or the held-out split: a
conversation is one group (kept whole on one side), so is a tool session's chain of retries and a goal's plan
with all its next steps. OUT receives tokenizer.json, one JSON-lines file per model and dataset.json (sizes,
sequence lengths, the problems met).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.dexter.records import RawRecords, read_raw
from engine.dexter.vocab import TARGET_SIZE, Vocabulary, splitter, text_pieces
from engine.tasks.tokenizer import stable_int

KINDS = ("memory", "tool", "reasoning")
FORMAT = 1
META = "dataset.json"
TOKENIZER = "tokenizer.json"
TEST_PERCENT = 15  # share of groups held out
MAX_LEN = 192  # positions of one example, input and answer; longer ones are left out (and counted)
SLACK = 8  # positions beyond the longest example, for a host's slightly longer queries
MAX_FACTS = 3  # facts in one memory answer, as the design lays it out
CONTEXT_TURNS = 2  # earlier user turns a follow-up query carries as its context


class BuildError(ValueError):
    """A build that cannot go on; the message is one sentence."""


def split_of(group: str) -> str:
    return "test" if stable_int("dexter", group) % 100 < TEST_PERCENT else "train"


def complexity(n_steps: int) -> str:
    """How the design grades a plan: simple (up to 3 steps), moderate (4 or 5), complex (6 and more)."""
    return "simple" if n_steps <= 3 else "moderate" if n_steps <= 5 else "complex"


def memory_query(query: str, context: str = "") -> str:
    return f"<MEM_QUERY> {query}" + (f" context: {context}" if context else "")


def memory_answer(facts: list[str]) -> str:
    return "<MEM_FACT> " + " <SEP> ".join(facts)


def tool_query(task: str, available: list[str], context: str = "", previous_error: str = "") -> str:
    head = f"<TOOL_ERROR> {previous_error} " if previous_error else ""
    return head + f"<TOOL_CALL> task: {task} available: [{', '.join(available)}]" + \
        (f" context: {context}" if context else "")


def reasoning_query(goal: str, last_done: str = "", constraints: tuple[str, ...] = ()) -> str:
    state = f"done {last_done}" if last_done else "start"
    return f"<REASON_TASK> {goal} state: {state} constraints: [{', '.join(constraints)}]"


# ---- examples from the records -----------------------------------------------------------------------


def memory_examples(raw: RawRecords, problems: list[str]) -> list[dict]:
    out = []

    def facts_of(ids, where) -> list[str] | None:
        missing = [f for f in ids if f not in raw.facts]
        if missing:
            problems.append(f"{where} names fact {missing[0]}, which no file holds; it was left out.")
            return None
        return [raw.facts[f].text for f in ids[:MAX_FACTS]]

    for conv in raw.conversations:
        asked: list[str] = []
        for j, turn in enumerate(conv.turns):
            if turn.role != "user":
                continue
            context = " | ".join(asked[-CONTEXT_TURNS:])
            facts = facts_of(turn.fact_ids, f"d2_memory.json: conversation {conv.id} turn {j}") \
                if turn.fact_ids else None
            if facts:
                out.append({"input": memory_query(turn.text, context), "output": memory_answer(facts),
                            "group": f"conversation:{conv.id}", "source": f"d2_memory.json conversation {conv.id}",
                            "facts": facts, "query": turn.text, "context": context, "followup": bool(asked),
                            "turn": len(asked)})
            asked.append(turn.text)
    for h in raw.history:
        facts = facts_of(h.fact_ids, f"brain.db: history record {h.id}")
        if facts:
            text = memory_query(h.query, h.context)
            out.append({"input": text, "output": memory_answer(facts), "group": f"query:{text}",
                        "source": f"brain.db history {h.id}", "facts": facts, "query": h.query, "context": h.context,
                        "followup": False, "turn": 0})
    for t in raw.triples:
        fact = f"{t.subject} {t.predicate} {t.object}"
        text = memory_query(f"{t.subject} {t.predicate} what?")
        out.append({"input": text, "output": memory_answer([fact]), "group": f"query:{text}",
                    "source": "brain.db triples", "facts": [fact], "query": f"{t.subject} {t.predicate} what?",
                    "context": "", "followup": False, "turn": 0})
    return out


def tool_examples(raw: RawRecords, problems: list[str]) -> list[dict]:
    out = []
    known = sorted({c.tool for c in raw.ui_calls} | {a.tool for a in raw.artifacts} |
                   {t for c in raw.ui_calls for t in c.available} | {t for a in raw.artifacts for t in a.available})
    for c in raw.ui_calls:
        available = _offered(c.available, c.tool, known, f"training_data_fast.jsonl: line {c.line}", problems)
        if available is None:
            continue
        text = tool_query(c.instruction, available, c.context)
        out.append({"input": text, "output": f"<TOOL_RESULT> {c.tool}", "group": f"ui:{text}",
                    "source": f"training_data_fast.jsonl line {c.line}", "tool": c.tool, "task": c.instruction,
                    "context": c.context, "available": available, "previous_error": "", "after_error": False})
    by_id = {a.id: a for a in raw.artifacts}

    def root(a) -> str:
        seen = {a.id}
        while a.retry_of in by_id and a.retry_of not in seen:  # a cycle of retries ends where it closes
            a = by_id[a.retry_of]
            seen.add(a.id)
        return a.id

    for a in raw.artifacts:
        available = _offered(a.available, a.tool, known, f"art_*.json: artifact {a.id}", problems)
        if available is None:
            continue
        before = by_id.get(a.retry_of)
        if a.retry_of and before is None:
            problems.append(f"art_*.json: artifact {a.id} retries {a.retry_of}, which no file holds; "
                            "it is read as a first attempt.")
        error = before.error if before is not None and not before.ok else ""
        answer = f"<TOOL_RESULT> {a.tool}" if a.ok else f"<TOOL_ERROR> {a.tool} {a.error.split(':')[0].split()[0]}"
        out.append({"input": tool_query(a.task, available, previous_error=error), "output": answer,
                    "group": f"session:{a.session}:{root(a)}", "source": f"{a.id}.json", "tool": a.tool,
                    "task": a.task, "context": "", "available": available, "previous_error": error,
                    "after_error": bool(error), "failed_tool": before.tool if error else ""})
    return out


def _offered(available, tool: str, known: list[str], where: str, problems: list[str]) -> list[str] | None:
    """The tools a call chose from (every known tool when its record lists none); None, with a problem named,
    when the call's own tool is not among them."""
    offered = list(available) or known
    if tool in offered:
        return offered
    problems.append(f"{where} calls {tool}, which its available_tools do not list; it was left out.")
    return None


def reasoning_examples(raw: RawRecords, problems: list[str]) -> list[dict]:
    plans = [(p.trigger, p.steps, p.constraints, f"brain.db patterns {p.id}") for p in raw.patterns]
    plans += [(s.goal, s.plan, s.constraints, f"d2_memory.json summary of {s.conversation_id}")
              for s in raw.summaries if s.goal and s.plan]
    out = []
    for goal, steps, constraints, source in plans:
        group = f"goal:{goal}|{'|'.join(constraints)}"
        common = {"group": group, "source": source, "goal": goal, "steps": list(steps),
                  "constraints": list(constraints), "complexity": complexity(len(steps))}
        out.append({"input": reasoning_query(goal, "", constraints), "output": "<REASON_PLAN> " + " then ".join(steps),
                    "mode": "plan", **common})
        for k in range(len(steps) + 1):
            out.append({"input": reasoning_query(goal, steps[k - 1] if k else "", constraints),
                        "output": "<REASON_STEP> " + (steps[k] if k < len(steps) else "done"), "mode": "step",
                        "done": k, **common})
    return out


BUILDERS = {"memory": memory_examples, "tool": tool_examples, "reasoning": reasoning_examples}


# ---- the build ------------------------------------------------------------------------------------------


VOCAB_SOURCES = ("records", "examples")


def build(raw_dir: str | Path, out_dir: str | Path, vocab_size: int = TARGET_SIZE, vocab_from: str = "records") -> dict:
    """Read RAW_DIR, write the datasets into OUT; returns the summary (also written as OUT/dataset.json).
    Problems with single records are in summary["problems"]; a build that cannot go on raises BuildError.
    vocab_from: the BPE learns from all the records' text, tool outputs included ("records"), or only from
    what the three layouts read, the facts and the conversations ("examples")."""
    if vocab_from not in VOCAB_SOURCES:
        raise BuildError(f"vocab_from {vocab_from!r} is not known; allowed are {', '.join(VOCAB_SOURCES)}.")
    raw_dir, out = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise BuildError(f"{raw_dir} is not a folder; pass the folder that holds the raw records "
                         "(or make one with `lab dexter sample DIR`).")
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} is a file; pass a folder for the datasets.")
    if out.is_dir() and any(out.iterdir()) and not (out / META).is_file():
        raise BuildError(f"{out} is a folder that holds something other than a Dexter dataset; pass an empty or "
                         "new folder.")
    raw = read_raw(raw_dir)
    if not raw.files:
        raise BuildError(f"{raw_dir} holds none of d2_memory.json, brain.db, training_data_fast.jsonl or art_*.json; "
                         "add records or make a synthetic set with `lab dexter sample DIR`.")
    problems = list(raw.problems)
    examples = {kind: _dedupe(BUILDERS[kind](raw, problems)) for kind in KINDS}
    tools = sorted({t for e in examples["tool"] for t in e["available"]})
    split = splitter(tools)
    texts = [p for kind in KINDS for e in examples[kind] for field in ("input", "output")
             for p in text_pieces(e[field], split)]
    texts += [f.text for f in raw.facts.values()] + [t.text for c in raw.conversations for t in c.turns]
    if vocab_from == "records":  # tool outputs: most of an assistant's records, though no layout reads them yet
        texts += [p for a in raw.artifacts for p in text_pieces(a.result, split)]
    vocab = Vocabulary.train(texts, tools, vocab_size)

    summary = {"format": FORMAT, "vocab_size": vocab.size, "target_vocab_size": vocab_size, "vocab_from": vocab_from,
               "tools": len(tools), "raw": raw.counts(), "raw_files": len(raw.files), "kinds": {}, "problems": problems}
    lines = {}
    for kind in KINDS:
        kept, too_long, longest = [], 0, 0
        for e in examples[kind]:
            n = len(vocab.encode(e["input"])) + len(vocab.encode(e["output"])) + 1  # + EOS
            if n > MAX_LEN:
                too_long += 1
                continue
            longest = max(longest, n)
            kept.append(dict(e, split=split_of(e["group"])))
        train = [e for e in kept if e["split"] == "train"]
        test = [e for e in kept if e["split"] == "test"]
        if not train or not test:
            raise BuildError(f"{raw_dir}: the {kind} dataset has {len(train)} training and {len(test)} held-out "
                             f"examples; both need at least one, so add records (a synthetic set of --size 100 or "
                             "more is enough).")
        seen = {e["input"] for e in train}
        summary["kinds"][kind] = {
            "train": len(train), "test": len(test), "groups": len({e["group"] for e in kept}),
            "seq_len": -(-(longest + SLACK) // 8) * 8, "left_out_too_long": too_long,
            "test_inputs_seen_in_train": sum(e["input"] in seen for e in test)}
        lines[kind] = "".join(json.dumps(e) + "\n" for e in kept)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{TOKENIZER}.tmp"
    vocab.save(tmp)
    os.replace(tmp, out / TOKENIZER)
    for kind in KINDS:
        _write(out / f"{kind}.jsonl", lines[kind])
    _write(out / META, json.dumps(summary, indent=1) + "\n")  # last: a folder with dataset.json is whole
    return summary


def _dedupe(examples: list[dict]) -> list[dict]:
    """One copy of an example repeated within its group (a pattern stored twice is one plan)."""
    seen, out = set(), []
    for e in examples:
        key = (e["group"], e["input"], e["output"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def format_summary(summary: dict, out: str | Path) -> str:
    """The summary as a person reads it: sizes per model, the vocabulary, what was left out."""
    lines = [f"built {out}: vocabulary {summary['vocab_size']} entries (target {summary['target_vocab_size']}, "
             f"from the {summary.get('vocab_from', 'records')}' text, "
             f"{summary['tools']} tools as whole tokens) from {summary['raw_files']} raw files"]
    for kind, k in summary["kinds"].items():
        lines.append(f"  {kind:<10} {k['train']:>6} train  {k['test']:>5} held out  {k['groups']:>5} groups  "
                     f"{k['seq_len']:>4} positions" + (f"  ({k['left_out_too_long']} too long, left out)"
                                                        if k["left_out_too_long"] else ""))
    if summary["problems"]:
        lines.append(f"  {len(summary['problems'])} records could not be used (each named on stderr)")
    return "\n".join(lines)
