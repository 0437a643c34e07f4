import json
import os
import pickle

import pytest
import torch

from engine import checkpoint
from engine.checkpoint import CheckpointError


def _save(root, step, keep=3):
    tensors = {"w": torch.full((4, 4), float(step)), "b": torch.arange(3.0)}
    state = {"step": step, "opt": {"m": torch.ones(2) * step}, "rng": torch.get_rng_state()}
    return checkpoint.save(root, step, tensors, state, meta={"segment": 0}, keep=keep)


def test_roundtrip_and_rotation(tmp_path):
    for s in (10, 20, 30, 40):
        _save(tmp_path, s)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["step-00000020", "step-00000030", "step-00000040"]
    ck, warnings = checkpoint.load_latest(tmp_path)
    assert warnings == [] and ck.step == 40
    assert torch.equal(ck.tensors["w"], torch.full((4, 4), 40.0))
    assert torch.equal(ck.state["opt"]["m"], torch.ones(2) * 40)
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_damaged_newest_falls_back_with_a_warning(tmp_path, damage):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    target = newest / checkpoint.WEIGHTS
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        (newest / checkpoint.META).write_text("{not json")
    ck, warnings = checkpoint.load_latest(tmp_path)
    assert ck.step == 1
    assert len(warnings) == 1 and "step-00000002" in warnings[0]


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = _save(tmp_path, 5)
    payload = pickle.dumps({"x": Evil()})
    import hashlib

    (good / checkpoint.STATE).write_bytes(payload)
    meta = json.loads((good / checkpoint.META).read_text())
    meta["sha256"][checkpoint.STATE] = hashlib.sha256(payload).hexdigest()  # checksum matches: only the loader guards
    (good / checkpoint.META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(good)
    assert not marker.exists()


def test_failed_save_leaves_previous_intact(tmp_path, monkeypatch):
    _save(tmp_path, 1)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write", full)
    with pytest.raises(OSError):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000001"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert checkpoint.load_latest(tmp_path)[0].step == 1


def test_a_checkpoint_that_does_not_fit_the_model_is_skipped_for_the_previous_good_one(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    state = {"step": 0}
    checkpoint.save(tmp_path, 1, good, state, keep=5)
    checkpoint.save(tmp_path, 2, dict(good, **{"1.weight": torch.zeros(5, 3)}), state, keep=5)  # wrong shape
    checkpoint.save(tmp_path, 3, {k: v for k, v in good.items() if k != "0.bias"}, state, keep=5)  # a key missing
    checkpoint.save(tmp_path, 4, dict(good, extra=torch.zeros(1)), state, keep=5)  # a key the model lacks
    assert checkpoint.load_latest(tmp_path)[0].step == 4  # checksums alone pass all of them

    ck, warnings = checkpoint.load_latest(tmp_path, check=lambda c: checkpoint.check_tensors(c, model.state_dict()))
    assert ck.step == 1
    assert [w.split(":")[0] for w in warnings] == ["checkpoint step-00000004", "checkpoint step-00000003",
                                                    "checkpoint step-00000002"]
    assert "the model does not have (1, first: extra)" in warnings[0]
    assert "missing (1, first: 0.bias)" in warnings[1]
    assert "1.weight is (5, 3), the model's is (2, 3)" in warnings[2]
    model.load_state_dict(ck.tensors)  # what the check let through loads


def test_a_check_that_raises_anything_skips_with_a_sentence_and_none_left_is_none(tmp_path):
    _save(tmp_path, 1)

    def needs_carry(ck):
        return ck.state["carry"]  # KeyError: the state lacks what this run restores

    ck, warnings = checkpoint.load_latest(tmp_path, check=needs_carry)
    assert ck is None
    assert warnings == ["checkpoint step-00000001: its contents do not fit this run (KeyError: 'carry')."]
