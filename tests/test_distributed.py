"""Data-parallel runs through torchrun on CPU (gloo): 2 processes at global batch B train exactly as 1 process at
batch B, step for step, with the neural memory and sleep on; so do two "machines" (two torchrun node groups)
on one host; the console's commands take effect on every rank.

Tolerance (LOSS_RTOL, tests/faults/scenarios.py): float32 sums over the batch run in another order when the
batch is split (per rank, then the gradient all-reduce), so figures agree to about 1e-7 relative per step;
1e-5 leaves room for 40 steps of that and is far below any real difference (a slot that takes another sample,
a skipped sleep). The kill -9 cases are in the fault table (tests/faults/test_fault_distributed.py).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import checkpoint
from engine.store import RunReader
from tests.faults.scenarios import (DDP_SETS, LOSS_RTOL, any_live_step, ddp_config, ddp_sets, largest_difference,
                                    reference_figures, run_figures, run_status, world_of)
from tests.helpers import ROOT, env, lab, tiny_config, wait_for


def alerts(run_dir: Path) -> list[str]:
    r = RunReader(run_dir)
    try:
        return [e["data"]["message"] for e in r.events(kinds=["alert"])]
    finally:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)


def the_run(runs_dir: Path) -> Path:
    return wait_for(lambda: next((d for d in runs_dir.iterdir() if not d.name.startswith(".")), None)
                    if runs_dir.is_dir() else None, timeout=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict[int, float]]:
    """One process at the global batch, in this process: what every distributed run must match."""
    got = reference_figures(tmp_path_factory.mktemp("reference"))
    assert got["consolidation_loss"] and got["eval_exact"], "the reference run slept and was evaluated"
    return got


def test_two_processes_train_as_one_step_for_step(reference, tmp_path):
    out = lab("run", str(ddp_config(tmp_path)), "--headless", "--nproc", "2", "--runs-dir", str(tmp_path / "runs"),
              *ddp_sets(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = the_run(tmp_path / "runs")
    got = run_figures(run)
    assert largest_difference(got, reference) <= LOSS_RTOL, (got["loss"], reference["loss"])
    assert world_of(run)["world_size"] == 2 and run_status(run) == "finished"
    r = RunReader(run)
    assert r.metric("step_time_rank1"), "each rank's step time is recorded"
    r.close()


def test_two_machines_on_one_host_train_as_one(reference, tmp_path):
    """Two torchrun node groups meet at a c10d rendezvous: the one that started the run holds the run folder,
    the other joins with no folder of its own."""
    endpoint = f"localhost:{free_port()}"
    joined = start("run", "--join", "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint)
    first = lab("run", str(ddp_config(tmp_path)), "--headless", "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint",
                endpoint, "--runs-dir", str(tmp_path / "runs"), *ddp_sets(), timeout=300)
    _, joined_err = joined.communicate(timeout=120)
    assert first.returncode == 0 and joined.returncode == 0, first.stderr[-2000:] + joined_err[-2000:]
    run = the_run(tmp_path / "runs")
    assert largest_difference(run_figures(run), reference) <= LOSS_RTOL
    assert world_of(run)["world_size"] == 2


def test_refusals_are_one_sentence_and_exit_2(tmp_path):
    cfg = tiny_config(tmp_path)  # train.batch_size = 16
    cases = {
        ("--nproc", "3"): "does not split evenly over 3 processes",
        ("--nproc", "0"): "1 or more",
        ("--nnodes", "2"): "needs --rdzv-endpoint",
        ("--nproc", "2", "--set", "curriculum.enabled=true"): "runs in one process only",
    }
    for extra, words in cases.items():
        out = lab("run", str(cfg), "--headless", "--runs-dir", str(tmp_path / "runs"), *extra)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, (extra, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1
    out = lab("run", str(cfg), "--join", "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "localhost:1")
    assert out.returncode == 2 and "--join takes no config" in out.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing was created


# ---- commands: real processes, slow (the faults of distributed runs are cases 20 and 21 of the fault table) ----


@pytest.mark.slow
def test_commands_take_effect_on_every_rank_at_one_boundary(tmp_path):
    """pause, sleep, checkpoint, inspect (a slot of rank 1) and stop on a 2-process run; every checkpoint
    checks that the ranks still hold the same weights, so a command applied on one rank only fails the run.
    The sleep distills, whose loss leaves the halting head without gradient (DDP must be told)."""
    from lab.cli import send_command

    cfg = tiny_config(tmp_path, max_steps=10**6, ckpt_every=0)
    sets = [a for s in DDP_SETS[:3] + ["sleep.wake_steps=100000", "sleep.sleep_steps=4", "sleep.mode=distill"]
            for a in ("--set", s)]
    proc = start("run", str(cfg), "--headless", "--nproc", "2", "--runs-dir", str(tmp_path / "runs"), *sets)
    try:
        run = the_run(tmp_path / "runs")
        wait_for(lambda: any_live_step(run) >= 5, timeout=180)
        paused = send_command(run, "pause", {})
        assert paused["ok"]
        time.sleep(1.5)
        assert any_live_step(run) == paused["step"] and run_status(run) == "paused"
        assert send_command(run, "resume", {})["ok"]
        asleep = send_command(run, "sleep", {})
        assert asleep["ok"], asleep
        made = send_command(run, "checkpoint", {})
        assert made["ok"] and Path(made["result"]["path"]).is_dir()
        inspected = send_command(run, "inspect", {"slot": 13})
        assert inspected["ok"] and inspected["result"]["slot"] == 13 and len(inspected["result"]["inputs"]) == 16
        wait_for(lambda: any_live_step(run) >= made["step"] + 6, timeout=60)  # past the sleep
        stopped = send_command(run, "stop", {})
        assert stopped["ok"]
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and run_status(run) == "stopped", err[-2000:]
    r = RunReader(run)
    phases = [(e["step"], e["data"]["phase"]) for e in r.events(kinds=["phase"])]
    r.close()
    assert (asleep["step"], "sleep") in phases  # the manual sleep began at the boundary after the command
    assert not [m for m in alerts(run) if "crashed" in m]
    newest = checkpoint.load(checkpoint.list_checkpoints(run / "checkpoints")[-1])
    assert newest.state["wake"]["carry"]["z_H"].shape[0] == 16  # the whole batch's carry, from both ranks


# ---- CUDA, with torch.cuda and the process group mocked (no card here, nor in CI) ----

class FakeGroup:
    """What World.join asks of torch.distributed, recorded."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size, self.backend = rank, size, None

    def init_process_group(self, backend, timeout):
        self.backend = backend

    def all_gather_object(self, out, obj):
        for r in range(self.size):
            out[r] = {**obj, "rank": r, "holds_run": r == 0}


