"""Engine overhead: steps/s of the full engine (Trainer.run(): run store, control socket with a client attached,
telemetry, checkpoints at start and end) against a bare loop of the same model, data, optimizer and batch.

The bare loop is written out here with no engine machinery: the model from engine.build.build_model, the
optimizer from engine.optim.build_optimizer, the training stream of the same task filling the slots that halted,
forward, backward, optimizer step, and the EMA copy's update (the run's config asks for the EMA; it is the
model's arithmetic, not the engine's bookkeeping). Both arms run the same config, the same steps and the same
threads, in this process; rounds alternate bare and engine so machine noise hits both alike. Each arm is timed
from its 4th step to its last; the ratio is engine / bare over the median round. Target: overhead_ratio >= 0.95.

    .venv/bin/python bench/overhead.py [--quick | --smoke] [--config configs/quickstart.toml] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine import config, protocol  # noqa: E402
from engine.build import build_model, make_task, pick_device  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.tasks.base import batch  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

WARMUP = 3  # steps before the timed window, in both arms


def bare_steps_per_s(cfg: config.RunConfig, n: int) -> float:
    """A plain training loop of the run's model, data, optimizer and batch for WARMUP + n steps: forward,
    backward, step, and nothing else (no EMA, no optimizer figures, no recording)."""
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    task = make_task(cfg)
    model = build_model(cfg, task).to(device)
    optimizer = build_optimizer(model, cfg.optim, total_steps=cfg.train.max_steps)
    optimizer.record_figures = False  # the same update, without the per-step figures the engine records
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)  # halting's exploration draws
    carry = model.initial_carry(cfg.train.batch_size, device)
    model.train()
    index = 0
    stamps = []
    for _ in range(WARMUP + n):
        # the slots that halted take the next samples of the training stream
        inputs, labels = carry.inputs.clone(), carry.labels.clone()
        fresh = int(carry.halted.sum())
        if fresh:
            new_inputs, new_labels = batch(task, "train", list(range(index, index + fresh)))
            index += fresh
            inputs[carry.halted], labels[carry.halted] = new_inputs.to(device), new_labels.to(device)
        carry, out = model(carry, inputs, labels, generator=generator)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        carry = carry.detach()
        stamps.append(time.perf_counter())
    return n / (stamps[-1] - stamps[WARMUP - 1])


def attach_reader(sock_path: Path, stop: threading.Event, connected: list[float]) -> threading.Thread:
    """A thread that connects to the run's socket as soon as it accepts (appending the time to `connected`) and
    reads until `stop`."""
    def read():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while not stop.is_set():
            try:
                s.connect(str(sock_path))
                connected.append(time.perf_counter())
                break
            except OSError:
                time.sleep(0.01)
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                if not s.recv(1 << 16):
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        s.close()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def engine_steps_per_s(cfg: config.RunConfig, n: int) -> float:
    """Trainer.run() for WARMUP + n steps with a client reading the event stream; timed by its own events."""
    stamps: dict[int, float] = {}

    def on_event(msg: dict) -> None:
        if msg["event"] == "metrics":
            stamps[msg["step"]] = time.perf_counter()

    cfg.train.max_steps = WARMUP + n
    with tempfile.TemporaryDirectory() as d:
        stop, connected = threading.Event(), []
        reader = attach_reader(Path(d) / protocol.SOCKET_NAME, stop, connected)  # connects once the socket is there
        Trainer(d, cfg, output="quiet", emit=on_event).run()
        stop.set()
        reader.join()
    assert connected and connected[0] < stamps[WARMUP], "the client attached after the timed window began"
    return n / (stamps[WARMUP + n] - stamps[WARMUP])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 100 steps")
    ap.add_argument("--smoke", action="store_true", help="1 round of 5 steps: checks the code path")
    ap.add_argument("--config", default="configs/quickstart.toml")
    ap.add_argument("--threads", type=int, default=None, help="both arms' threads (default 2; --smoke 1)")
    args = ap.parse_args()
    args.threads = args.threads or (1 if args.smoke else 2)
    torch.set_num_threads(args.threads)
    steps, rounds = (5, 1) if args.smoke else (100, 3) if args.quick else (300, 5)

    def fresh_cfg() -> config.RunConfig:
        return config.load(args.config, [f"train.threads={args.threads}", "eval.every=0", "checkpoint.every=0",
                                         "train.max_minutes=0", f"train.max_steps={WARMUP + steps}"])

    bare, engine = [], []
    for r in range(rounds):
        bare.append(bare_steps_per_s(fresh_cfg(), steps))
        engine.append(engine_steps_per_s(fresh_cfg(), steps))
        print(f"round {r + 1}/{rounds}: bare {bare[-1]:.2f} steps/s   engine {engine[-1]:.2f} steps/s", flush=True)
    b, e = statistics.median(bare), statistics.median(engine)
    ratio = e / b
    print(f"\nbare loop  {b:8.2f} steps/s\nengine     {e:8.2f} steps/s\nratio engine/bare = {ratio:.3f}  (target >= 0.95)")
    print(json.dumps({"overhead_ratio": round(ratio, 4), "engine_steps_per_s": round(e, 3),
                      "bare_steps_per_s": round(b, 3), "steps_per_round": steps, "rounds": rounds,
                      "threads": args.threads, "config": args.config, "smoke": args.smoke}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
