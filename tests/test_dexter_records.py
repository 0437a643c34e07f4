"""Dexter's raw records: the synthetic set is deterministic per seed and realistic, and the readers take
damaged files and records one sentence at a time while reading everything else."""

import json
import sqlite3
from pathlib import Path

import pytest

from engine.dexter.records import read_raw
from engine.dexter.sample import SampleDirError, write_sample
from tests.helpers import lab


def dump(raw: Path) -> dict:
    """Every file of a raw set as comparable data (the database as its rows)."""
    out = {p.name: p.read_bytes() for p in sorted(raw.iterdir()) if p.name != "brain.db"}
    db = sqlite3.connect(raw / "brain.db")
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        out[table] = db.execute(f"SELECT * FROM {table}").fetchall()
    db.close()
    return out


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raw")
    write_sample(d, seed=7, size=120)
    return d


def test_a_sample_is_deterministic_per_seed(tmp_path, raw):
    write_sample(tmp_path / "again", seed=7, size=120)
    write_sample(tmp_path / "other", seed=8, size=120)
    assert dump(tmp_path / "again") == dump(raw)
    assert dump(tmp_path / "other") != dump(raw)


def test_a_sample_reads_back_whole_and_holds_what_the_models_learn_from(raw):
    records = read_raw(raw)
    assert records.problems == []
    assert records.files[:3] == ["d2_memory.json", "brain.db", "training_data_fast.jsonl"]
    counts = records.counts()
    assert counts["conversations"] == 120 and counts["ui_calls"] == 120
    assert all(counts[k] > 0 for k in counts)
    # multi-turn conversations whose later user turns refer back ("tell me more", "who works on it?")
    multi = [c for c in records.conversations if sum(t.role == "user" for t in c.turns) >= 2]
    assert len(multi) > 30
    assert any(t.text.startswith("tell me more") for c in multi for t in c.turns)
    # every fact a turn or a history entry names exists, in d2_memory.json or brain.db
    named = {f for c in records.conversations for t in c.turns for f in t.fact_ids}
    named |= {f for h in records.history for f in h.fact_ids}
    assert named <= set(records.facts)
    # failures retried with another tool, and goals with plans
    failed = {a.id: a for a in records.artifacts if not a.ok}
    retries = [a for a in records.artifacts if a.retry_of]
    assert failed and retries and all(a.retry_of in failed and a.tool != failed[a.retry_of].tool for a in retries)
    assert all(a.tool in a.available for a in records.artifacts)
    assert all(len(p.steps) >= 2 for p in records.patterns) and any(s.plan for s in records.summaries)


def test_sampling_refuses_to_overwrite_raw_records_without_force(tmp_path):
    write_sample(tmp_path, seed=0, size=10)
    with pytest.raises(SampleDirError, match="--force"):
        write_sample(tmp_path, seed=0, size=10)
    write_sample(tmp_path, seed=1, size=3, force=True)
    assert len(read_raw(tmp_path).conversations) == 3


def one_sentence(problem: str) -> bool:
    return "\n" not in problem and problem.endswith(".") and "Traceback" not in problem