@pytest.mark.parametrize("local_rank", [0, 1])
def test_on_cuda_each_rank_joins_with_nccl_and_takes_the_card_of_its_local_rank(monkeypatch, local_rank):
    import torch
    import torch.distributed as dist

    from engine.build import pick_device
    from engine.distributed import World

    group, current = FakeGroup(rank=local_rank, size=2), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    for name in ("init_process_group", "all_gather_object"):
        monkeypatch.setattr(dist, name, getattr(group, name))
    monkeypatch.setattr(dist, "get_rank", lambda: group.rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: group.size)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))

    world = World.join(holds_run=local_rank == 0)
    assert group.backend == "cpu:gloo,cuda:nccl"  # CUDA tensors over NCCL, objects and CPU tensors over gloo
    assert current == [local_rank] and world.local_rank == local_rank
    assert pick_device("cuda", world.local_rank) == torch.device("cuda", local_rank)
    assert pick_device("auto", world.local_rank) == torch.device("cuda", local_rank)


def test_without_cuda_the_group_is_gloo_and_too_many_ranks_for_the_cards_are_refused(monkeypatch):
    import torch
    import torch.distributed as dist

    from engine.build import pick_device
    from engine.config import ConfigError
    from engine.distributed import World

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert World.backend() == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="process 1 of this machine finds 1"):
        pick_device("cuda", 1)
    assert pick_device("cpu", 1) == torch.device("cpu")
