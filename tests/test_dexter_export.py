"""`lab dexter export` and the API's ternary form: the export loads back with the ternary model's answers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import config
from engine.build import build_model
from engine.dexter.api import TERNARY, DexterAPIError, MemoryTRM, ToolTRM, open_model
from engine.dexter.dataset import build
from engine.dexter.sample import write_sample
from engine.dexter.task import Layout
from engine.model.bitlinear import TernaryLinear
from lab import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.n_layers=1", "model.H_cycles=1", "model.L_cycles=1", "model.halt_max_steps=2"]


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> Path:
    """A folder as `lab dexter train` keeps it, holding an untrained memory model."""
    root = tmp_path_factory.mktemp("dexter")
    write_sample(root / "raw", seed=2, size=120)
    build(root / "raw", root / "built")
    cfg = config.load(ROOT / "configs" / "dexter-memory.toml", [f"task.path={root / 'built'}", *TINY])
    torch.manual_seed(0)
    model = build_model(cfg, Layout("memory", root / "built"))
    folder = root / "models" / "memory"
    folder.mkdir(parents=True)
    save_file({f"ema.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.toml").write_text(config.to_toml(cfg))
    for name in ("tokenizer.json", "dataset.json"):
        (folder / name).write_bytes((root / "built" / name).read_bytes())
    return folder


def lab(capsys, *args):
    """`lab ARGS` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_ternary_export_loads_back_with_the_ternary_models_answers(kept, capsys):
    code, out, err = lab(capsys, "dexter", "export", str(kept), "--json")
    assert code == 0, err
    sizes = json.loads(out.splitlines()[-1])
    assert Path(sizes["file"]) == kept / TERNARY and sizes["file_bytes"] < sizes["float32_bytes"]
    assert sizes["ternary_packed_bytes"] * 16 == sizes["ternary_float32_bytes"]  # 2 bits against 32
    ternary = MemoryTRM.from_checkpoint(kept).ternary()
    loaded = MemoryTRM.from_checkpoint(kept, ternary=True)
    assert any(isinstance(m, TernaryLinear) for m in loaded.model.modules())
    for query in ("what website projects do I have?", "tell me more", "who is Maya?"):
        assert loaded.retrieve(query) == ternary.retrieve(query)
    assert open_model(kept, ternary=True).kind == "memory"


def test_export_mistakes_are_one_sentence_and_exit_2(kept, tmp_path, capsys):
    assert lab(capsys, "dexter", "export", str(kept), "--force")[0] == 0  # a file there, whatever ran before
    code, _, err = lab(capsys, "dexter", "export", str(kept))
    assert code == 2 and "--force" in err and err.count("\n") == 1
    code, _, err = lab(capsys, "dexter", "export", str(tmp_path / "nowhere"))
    assert code == 2 and "config.toml" in err
    with pytest.raises(DexterAPIError, match="not the Dexter tool model"):
        ToolTRM.from_checkpoint(kept, ternary=True)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.toml", "tokenizer.json", "dataset.json", "model.safetensors"):
        (damaged / name).write_bytes((kept / name).read_bytes())
    with pytest.raises(DexterAPIError, match="lab dexter export"):
        MemoryTRM.from_checkpoint(damaged, ternary=True)
    (damaged / TERNARY).write_bytes(b"\x00" * 64)
    with pytest.raises(DexterAPIError, match="could not be loaded") as err:
        MemoryTRM.from_checkpoint(damaged, ternary=True)
    assert "\n" not in str(err.value)
