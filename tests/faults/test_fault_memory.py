"""Case 5: out of memory at a step, and VRAM pressure before it (an injected reading: no GPU here).
The micro-batch halves, gradient accumulation keeps the effective batch, the run goes on and
resumes with the same split."""

import pytest
import torch

from tests.faults.scenarios import alerts, chunked_gradient_error, in_process_trainer, live_steps, resumed_trainer, same_weights
from engine import checkpoint
from engine.config import ConfigError
from engine.faults import parse_faults
from engine.accumulate import GROW_AFTER_STEPS, merge_chunk_metrics, slot_chunks


def test_slot_chunks_cover_every_slot_once():
    for batch, m in [(16, 1), (16, 4), (10, 4), (3, 4), (64, 64)]:
        chunks = slot_chunks(batch, m)
        slots = [i for sl in chunks for i in range(sl.start, sl.stop)]
        assert slots == list(range(batch))
        assert len(chunks) == min(batch, m)
        assert max(sl.stop - sl.start for sl in chunks) - min(sl.stop - sl.start for sl in chunks) <= 1


@pytest.mark.parametrize("micro_batches", [3, pytest.param(16, marks=pytest.mark.slow)])  # uneven; one slot each
def test_accumulated_gradient_equals_the_full_batch_gradient(tmp_path, micro_batches):
    assert chunked_gradient_error(tmp_path, micro_batches) < 1e-5


@pytest.mark.slow
def test_accumulated_gradient_with_memory_and_ragged_answers(tmp_path):
    # Titans memory state is sliced per slot; arithmetic answers have different numbers of scored cells
    err = chunked_gradient_error(tmp_path, 4, ["model.memory=titans-mag", "task.name=arithmetic"])
    assert err < 1e-5


def test_merged_figures_are_the_full_batch_figures(tmp_path):
    # the same carry and data as one batch and as 4 chunks scored against the whole batch: the same figures
    figures = []
    for m in (1, 4):
        tr = in_process_trainer(tmp_path, f"merge-{m}", max_steps=10, ckpt_every=0)
        for step in range(1, 4):
            tr.wake.step(step)
        tr.micro.chunks = m
        inputs, labels = tr.wake.next_data()
        figures.append(tr.wake.forward_backward(inputs, labels, 4, tr.wake.scored_cells(labels))[2])
        tr.recorder.close()
    whole, merged = figures
    assert whole.keys() == merged.keys()
    for key, value in whole.items():
        assert merged[key] == pytest.approx(value, rel=1e-5, nan_ok=True), key


def test_merge_rebuilds_the_ratios_over_halted_slots():
    parts = [{"loss": 0.25, "n_halted": 2.0, "n_halted_exact": 1.0, "halted_exact_acc": 0.5, "halted_steps": 3.0},
             {"loss": 0.75, "n_halted": 0.0, "n_halted_exact": 0.0, "halted_exact_acc": float("nan"),
              "halted_steps": float("nan")}]
    m = merge_chunk_metrics(parts)
    assert m == {"loss": 1.0, "n_halted": 2.0, "n_halted_exact": 1.0, "halted_exact_acc": 0.5, "halted_steps": 3.0}


def test_injected_oom_halves_the_micro_batch_and_the_run_goes_on(tmp_path):
    tr = in_process_trainer(tmp_path, "oom", max_steps=20, ckpt_every=10, faults="oom@5")
    assert tr.run() == 0
    assert tr.step == 20 and tr.micro.chunks == 2
    assert live_steps(tr.run_dir) == list(range(1, 21))  # step 5 ran once, after the back-off
    backoff = [a for a in alerts(tr.run_dir) if a.get("fault") == "oom_backoff"]
    assert len(backoff) == 1
    assert (backoff[0]["old_micro_batch"], backoff[0]["new_micro_batch"]) == (16, 8)
    assert "step 5" in backoff[0]["message"]
    saved = checkpoint.load(tr.state.root / checkpoint.step_dir_name(20))
    assert saved.state["micro_batches"]["chunks"] == 2


def test_resume_after_a_backoff_keeps_the_split_and_is_bit_identical(tmp_path):
    straight = in_process_trainer(tmp_path, "straight", max_steps=20, ckpt_every=10, faults="oom@5")
    assert straight.run() == 0

    broken = in_process_trainer(tmp_path, "broken", max_steps=20, ckpt_every=10, faults="oom@5")
    forward = broken.model.forward

    def crash_at_13(*args, **kwargs):
        if broken.step + 1 == 13:
            raise RuntimeError("simulated crash")
        return forward(*args, **kwargs)

    broken.model.forward = crash_at_13
    assert broken.run() == 1
    again = resumed_trainer(broken)
    assert again.step == 10 and again.micro.chunks == 2  # the split came back with the checkpoint
    assert again.run() == 0
    want = checkpoint.load(straight.state.root / checkpoint.step_dir_name(20)).tensors
    got = checkpoint.load(again.state.root / checkpoint.step_dir_name(20)).tensors
    assert same_weights(want, got)


