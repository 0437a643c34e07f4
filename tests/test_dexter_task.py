"""The built Dexter datasets as engine tasks: presets, config checks, pure samples, the layout and the grading."""

import json
from pathlib import Path

import pytest

from engine import config
from engine.config import ConfigError
from engine.dexter.dataset import KINDS, build
from engine.dexter.sample import write_sample
from engine.dexter.vocab import BLANK, EOS, PAD
from engine.tasks.registry import get_task, task_from_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dexter")
    write_sample(root / "raw", seed=3, size=150)
    build(root / "raw", root / "built")
    return root / "built"


@pytest.mark.parametrize("kind,width,layers,H,L", [("memory", 256, 2, 3, 4), ("tool", 192, 2, 2, 3),
                                                   ("reasoning", 256, 3, 4, 4)])
def test_the_presets_are_the_designs_sizes_on_the_built_vocabulary(built, kind, width, layers, H, L):
    cfg = config.load(ROOT / "configs" / f"dexter-{kind}.toml", [f"task.path={built}"])
    m = cfg.model
    assert (m.d_model, m.n_layers, m.H_cycles, m.L_cycles) == (width, layers, H, L)
    assert cfg.eval.every == cfg.checkpoint.every  # every evaluated step has a checkpoint to keep
    task = task_from_config(cfg.task)
    summary = json.loads((built / "dataset.json").read_text())
    assert task.vocab_size == summary["vocab_size"] and task.seq_len == summary["kinds"][kind]["seq_len"]
    assert f"path = \"{built}\"" in config.to_toml(cfg)


def test_a_dexter_task_without_a_dataset_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="needs task.path"):
        config.from_dict({"task": {"name": "dexter-tool"}})
    with pytest.raises(ConfigError) as err:
        get_task("dexter-tool", path=str(tmp_path))
    assert "holds no built Dexter dataset" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not take task.path"):
        config.from_dict({"task": {"name": "sudoku", "path": "x"}})


def test_damaged_dataset_files_are_one_sentence(built, tmp_path):
    import shutil

    bad = tmp_path / "built"
    shutil.copytree(built, bad)
    lines = (bad / "tool.jsonl").read_text().splitlines()
    (bad / "tool.jsonl").write_text("\n".join(lines[:5] + ['{"input": 3}'] + lines[5:]) + "\n")
    with pytest.raises(ConfigError, match="tool.jsonl line 6 is not an example"):
        get_task("dexter-tool", path=str(bad))
    (bad / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a tokenizer file"):
        get_task("dexter-memory", path=str(bad))


@pytest.mark.parametrize("kind", KINDS)
def test_samples_are_pure_functions_of_split_and_index_and_each_pass_sees_every_example(built, kind):
    a, b = get_task(f"dexter-{kind}", path=str(built)), get_task(f"dexter-{kind}", path=str(built))
    n = a.size("train")
    assert [a.sample("train", i) for i in (n + 3, 5, n + 3)] == [b.sample("train", n + 3), b.sample("train", 5),
                                                                 b.sample("train", n + 3)]
    first_pass = {a.problem("train", i)["input"] + a.problem("train", i)["output"] for i in range(n)}
    assert len(first_pass) == len({e["input"] + e["output"] for e in a.examples["train"]})
    assert [a.problem("train", i) for i in range(20)] != [a.problem("train", n + i) for i in range(20)]  # reshuffled
    assert get_task(f"dexter-{kind}", path=str(built), seed=1).problem("train", 0) is not None
    s = a.sample("test", 0)
    assert len(s.inputs) == len(s.labels) == a.seq_len
    start = next(i for i, t in enumerate(s.labels) if t != PAD)
    end = s.labels.index(EOS)
    assert s.inputs[start] == s.labels[start]  # the answer's kind is given
    assert set(s.inputs[start + 1:]) == {BLANK} and set(s.labels[end + 1:]) <= {PAD}


def test_memory_is_graded_on_the_set_of_facts_and_tool_on_the_tool(built):
    memory = get_task("dexter-memory", path=str(built))
    i = next(i for i in range(memory.size("test")) if len(memory.problem("test", i)["facts"]) == 2)
    p, s = memory.problem("test", i), memory.sample("test", i)
    assert memory.grade(p, s.labels, s)
    vocab, start = memory.vocab, next(j for j, t in enumerate(s.labels) if t != PAD)
    swapped = vocab.encode("<MEM_FACT> " + " <SEP> ".join(reversed(p["facts"]))) + [EOS]
    predicted = list(s.labels)
    predicted[start:start + len(swapped)] = swapped
    assert memory.grade(p, predicted, s)  # the same facts in another order
    one = vocab.encode("<MEM_FACT> " + p["facts"][0]) + [EOS]
    predicted = list(s.labels)
    predicted[start:start + len(one)] = one
    assert not memory.grade(p, predicted, s)

    tool = get_task("dexter-tool", path=str(built))
    p, s = tool.problem("test", 0), tool.sample("test", 0)
    start = next(j for j, t in enumerate(s.labels) if t != PAD)
    predicted = list(s.labels)
    predicted[start + 2] = BLANK  # a wrong EOS does not matter; a wrong tool does
    assert tool.grade(p, predicted, s)
    predicted[start + 1] = next(i for i in tool.vocab.tool_ids.values() if i != s.labels[start + 1])
    assert not tool.grade(p, predicted, s)


def test_lab_tasks_list_names_the_dexter_tasks(built):
    from tests.helpers import lab

    out = lab("tasks", "list")
    assert out.returncode == 0 and "dexter-reasoning" in out.stdout and "task.path" in out.stdout
