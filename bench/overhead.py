"""Engine overhead: steps/s of the full engine (run store, control socket with a client
attached, telemetry) against a bare loop of the same model, batch and optimizer.

Blocks of steps alternate between the two so machine noise hits both alike; the ratio is
engine / bare over the median block. Target: overhead_ratio >= 0.95.

    .venv/bin/python bench/overhead.py [--quick] [--config configs/quickstart.toml]
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
from engine.trainer import Trainer  # noqa: E402


def bare_steps_per_s(trainer: Trainer, n: int) -> float:
    """The same step without any recording: data, forward, backward, optimizer, EMA."""
    for _ in range(3):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(n):
        trainer.train_step()
    return n / (time.perf_counter() - t0)


def attach_reader(sock_path: Path, stop: threading.Event) -> threading.Thread:
    def read():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(200):
            try:
                s.connect(str(sock_path))
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
    """The full engine loop for n steps; timed from its 4th step to its last by its own events."""
    stamps: dict[int, float] = {}

    def on_event(msg: dict) -> None:
        if msg["event"] == "metrics":
            stamps[msg["step"]] = time.perf_counter()

    cfg.train.max_steps = n + 3
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(d, cfg, output="quiet", emit=on_event)
        stop = threading.Event()
        reader = None
        orig_start = trainer.server.start

        def start_and_attach():
            nonlocal reader
            orig_start()
            reader = attach_reader(Path(d) / protocol.SOCKET_NAME, stop)

        trainer.server.start = start_and_attach
        trainer.run()
        stop.set()
        if reader:
            reader.join()
    first, last = 3, n + 3
    return (last - first) / (stamps[last] - stamps[first])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--config", default="configs/quickstart.toml")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (100, 3) if args.quick else (300, 5)

    def fresh_cfg() -> config.RunConfig:
        cfg = config.load(args.config, [f"train.threads={args.threads}", "eval.every=0", "checkpoint.every=0",
                                        "train.max_minutes=0"])
        return cfg

    bare, engine = [], []
    with tempfile.TemporaryDirectory() as d:
        bare_trainer = Trainer(d, fresh_cfg(), output="quiet")
        for r in range(rounds):
            bare.append(bare_steps_per_s(bare_trainer, steps))
            engine.append(engine_steps_per_s(fresh_cfg(), steps))
            print(f"round {r + 1}/{rounds}: bare {bare[-1]:.2f} steps/s   engine {engine[-1]:.2f} steps/s", flush=True)
        bare_trainer.server.close()
        bare_trainer.store.close()
    b, e = statistics.median(bare), statistics.median(engine)
    ratio = e / b
    print(f"\nbare loop  {b:8.2f} steps/s\nengine     {e:8.2f} steps/s\nratio engine/bare = {ratio:.3f}  (target >= 0.95)")
    print(json.dumps({"overhead_ratio": round(ratio, 4), "engine_steps_per_s": round(e, 3),
                      "bare_steps_per_s": round(b, 3), "steps_per_round": steps, "rounds": rounds,
                      "config": args.config}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
