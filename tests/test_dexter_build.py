"""`lab dexter build`: one shared vocabulary, the design's layouts, a held-out split by a stable hash of the
record's group (a conversation whole on one side), and a summary of sizes."""

import json
from pathlib import Path

import pytest

from engine.dexter.dataset import KINDS, build, split_of
from engine.dexter.sample import write_sample
from engine.dexter.vocab import SPECIAL_TOKENS, Vocabulary, VocabularyError
from tests.helpers import lab


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dexter")
    write_sample(root / "raw", seed=5, size=200)
    return root, build(root / "raw", root / "built")


def examples(out: Path, kind: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{kind}.jsonl").read_text().splitlines()]


def test_the_summary_counts_what_was_written(built):
    root, summary = built
    out = root / "built"
    assert summary == json.loads((out / "dataset.json").read_text())
    for kind in KINDS:
        rows = examples(out, kind)
        k = summary["kinds"][kind]
        assert k["train"] == sum(r["split"] == "train" for r in rows) > 0
        assert k["test"] == sum(r["split"] == "test" for r in rows) > 0
        assert 0.05 < k["test"] / (k["train"] + k["test"]) < 0.35
        assert k["seq_len"] % 8 == 0 and k["left_out_too_long"] == 0
    assert summary["problems"] == []


def test_one_vocabulary_with_the_design_tokens_and_whole_tool_names(built):
    root, summary = built
    vocab = Vocabulary.load(root / "built" / "tokenizer.json")
    assert vocab.size == summary["vocab_size"] and 500 < vocab.size <= 8000
    assert [vocab.id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert "file_system.list" in vocab.tools and len(vocab.tools) == summary["tools"]
    text = "<TOOL_ERROR> TimeoutError: late <TOOL_CALL> task: fetch it available: [web.fetch, web.fetch_cached]"
    ids = vocab.encode(text)
    assert vocab.id("web.fetch") in ids and vocab.id("web.fetch_cached") in ids
    assert vocab.decode(ids) == "<TOOL_ERROR> TimeoutError: late <TOOL_CALL> task: fetch it available: [ web.fetch , " \
                                "web.fetch_cached ]"
    for kind in KINDS:  # every example fits the sequence length of its model
        for e in examples(root / "built", kind):
            assert len(vocab.encode(e["input"])) + len(vocab.encode(e["output"])) + 1 <= \
                summary["kinds"][kind]["seq_len"]


def test_the_layouts_are_the_designs(built):
    root, _ = built
    memory, tool, reasoning = (examples(root / "built", k) for k in KINDS)
    follow = next(e for e in memory if e["followup"])
    assert follow["input"].startswith("<MEM_QUERY> ") and " context: " in follow["input"]
    assert follow["output"] == "<MEM_FACT> " + " <SEP> ".join(follow["facts"]) and len(follow["facts"]) <= 3
    retry = next(e for e in tool if e["after_error"])
    assert retry["input"].startswith(f"<TOOL_ERROR> {retry['previous_error']} <TOOL_CALL> task: ")
    assert retry["output"].split()[0] in ("<TOOL_RESULT>", "<TOOL_ERROR>") and retry["tool"] != retry["failed_tool"]
    plan = next(e for e in reasoning if e["mode"] == "plan")
    assert plan["input"].startswith("<REASON_TASK> ") and " state: start constraints: [" in plan["input"]
    assert plan["output"] == "<REASON_PLAN> " + " then ".join(plan["steps"])
    steps = [e for e in reasoning if e["mode"] == "step" and e["group"] == plan["group"]]
    assert [e["output"] for e in steps] == ["<REASON_STEP> " + s for s in plan["steps"]] + ["<REASON_STEP> done"]


def test_a_group_is_on_one_side_and_its_side_is_a_stable_hash_of_the_group(built, tmp_path):
    root, _ = built
    for kind in KINDS:
        sides = {}
        for e in examples(root / "built", kind):
            assert sides.setdefault(e["group"], e["split"]) == e["split"] == split_of(e["group"])
    conversations = {e["group"] for e in examples(root / "built", "memory") if e["group"].startswith("conversation:")}
    assert len(conversations) > 50
    # another, larger set puts the groups the two share on the same side
    write_sample(tmp_path / "raw", seed=5, size=260)
    build(tmp_path / "raw", tmp_path / "built")
    before = {e["group"]: e["split"] for e in examples(root / "built", "memory")}
    after = {e["group"]: e["split"] for e in examples(tmp_path / "built", "memory")}
    shared = before.keys() & after.keys()
    assert len(shared) > 100 and all(before[g] == after[g] for g in shared)


def test_a_build_is_deterministic(built, tmp_path):
    root, _ = built
    build(root / "raw", tmp_path / "again")
    for name in ["tokenizer.json", "dataset.json"] + [f"{k}.jsonl" for k in KINDS]:
        assert (tmp_path / "again" / name).read_bytes() == (root / "built" / name).read_bytes(), name


def test_bad_records_are_named_and_the_rest_is_built(tmp_path):
    write_sample(tmp_path / "raw", seed=6, size=120)
    d2 = json.loads((tmp_path / "raw" / "d2_memory.json").read_text())
    turn = next(t for c in d2["conversations"] for t in c["turns"] if t["fact_ids"])
    turn["fact_ids"] = ["f9999"]
    (tmp_path / "raw" / "d2_memory.json").write_text(json.dumps(d2))
    with open(tmp_path / "raw" / "training_data_fast.jsonl", "a") as f:
        f.write('{"instruction": "open the pod bay doors", "tool_call": {"name": "hal.open"}, '
                '"available_tools": ["web.search"]}\n{"instruction": "trunc')
    out = lab("dexter", "build", str(tmp_path / "raw"), str(tmp_path / "built"))
    assert out.returncode == 0, out.stderr
    problems = out.stderr.splitlines()
    assert len(problems) == 3 and all(p.startswith("lab: ") and p.endswith(".") for p in problems)
    assert any("names fact f9999, which no file holds" in p for p in problems)
    assert any("calls hal.open, which its available_tools do not list" in p for p in problems)
    assert any("is not valid JSON" in p and "truncated" in p for p in problems)
    assert "memory" in out.stdout and "held out" in out.stdout and "vocabulary" in out.stdout
    assert json.loads((tmp_path / "built" / "dataset.json").read_text())["kinds"]["tool"]["train"] > 50


def test_a_build_that_cannot_go_on_exits_2_with_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    out = lab("dexter", "build", str(tmp_path / "empty"), str(tmp_path / "built"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "holds none of" in out.stderr
    write_sample(tmp_path / "tiny", seed=0, size=2)
    out = lab("dexter", "build", str(tmp_path / "tiny"), str(tmp_path / "built"))
    assert out.returncode == 2 and "held-out examples" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    out = lab("dexter", "build", str(tmp_path / "tiny"), str(tmp_path / "mine"))
    assert out.returncode == 2 and "other than a Dexter dataset" in out.stderr


def test_a_damaged_tokenizer_file_is_one_sentence(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(VocabularyError) as err:
        Vocabulary.load(tmp_path / "tokenizer.json")
    assert str(err.value).startswith(str(tmp_path / "tokenizer.json")) and "\n" not in str(err.value)


def test_the_vocabulary_learns_from_every_records_text_or_only_the_examples(built, tmp_path):
    root, summary = built
    assert summary["vocab_from"] == "records"
    narrow = build(root / "raw", tmp_path / "narrow", vocab_from="examples")
    assert narrow["vocab_from"] == "examples" and narrow["vocab_size"] < summary["vocab_size"]
    for kind in KINDS:  # the same examples and splits: only the tokenisation differs
        assert [(e["input"], e["split"]) for e in examples(tmp_path / "narrow", kind)] == \
            [(e["input"], e["split"]) for e in examples(root / "built", kind)]
    out = lab("dexter", "build", str(root / "raw"), str(tmp_path / "bad"), "--vocab-from", "everything")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "records" in out.stderr
