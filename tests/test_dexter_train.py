"""`lab dexter train` and `lab dexter brain`: ordinary runs that keep their best checkpoint, a short run that
learns tool choice on the synthetic set, and the Python API on what they keep."""

import json
from pathlib import Path

import pytest
import torch

from engine import config
from engine.build import build_model
from engine.dexter.api import DexterAPIError, MemoryTRM, ReasoningTRM, ToolTRM
from engine.dexter.dataset import build
from engine.dexter.sample import write_sample
from engine.dexter.task import Layout
from engine.dexter.vocab import BLANK, EOS
from engine.store import RunReader
from tests.helpers import lab

ROOT = Path(__file__).resolve().parents[1]
# small enough for two shared cores: about 90 s for 300 steps of the tool model
SMALL = ["model.d_model=64", "model.n_layers=2", "model.H_cycles=2", "model.L_cycles=2", "model.halt_max_steps=2",
         "train.batch_size=32", "train.threads=1", "eval.every=100", "checkpoint.every=100", "optim.lr=1e-3",
         "optim.warmup_steps=20", "train.ema_decay=0.98"]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dexter")
    write_sample(root / "raw", seed=0, size=300)
    build(root / "raw", root / "built")
    out = lab("dexter", "train", str(root / "built"), "--only", "tool", "--steps", "300", "--runs-dir",
              str(root / "runs"), *sets(SMALL), "--json", timeout=900)
    assert out.returncode == 0, out.stderr
    return root, json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow  # trains the three models (about 2 minutes on 2 cores): run by CI's slow set
def test_each_model_trains_as_an_ordinary_run_and_its_best_checkpoint_is_kept(trained):
    root, results = trained
    result = results["tool"]
    assert result["exit"] == 0
    listed = json.loads(lab("runs", "--json", "--runs-dir", str(root / "runs")).stdout)
    assert [(r["id"], r["status"], r["step"]) for r in listed] == [(result["run"], "finished", 300)]
    reader = RunReader(root / "runs" / result["run"])
    scores = {step: v for _, step, v in reader.metric("eval_exact")}
    reader.close()
    assert sorted(scores) == [100, 200, 300]
    best_step = max(scores, key=lambda s: (scores[s], -s))  # the first of equal bests
    kept = root / "built" / "models" / "tool"
    assert json.loads((kept / "best.json").read_text()) == {"run": result["run"], "step": best_step,
                                                            "eval_exact": scores[best_step]}
    assert {p.name for p in kept.iterdir()} == {"best.json", "config.toml", "dataset.json", "model.safetensors",
                                                "tokenizer.json"}
    # lab eval grades the run's last checkpoint as its training curve did (one difficulty, every held-out example)
    n = json.loads((root / "built" / "dataset.json").read_text())["kinds"]["tool"]["test"]
    graded = lab("eval", result["run"], "--task", "dexter-tool", "--n", str(n), "--json", "--runs-dir",
                 str(root / "runs"))
    assert graded.returncode == 0, graded.stderr
    assert json.loads(graded.stdout)["by_difficulty"] == {"1": pytest.approx(scores[300])}


@pytest.mark.slow  # trains the three models (about 2 minutes on 2 cores): run by CI's slow set
def test_a_short_run_learns_to_pick_the_tool(trained):
    """Held-out tool top-1 well above choosing at random among the available tools (about 1 in 5)."""
    root, results = trained
    assert results["tool"]["eval_exact"] > 0.5
    tool = ToolTRM.from_checkpoint(root / "built" / "models" / "tool", use_carry=False)
    rows = [json.loads(line) for line in (root / "built" / "tool.jsonl").read_text().splitlines()]
    held_out = [r for r in rows if r["split"] == "test" and r["output"].startswith("<TOOL_RESULT>")]
    picks = [tool.select_tool(r["task"], r["available"], r["previous_error"] or None, r["context"]) for r in held_out]
    assert all(p["selected_tool"] in r["available"] and 0 <= p["confidence"] <= 1 for p, r in zip(picks, held_out))
    chance = sum(1 / len(r["available"]) for r in held_out) / len(held_out)
    top1 = sum(p["selected_tool"] == r["tool"] for p, r in zip(picks, held_out)) / len(held_out)
    assert top1 > max(0.5, 2 * chance), (top1, chance)
    # a run folder loads too (its newest checkpoint), and the answer is the kept one's where they are the same step
    assert ToolTRM.from_checkpoint(root / "runs" / results["tool"]["run"]).select_tool(
        held_out[0]["task"], held_out[0]["available"])["selected_tool"] in held_out[0]["available"]


