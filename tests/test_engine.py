"""The headless engine end to end, as a user drives it: real processes, real sockets."""

import json
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from engine.store import RunReader
from tests.helpers import ROOT, env, kill9, lab, lab_popen, only_run, run_step, tiny_config, wait_for


def final_weights(run_dir):
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    return load_file(str(ckpts[-1] / "model.safetensors")), ckpts[-1].name


def test_headless_run_trains_records_and_finishes(tmp_path, runs_dir):
    cfg = tiny_config(tmp_path, max_steps=60, ckpt_every=30)
    out = lab("run", str(cfg), "--headless", "--json", "--runs-dir", str(runs_dir))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    assert lines and lines[-1]["status"] == "finished" and lines[-1]["step"] == 60
    run = only_run(runs_dir)
    r = RunReader(run)
    assert r.run()["status"] == "finished"
    losses = r.metric("loss")
    assert [row[1] for row in losses] == list(range(1, 61))
    assert losses[-1][2] < losses[0][2]  # it learns something in 60 steps
    assert any(k.startswith("sys/rss_mb") for k in r.metric_keys())  # telemetry sampled into the store
    assert (run / "config.toml").is_file()
    assert not (run / "engine.sock").exists()  # removed on exit

    # lab eval on a puzzle file in the common format, half with solutions, half solved by the reader
    from engine.tasks.sudoku import SudokuTask

    task = SudokuTask(size=4, difficulty=1)
    lines = []
    for i in range(40):
        s = task.sample("test", i)
        puzzle = "".join("." if t == 1 else str(t - 1) for t in s.inputs)
        lines.append(puzzle + ("," + "".join(str(t - 1) for t in s.labels) if i % 2 else ""))
    pf = tmp_path / "p.txt"
    pf.write_text("# 4x4 held-out puzzles\n" + "\n".join(lines) + "\n")
    out = lab("eval", run.name, "--puzzles", str(pf), "--json", "--runs-dir", str(runs_dir))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    import torch

    from engine.evaluate import load_run_model

    _, _, model, _ = load_run_model(run)  # the same EMA weights, scored here by hand
    inputs = torch.tensor([task.sample("test", i).inputs for i in range(40)])
    labels = torch.tensor([task.sample("test", i).labels for i in range(40)])
    preds, _ = model.predict(inputs)
    assert result["n"] == 40
    assert result["exact"] == (preds == labels).all(dim=1).float().mean().item()
    assert abs(result["cell"] - (preds == labels).float().mean().item()) < 1e-9
    bad = tmp_path / "bad.txt"
    bad.write_text("1234\n")
    out = lab("eval", run.name, "--puzzles", str(bad), "--runs-dir", str(runs_dir))
    assert out.returncode == 2 and "line 1" in out.stderr and "Traceback" not in out.stderr


def test_bad_config_exits_2_and_leaves_nothing(tmp_path, runs_dir):
    cfg = tiny_config(tmp_path, extra="")
    out = lab("run", str(cfg), "--headless", "--set", "model.d_model=-3", "--runs-dir", str(runs_dir))
    assert out.returncode == 2
    assert "model.d_model" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert list(runs_dir.iterdir()) == []
    out = lab("run", str(tmp_path / "missing.toml"), "--headless", "--runs-dir", str(runs_dir))
    assert out.returncode == 2 and "no such config" in out.stderr
    out = lab("eval", "nope", "--puzzles", "x", "--runs-dir", str(runs_dir))
    assert out.returncode == 2 and "no run" in out.stderr


