"""bench/gpu.py's parts that decide its figures, on CPU: the batch search, the peak table, MFU, and one
measurement through the same code a CUDA run takes."""

from __future__ import annotations

import pytest
import torch

from bench import gpu


@pytest.mark.parametrize("limit", [1, 5, 31, 32, 33, 100, 4096, 65535, 65536])
@pytest.mark.parametrize("start", [1, 32, 64])
def test_the_batch_search_finds_the_largest_fit_in_few_tries(limit, start):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= limit

    assert gpu.largest_batch(fits, start, 65536) == limit
    assert len(tried) <= 2 * 17 and all(1 <= b <= 65536 for b in tried)


def test_the_batch_search_says_none_when_nothing_fits():
    assert gpu.largest_batch(lambda b: False, 32, 65536) is None


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.0),
                                        ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA GeForce RTX 4090", 165.2),
                                        ("NVIDIA GeForce RTX 3080 Ti", 68.2), ("NVIDIA GeForce GTX 1080", None)])
def test_the_peak_table_matches_card_names(name, peak):
    assert gpu.peak_tflops(name)[0] == peak


def test_mfu_is_null_with_a_reason_unless_a_peak_is_known(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert gpu.mfu(1e12, "float32", cpu, None)["mfu"] is None
    assert gpu.mfu(1e12, "float32", cpu, 10.0)["mfu"] == pytest.approx(0.1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1080")
    unknown = gpu.mfu(1e12, "bfloat16", cuda, None)
    assert unknown["mfu"] is None and "--peak-tflops" in unknown["mfu_note"]
    assert "float32" in gpu.mfu(1e12, "float32", cuda, None)["mfu_note"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    known = gpu.mfu(312e12 / 4, "bfloat16", cuda, None)
    assert known["mfu"] == pytest.approx(0.25) and known["peak_tflops"] == 312.0


def test_a_cpu_measurement_takes_real_steps_and_counts_their_flops():
    r = gpu.measure("configs/quickstart.toml", gpu.TINY, "cpu", None, 1, 2, 100.0, False)
    assert r["dtype"] == "float32" and r["batch"] == 4 and r["steps_per_s"] > 0
    assert r["tokens_per_s"] == pytest.approx(r["steps_per_s"] * 4 * 16)  # 16 cells of a 4x4 grid per sample
    assert r["flops_per_step"] == 4 * r["flops"]["per_sample"]
    assert r["mfu"] == pytest.approx(r["flops_per_step"] * r["steps_per_s"] / 100e12)
    assert r["max_batch_12gb"] is None and r["max_batch_note"] and r["peak_vram_mb"] is None
    assert {"mfu", "peak_vram_mb", "max_batch_12gb", "steps_per_s", "tokens_per_s", "dtype"} <= r.keys()


def test_bad_arguments_are_refused_with_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        gpu.main(["--peak-tflops", "-1"])
    assert e.value.code == 2 and "--peak-tflops" in capsys.readouterr().err


def test_a_batch_that_runs_out_of_memory_or_over_budget_does_not_fit(monkeypatch):
    from engine import config

    cfg = config.load("configs/quickstart.toml", gpu.BASE + gpu.TINY + ["train.device=cpu"])
    bench = gpu.Bench(cfg, torch.device("cpu"), "float32")
    seen = {"batch": 0}
    forward = bench.model.forward

    def limited(carry, inputs, *args, **kwargs):  # a card that holds 8 slots; the engine's back-off then splits
        seen["batch"] = max(seen["batch"], inputs.shape[0])
        if inputs.shape[0] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(carry, inputs, *args, **kwargs)

    monkeypatch.setattr(bench.model, "forward", limited)
    for name in ("empty_cache", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: seen.update(batch=0))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: seen["batch"] * 2**20)  # 1 MiB a slot
    assert bench.fits(8, budget=100 * 2**20, outside=0)
    assert not bench.fits(9, budget=100 * 2**20, outside=0)  # out of memory: split by the engine, so refused
    assert not bench.fits(8, budget=8 * 2**20, outside=1)  # under the allocator's peak, over with the context
    assert gpu.largest_batch(lambda b: bench.fits(b, 6 * 2**20, 0), 4, 8) == 6


def test_the_device_script_parses_and_its_limits_fit_8_minutes():
    import re
    import subprocess

    script = gpu.ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    limits = [int(n) for n in re.findall(r"^\s*step \w+ (\d+) ", script.read_text(), re.M)]
    assert len(limits) == 7 and sum(limits) <= 8 * 60