@pytest.mark.slow  # trains the three models (about 2 minutes on 2 cores): run by CI's slow set
def test_the_tool_api_refuses_bad_calls_in_one_sentence(trained):
    root, _ = trained
    kept = root / "built" / "models" / "tool"
    tool = ToolTRM.from_checkpoint(kept / "model.safetensors")
    result = tool.select_tool("check system status", ["system_ops.get_info", "teleport.now"])
    assert result["selected_tool"] == "system_ops.get_info" and "teleport.now" in result["warnings"][0]
    for call in (lambda: tool.select_tool("x", []), lambda: tool.select_tool("x", ["teleport.now"]),
                 lambda: tool.select_tool("", ["web.search"]), lambda: tool.select_tool("a " * 500, ["web.search"]),
                 lambda: MemoryTRM.from_checkpoint(kept), lambda: ToolTRM.from_checkpoint(root / "nowhere")):
        with pytest.raises(DexterAPIError) as err:
            call()
        assert "\n" not in str(err.value) and str(err.value).endswith(".")
    (root / "damaged").mkdir()
    for name in ("config.toml", "tokenizer.json", "dataset.json"):
        (root / "damaged" / name).write_bytes((kept / name).read_bytes())
    (root / "damaged" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DexterAPIError, match="could not be read"):
        ToolTRM.from_checkpoint(root / "damaged")


# ---- the carry, on untrained models: what persists between calls, and that it equals saying it outright ----


def untrained(cls, built: Path, use_carry: bool):
    cfg = config.load(ROOT / "configs" / f"dexter-{cls.kind}.toml",
                      [f"task.path={built}", "model.d_model=32", "model.n_layers=1", "model.H_cycles=1",
                       "model.L_cycles=1", "model.halt_max_steps=1"])
    layout = Layout(cls.kind, built)
    torch.manual_seed(0)
    return cls(build_model(cfg, layout), layout, use_carry=use_carry)


def one_token_answers(api) -> None:
    """Make an untrained model end every answer after one token, so the steps it feeds back stay short."""
    api.fast = None  # the plain forward, whose logits this patches
    recur = api.model.recur

    def short(x, *args, **kw):
        logits, q, latents = recur(x, *args, **kw)
        start = (x[0] == BLANK).nonzero()[0, 0]  # the first blank follows the answer's kind
        logits[:, start + 1, EOS] = 1e4
        return logits, q, latents

    api.model.recur = short


@pytest.mark.slow  # trains the three models (about 2 minutes on 2 cores): run by CI's slow set
def test_memory_carries_the_conversation_into_follow_ups(trained):
    built = trained[0] / "built"
    stateful, stateless = untrained(MemoryTRM, built, True), untrained(MemoryTRM, built, False)
    first = stateful.retrieve("what website projects do I have?")
    assert first["context"] == "" and len(first["memories"]) <= 3 and 0 <= first["confidence"] <= 1
    follow = stateful.retrieve("tell me more")
    assert follow["context"] == "what website projects do I have?"
    assert follow == stateless.retrieve("tell me more", context="what website projects do I have?")
    assert stateful.retrieve("who works on the first one?")["context"] == \
        "what website projects do I have? | tell me more"  # the last two turns, as the dataset lays them out
    assert stateless.retrieve("tell me more")["context"] == ""
    stateful.reset_carry()
    assert stateful.retrieve("tell me more") == stateless.retrieve("tell me more")