def test_kill9_then_resume_is_bit_identical(tmp_path):
    """200 steps straight == 100 steps + kill -9 + resume + 100 steps, on CPU."""
    cfg = tiny_config(tmp_path, max_steps=200, ckpt_every=100)
    straight_dir, broken_dir = tmp_path / "a", tmp_path / "b"
    out = lab("run", str(cfg), "--headless", "--runs-dir", str(straight_dir))
    assert out.returncode == 0, out.stderr
    straight, name = final_weights(only_run(straight_dir))
    assert name == "step-00000200"

    proc = lab_popen("run", str(cfg), "--headless", "--runs-dir", str(broken_dir))
    run = wait_for(lambda: next((d for d in broken_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), None)
                   if broken_dir.exists() else None)
    wait_for(lambda: run_step(run) >= 130, timeout=120)
    kill9(proc)
    assert (run / "checkpoints" / "step-00000100").is_dir()
    assert not (run / "checkpoints" / "step-00000200").exists()
    out = lab("run", "--resume", str(run))
    assert out.returncode == 0, out.stderr
    resumed, name = final_weights(run)
    assert name == "step-00000200"
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert (straight[k] == resumed[k]).all(), k

    r = RunReader(run)
    live = [row[1] for row in r.metric("loss")]
    assert live == list(range(1, 201))  # nothing before the checkpoint lost, nothing counted twice
    everything = r.metric("loss", include_superseded=True)
    assert len(everything) > 200  # rows written after step 100 before the kill are kept, marked superseded