def test_vram_pressure_backs_off_before_oom_with_a_cooldown(tmp_path):
    tr = in_process_trainer(tmp_path, "pressure", max_steps=25, ckpt_every=0)
    readings = []

    def reading():  # the card above 0.85 from step 3 on, as NVML would report it
        readings.append(tr.step)
        return 0.95 if tr.step >= 3 else 0.30

    tr.vram_fraction = reading
    assert tr.run() == 0
    backoffs = [a for a in alerts(tr.run_dir) if a.get("fault") == "oom_backoff"]
    assert [a["new_micro_batch"] for a in backoffs] == [8, 4, 2]  # at steps 3, 13 and 23
    assert all("VRAM at 95%" in a["reason"] for a in backoffs)
    assert tr.micro.chunks == 8 and readings == [1, 2, 3, 13, 23]  # no reading while cooling down


def test_no_reading_or_limit_off_means_no_backoff(tmp_path):
    tr = in_process_trainer(tmp_path, "cpu", max_steps=6, ckpt_every=0)
    tr.vram_fraction = lambda: None  # a CPU run: telemetry has no VRAM figure
    assert tr.run() == 0 and tr.micro.chunks == 1
    off = in_process_trainer(tmp_path, "off", max_steps=6, ckpt_every=0, overrides=["train.vram_limit=1.0"])
    off.vram_fraction = lambda: 0.99
    assert off.run() == 0 and off.micro.chunks == 1


def test_oom_with_one_slot_per_chunk_fails_the_run(tmp_path):
    tr = in_process_trainer(tmp_path, "floor", max_steps=10, ckpt_every=0, overrides=["train.batch_size=2"],
                            faults="oom@3,oom@3")
    assert tr.run() == 1
    assert tr.status == "failed" and tr.micro.chunks == 2
    assert any("chunks of one slot" in a["message"] for a in alerts(tr.run_dir))


def test_fault_spec_parsing():
    assert parse_faults("oom@12, oom@12;nan@3,enospc@40") == {"oom": [12, 12], "nan": [3], "enospc": [40]}
    assert parse_faults("") == {}
    for bad in ("bogus@1", "oom@x", "oom", "nan@-3"):
        with pytest.raises(ConfigError, match="TRM_LAB_FAULTS"):
            parse_faults(bad)
    assert isinstance(torch.OutOfMemoryError("x"), RuntimeError)


SLEEPY = ["model.memory=titans-mag", "sleep.enabled=true", "sleep.wake_steps=4", "sleep.sleep_steps=4"]


def test_oom_during_sleep_backs_off_like_wake_and_the_run_goes_on(tmp_path):
    # steps 1-4 wake, 5-8 sleep: the injected error hits consolidation, not a wake step
    tr = in_process_trainer(tmp_path, "sleepy", max_steps=12, ckpt_every=0, overrides=SLEEPY, faults="oom@6")
    assert tr.run() == 0
    assert tr.step == 12 and tr.micro.chunks == 2  # one split for wake and sleep alike
    assert tr.stages["sleep"].sleeps == 1 and tr.status == "finished"
    backoff = [a for a in alerts(tr.run_dir) if a.get("fault") == "oom_backoff"]
    assert len(backoff) == 1 and backoff[0]["phase"] == "sleep"
    assert (backoff[0]["old_micro_batch"], backoff[0]["new_micro_batch"]) == (16, 8)
    assert "step 6" in backoff[0]["message"]


@pytest.mark.slow
def test_oom_during_sleep_at_one_sample_fails_the_run(tmp_path):
    tr = in_process_trainer(tmp_path, "sleepy-floor", max_steps=12, ckpt_every=0,
                            overrides=SLEEPY + ["train.batch_size=2"], faults="oom@6,oom@6")
    assert tr.run() == 1
    assert tr.status == "failed"
    assert any("chunks of one slot" in a["message"] for a in alerts(tr.run_dir))


def test_the_micro_batch_grows_back_after_a_quiet_spell(tmp_path):
    tr = in_process_trainer(tmp_path, "grow", max_steps=GROW_AFTER_STEPS + 6, ckpt_every=0, faults="oom@3")
    tr.vram_fraction = lambda: None
    assert tr.run() == 0
    changes = [(a["old_micro_batch"], a["new_micro_batch"]) for a in alerts(tr.run_dir) if a.get("fault") == "oom_backoff"]
    assert changes == [(16, 8), (8, 16)] and tr.micro.chunks == 1