def test_damaged_files_cost_only_themselves(tmp_path):
    write_sample(tmp_path, seed=1, size=40)
    whole = read_raw(tmp_path).counts()
    (tmp_path / "brain.db").write_bytes(b"this is not a database" * 200)
    (tmp_path / "d2_memory.json").write_text("[1, 2, 3]")
    lines = (tmp_path / "training_data_fast.jsonl").read_text().splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]  # a truncated line
    (tmp_path / "training_data_fast.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "art_00003.json").write_text('{"id": "art_00003", "status": "maybe", "task": "x", "tool": "y"}')
    (tmp_path / "art_00004.json").write_text("{not json")
    (tmp_path / "art_00005.json").write_text('"a string"')

    records = read_raw(tmp_path)
    assert len(records.problems) == 6 and all(one_sentence(p) for p in records.problems), records.problems
    by_file = {p.split(":")[0].rsplit("/", 1)[-1]: p for p in records.problems}
    assert "not a readable SQLite database" in by_file["brain.db"]
    assert "not an object with conversations" in by_file["d2_memory.json"]
    assert "line 5 is not valid JSON" in by_file["training_data_fast.jsonl"]
    assert "status 'maybe'" in by_file["art_00003.json"] and "art_00003" in by_file["art_00003.json"]
    assert "not valid JSON at line 1" in by_file["art_00004.json"]
    assert "not an artifact object" in by_file["art_00005.json"]
    # everything else is read
    assert len(records.ui_calls) == whole["ui_calls"] - 1
    assert len(records.artifacts) == whole["artifacts"] - 3
    assert records.conversations == [] and records.patterns == []


def test_bad_records_inside_good_files_cost_only_themselves(tmp_path):
    write_sample(tmp_path, seed=2, size=30)
    whole = read_raw(tmp_path)
    d2 = json.loads((tmp_path / "d2_memory.json").read_text())
    d2["conversations"][2]["turns"][0]["role"] = "narrator"
    del d2["facts"][1]["text"]
    d2["topics"] = {"not": "a list"}
    d2["summaries"][0]["plan"] = "step one, step two"
    (tmp_path / "d2_memory.json").write_text(json.dumps(d2))
    db = sqlite3.connect(tmp_path / "brain.db")
    db.execute("UPDATE patterns SET steps = 'not json' WHERE id = 1")
    db.execute("DROP TABLE triples")
    db.commit()
    db.close()

    records = read_raw(tmp_path)
    assert all(one_sentence(p) for p in records.problems)
    text = "\n".join(records.problems)
    assert "conversations record 2 (id 'c00002') has turn 0 with role 'narrator'" in text
    assert "facts record 1 (id 'f0001') has no text" in text
    assert "topics is dict, not a list of records" in text
    assert "summaries record 0" in text and "plan that is not a JSON list" in text
    assert "table patterns record 1" in text and "steps that is not a JSON list" in text
    assert "there is no table triples" in text
    assert len(records.problems) == 6
    assert len(records.conversations) == len(whole.conversations) - 1
    assert len(records.patterns) == len(whole.patterns) - 1
    assert len(records.facts) == len(whole.facts) - 1 and records.history == whole.history


def test_lab_dexter_sample_writes_a_set_and_refuses_bad_input_with_exit_2(tmp_path):
    out = lab("dexter", "sample", str(tmp_path / "raw"), "--seed", "3", "--size", "20", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["conversations"] == 20
    again = lab("dexter", "sample", str(tmp_path / "raw"), "--size", "20")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    bad = lab("dexter", "sample", str(tmp_path / "other"), "--size", "0")
    assert bad.returncode == 2 and "out of range" in bad.stderr and "Traceback" not in bad.stderr


def test_successful_calls_carry_their_output_and_any_json_output_is_read_as_text(tmp_path):
    write_sample(tmp_path, seed=3, size=40)
    records = read_raw(tmp_path)
    ok = [a for a in records.artifacts if a.ok]
    assert ok and all(a.result for a in ok) and not any(a.result for a in records.artifacts if not a.ok)
    assert all("passed" in a.result for a in ok if a.tool == "code.run_tests")
    assert all(a.result.count("/") >= 20 for a in ok if a.tool == "file_system.list")  # one path a line
    first = sorted(tmp_path.glob("art_*.json"))[0]
    rec = json.loads(first.read_text())
    rec.update(status="success", error=None, result={"rows": [1, 2], "note": "x " * 9000})
    first.write_text(json.dumps(rec))
    again = read_raw(tmp_path)
    assert again.problems == []
    read = next(a for a in again.artifacts if a.id == rec["id"])
    assert read.result.startswith('{"rows": [1, 2], "note": "x x') and len(read.result) == 8000  # cut, not refused