def test_sigterm_checkpoints_at_next_boundary_and_exits_0(tmp_path, runs_dir):
    cfg = tiny_config(tmp_path, max_steps=100000, ckpt_every=0)
    proc = lab_popen("run", str(cfg), "--headless", "--runs-dir", str(runs_dir))
    run = wait_for(lambda: next((d for d in runs_dir.iterdir() if not d.name.startswith(".")), None))
    wait_for(lambda: run_step(run) >= 20, timeout=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    r = RunReader(run)
    row = r.run()
    assert row["status"] == "stopped"
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert int(ckpts[-1].name[5:]) >= row["step"] - 1  # the stop's checkpoint, within one step


def test_ctl_steers_a_live_run(tmp_path, runs_dir):
    cfg = tiny_config(tmp_path, max_steps=100000, ckpt_every=0)
    proc = lab_popen("run", str(cfg), "--headless", "--runs-dir", str(runs_dir))
    try:
        run = wait_for(lambda: next((d for d in runs_dir.iterdir() if not d.name.startswith(".")), None))
        wait_for(lambda: (run / "engine.sock").exists() and run_step(run) >= 5, timeout=120)
        rd = ["--runs-dir", str(runs_dir)]

        def ctl(*a):
            out = lab("ctl", run.name, *a, "--json", *rd)
            return json.loads(out.stdout), out.returncode

        ack, rc = ctl("pause")
        assert rc == 0 and ack["ok"] and isinstance(ack["step"], int)
        paused_at = ack["step"]
        ack, _ = ctl("status")
        assert ack["result"]["status"] == "paused" and ack["step"] == paused_at  # no step while paused
        ack, rc = ctl("pause")
        assert rc == 1 and not ack["ok"] and "already paused" in ack["error"]
        ack, _ = ctl("inspect", "--slot", "3")
        snap = ack["result"]
        assert snap["steps"] >= 0 and len(snap["z_H_norms"]) >= 1
        assert len(snap["z_H_position_change"]) == len(snap["z_H_norms"]) - 1
        ack, rc = ctl("sleep")
        assert rc == 1 and "not available" in ack["error"]
        ack, rc = ctl("stage")
        assert rc == 1 and "no level pipeline" in ack["error"]
        ack, _ = ctl("checkpoint")
        assert ack["ok"] and (run / "checkpoints" / f"step-{paused_at:08d}").is_dir()
        ack, _ = ctl("resume")
        assert ack["ok"]
        wait_for(lambda: run_step(run) > paused_at + 3, timeout=60)
        ack, _ = ctl("stop")
        assert ack["ok"]
        assert proc.wait(timeout=60) == 0
        cmds = RunReader(run).commands()
        assert [c["cmd"] for c in cmds] == ["pause", "status", "pause", "inspect", "sleep", "stage", "checkpoint",
                                            "resume", "stop"]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_engine_never_imports_the_console():
    code = ("import sys, engine.trainer, engine.__main__, engine.evaluate, engine.describe; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'lab', 'widgets')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bitnet_run_exports_ternary_weights_that_reload_to_the_same_outputs(tmp_path, runs_dir):
    import torch
    from safetensors.torch import load_file

    from engine.evaluate import load_run_model
    from engine.model.bitlinear import load_ternary

    cfg = tiny_config(tmp_path, max_steps=12, ckpt_every=0)
    out = lab("run", str(cfg), "--headless", "--set", "model.bitnet=true", "--runs-dir", str(runs_dir))
    assert out.returncode == 0, out.stderr
    run = only_run(runs_dir)
    target = tmp_path / "t.safetensors"
    out = lab("export", run.name, "--ternary", "--out", str(target), "--runs-dir", str(runs_dir))
    assert out.returncode == 0, out.stderr
    packed = load_file(str(target))
    codes = [v for k, v in packed.items() if k.endswith(".codes")]
    assert codes and all(v.dtype == torch.uint8 for v in codes)
    _, task, model, _ = load_run_model(run)
    x = torch.randint(1, task.vocab_size, (4, task.seq_len))
    with torch.no_grad():
        want, _ = model.predict(x)
        reloaded = load_ternary(load_run_model(run)[2], target)
        got, _ = reloaded.predict(x)
    assert torch.equal(want, got)
    plain = lab("run", str(cfg), "--headless", "--runs-dir", str(tmp_path / "plain"))
    assert plain.returncode == 0
    out = lab("export", only_run(tmp_path / "plain").name, "--ternary", "--runs-dir", str(tmp_path / "plain"))
    assert out.returncode == 2 and "bitnet" in out.stderr.lower()


def _poisoned_trainer(tmp_path, poison_steps, max_steps=30):
    """A trainer whose loss turns NaN at the given steps (each listed step poisons once)."""
    from engine import config
    from engine.trainer import Trainer

    cfg = config.load(tiny_config(tmp_path, max_steps=max_steps, ckpt_every=5))
    run = tmp_path / "run"
    run.mkdir()
    tr = Trainer(run, cfg, output="quiet")
    forward = tr.model.forward
    pending = list(poison_steps)

    def poisoned(*args, **kwargs):
        carry, out = forward(*args, **kwargs)
        if pending and tr.step + 1 == pending[0]:
            pending.pop(0)
            out.loss = out.loss * float("nan")
        return carry, out

    tr.model.forward = poisoned
    return tr, run


@pytest.mark.parametrize("decay, follows", [(0.0, True), (1.0, False)])
def test_train_ema_decay_sets_how_closely_the_evaluation_weights_follow(tmp_path, decay, follows):
    import torch

    from engine import config
    from engine.trainer import Trainer

    cfg = config.load(tiny_config(tmp_path, max_steps=2, ckpt_every=0), [f"train.ema_decay={decay}"])
    (tmp_path / "run").mkdir()
    tr = Trainer(tmp_path / "run", cfg, output="quiet")
    start = [p.detach().clone() for p in tr.ema.parameters()]
    assert tr.run() == 0
    same = [torch.equal(e, m) for e, m in zip(tr.ema.parameters(), tr.model.parameters())]
    kept = [torch.equal(e, s) for e, s in zip(tr.ema.parameters(), start)]
    assert all(same) if follows else (all(kept) and not all(same))


def test_nan_loss_rolls_back_halves_the_lr_and_recovers(tmp_path):
    tr, run = _poisoned_trainer(tmp_path, [13])
    assert tr.run() == 0
    assert tr.step == 30 and tr.optimizer.lr_scale == 0.5
    alerts = [e["data"]["message"] for e in RunReader(run).events(kinds=["alert"])]
    assert any("rolled back to step 10" in a and "x0.5" in a for a in alerts)
    assert [r[1] for r in RunReader(run).metric("loss")] == list(range(1, 31))  # the NaN row is superseded


def test_three_rollbacks_in_a_row_end_the_run_as_diverged(tmp_path):
    tr, run = _poisoned_trainer(tmp_path, [13, 13, 13, 13])
    assert tr.run() == 1
    assert tr.status == "diverged"
    assert tr.optimizer.lr_scale == 0.125
