"""The API's fast path (engine/model/fast.py) gives the answers the plain forward gives, carried latents and
early halting included, and stands aside for models it does not cover."""

from pathlib import Path

import pytest
import torch

from engine import config
from engine.build import build_model
from engine.dexter.api import MemoryTRM, ReasoningTRM, ToolTRM
from engine.dexter.dataset import build
from engine.dexter.sample import write_sample
from engine.dexter.task import Layout
from engine.model.bitlinear import convert_to_bitnet
from engine.model.fast import FastRecursion

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.H_cycles=2", "model.L_cycles=2",
         "model.halt_max_steps=3"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dexter-fast")
    write_sample(root / "raw", seed=3, size=60)
    build(root / "raw", root / "built")
    return root / "built"


def model_for(kind: str, built: Path, extra=()):
    cfg = config.load(ROOT / "configs" / f"dexter-{kind}.toml", [f"task.path={built}", *SMALL, *extra])
    layout = Layout(kind, built)
    torch.manual_seed(1)
    model = build_model(cfg, layout)
    with torch.no_grad():  # a halting head that is sometimes confident, so early halting is exercised both ways
        model.q_head.weight.normal_(0, 0.5)
        model.q_head.bias.zero_()
    return model, layout


def same(a: dict, b: dict) -> None:
    """Everything equal but the probabilities, which may differ in the last bits (a product summed in another
    order)."""
    for key in a:
        if key == "confidence":
            assert a[key] == pytest.approx(b[key], abs=1e-5)
        elif key == "scores":
            assert a[key].keys() == b[key].keys()
            assert all(a[key][t] == pytest.approx(b[key][t], abs=1e-3) for t in a[key])
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("extra", [(), ("model.puzzle_prefix=3", "model.window=5")])
def test_the_fast_recursion_computes_the_plain_forwards_latents_and_answers(built, extra):
    model, layout = model_for("memory", built, extra)
    fast = FastRecursion.of(model.eval())
    assert fast is not None
    inputs = torch.tensor([layout.query("<MEM_QUERY> what website projects do I have?", "<MEM_FACT>")[0]])
    latents = None
    for halt_early in (False, True, True):
        logits, _, (z_H, z_L, steps) = model.recur(inputs, latents, halt_early=halt_early)
        fz_H, fz_L, fsteps = fast.recur(inputs, latents, halt_early=halt_early)
        assert fsteps == steps
        assert torch.allclose(fz_H, z_H, atol=1e-5) and torch.allclose(fz_L, z_L, atol=1e-5)
        probs = fast.rows(fz_H, 4)
        assert probs.shape == logits[0, 4:].shape
        assert torch.allclose(probs, logits[0, 4:].softmax(-1), atol=1e-5)
        assert torch.equal(probs.argmax(-1), logits[0, 4:].argmax(-1))
        latents = (z_H, z_L)  # the next call continues from these, as a carried memory model does


def test_reading_rows_up_to_the_first_end_gives_the_same_rows(built):
    model, layout = model_for("tool", built)
    fast = FastRecursion.of(model.eval())
    z_H, _, _ = fast.recur(torch.tensor([layout.query("<TOOL_CALL> open notes.md", "<TOOL_RESULT>")[0]]))
    every = fast.rows(z_H, 5)
    best = every.argmax(-1).tolist()
    for stop in ({best[1]}, {best[7]}, {-1}):  # an end on the second row, on a later one, and none at all
        cut = fast.rows(z_H, 5, stop=tuple(stop), first=2)
        n = next((i + 1 for i, t in enumerate(best) if i > 0 and t in stop), len(best))
        assert cut.shape[0] == n and torch.allclose(cut, every[:n], atol=1e-6)


def test_the_api_answers_the_same_with_and_without_the_fast_path(built):
    model, layout = model_for("memory", built)
    fast, plain = (MemoryTRM(model, layout, use_carry=True, carry_latents=True, fast=f) for f in (True, False))
    assert fast.fast is not None and plain.fast is None
    for query in ("what website projects do I have?", "tell me more", "who works on the first one?"):
        same(fast.retrieve(query), plain.retrieve(query))  # the carried latents go from call to call in both
        assert fast.last_steps == plain.last_steps

    model, layout = model_for("tool", built)
    fast, plain = (ToolTRM(model, layout, fast=f) for f in (True, False))
    tools = fast.vocab.tools[:5]
    for task, error in (("open notes.md", None), ("open notes.md", "FileNotFoundError: no notes.md"),
                        ("search the web for rope scaling", None)):
        same(fast.select_tool(task, tools, error), plain.select_tool(task, tools, error))

    model, layout = model_for("reasoning", built)
    fast, plain = (ReasoningTRM(model, layout, fast=f) for f in (True, False))
    same(fast.plan("build a website for Harbor"), plain.plan("build a website for Harbor"))
    for done in ([], ["draft the page layout"]):
        same(fast.next_step("build a website for Harbor", done), plain.next_step("build a website for Harbor", done))


def test_models_the_fast_path_does_not_cover_keep_the_plain_forward(built):
    for extra in (["model.mixer=mlp"], ["model.memory=titans-mag"]):
        model, _ = model_for("memory", built, extra)
        assert FastRecursion.of(model) is None
    model, layout = model_for("tool", built)
    assert FastRecursion.of(convert_to_bitnet(model)) is None
    assert ToolTRM(model, layout).fast is None  # BitLinear quantises its inputs: computed by the model itself