@pytest.mark.slow  # trains the three models (about 2 minutes on 2 cores): run by CI's slow set
def test_tool_and_reasoning_carry_errors_and_progress(trained):
    built = trained[0] / "built"
    tool = untrained(ToolTRM, built, True)
    tools = ["file_system.read", "file_system.search"]
    error = "FileNotFoundError: notes.md does not exist"
    with_error = tool.select_tool("open notes.md", tools, previous_error=error)
    assert tool.select_tool("open notes.md", tools) == with_error  # the session remembers what failed
    assert tool.select_tool("open todo.txt", tools)["previous_error"] == ""
    tool.reset_carry()
    assert tool.select_tool("open notes.md", tools)["previous_error"] == ""

    carried, told = untrained(ReasoningTRM, built, True), untrained(ReasoningTRM, built, False)
    for model in (carried, told):
        one_token_answers(model)
    goal, done = "build a website for Harbor", []
    for _ in range(3):
        step = carried.next_step(goal)
        assert step == told.next_step(goal, done)
        done.append(step["next_step"])
    plan = carried.plan(goal)
    assert plan["complexity"] in ("simple", "moderate", "complex") and isinstance(plan["plan_steps"], list)
    carried.reset_carry()
    assert carried.next_step(goal) == told.next_step(goal, [])


@pytest.mark.slow  # trains the three models (about 2 minutes on 2 cores): run by CI's slow set
def test_lab_dexter_brain_samples_builds_and_trains_in_one_go(tmp_path):
    raw = tmp_path / "raw"
    out = lab("dexter", "brain", str(raw), "--size", "150", "--only", "reasoning", "--steps", "4", "--runs-dir",
              str(tmp_path / "runs"), *sets(SMALL + ["eval.every=2", "checkpoint.every=2", "eval.n_puzzles=16"]),
              timeout=600)
    assert out.returncode == 0, out.stderr
    assert "wrote a synthetic raw set" in out.stdout and "built " in out.stdout and "best held-out" in out.stdout
    assert (raw / "brain.db").is_file() and (tmp_path / "raw-built" / "models" / "reasoning" / "best.json").is_file()
    again = lab("dexter", "brain", str(raw), "--only", "reasoning", "--steps", "2", "--runs-dir",
                str(tmp_path / "runs"), *sets(SMALL + ["eval.every=2", "checkpoint.every=2", "eval.n_puzzles=16"]),
                timeout=600)
    assert again.returncode == 0 and "reading the raw records" in again.stdout  # its records are read, not replaced
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_lab_dexter_train_refuses_bad_input_with_exit_2(tmp_path):
    out = lab("dexter", "train", str(tmp_path), "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2 and "holds no built Dexter dataset" in out.stderr and out.stderr.count("\n") == 1
    out = lab("dexter", "train", str(tmp_path), "--only", "memory,vision")
    assert out.returncode == 2 and "--only" in out.stderr


def test_runs_at_once_each_keep_their_best_checkpoint(tmp_path):
    write_sample(tmp_path / "raw", seed=1, size=60)
    build(tmp_path / "raw", tmp_path / "built")
    tiny = ["model.d_model=16", "model.n_layers=1", "model.H_cycles=1", "model.L_cycles=1", "model.halt_max_steps=1",
            "train.batch_size=4", "train.threads=1", "eval.every=2", "checkpoint.every=2", "eval.n_puzzles=4"]
    out = lab("dexter", "train", str(tmp_path / "built"), "--only", "reasoning,memory", "--steps", "30", "--jobs",
              "2", "--runs-dir", str(tmp_path / "runs"), *sets(tiny), "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.splitlines()[-1])
    assert list(results) == ["reasoning", "memory"]  # the order asked for, whichever ended first
    for kind, result in results.items():
        assert result["exit"] == 0 and result["step"] % 2 == 0
        assert json.loads((tmp_path / "built" / "models" / kind / "best.json").read_text())["run"] == result["run"]
    spans = []
    for result in results.values():
        reader = RunReader(tmp_path / "runs" / result["run"])
        times = [t for (t,) in reader.conn.execute("SELECT time FROM metrics WHERE key = 'loss'")]
        reader.close()
        spans.append((min(times), max(times)))
    (a0, a1), (b0, b1) = spans
    assert a0 <= b1 and b0 <= a1, spans  # they trained at the same time
    refused = lab("dexter", "train", str(tmp_path / "built"), "--jobs", "0", "--runs-dir", str(tmp_path / "runs"))
    assert refused.returncode == 2 and "--jobs 0 is out of range" in refused.stderr
    assert refused.stderr.count("\n") == 1
