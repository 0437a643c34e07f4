"""`python -m engine.describe CONFIG [--set k=v ...]`: the resolved config and parameter count as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from engine import config
from engine.build import build_model, make_task


def describe(cfg: config.RunConfig) -> dict:
    task = make_task(cfg)
    model = build_model(cfg, task)
    n_params = sum(p.numel() for p in model.parameters())
    return {"config": config.to_dict(cfg), "toml": config.to_toml(cfg), "n_params": n_params,
            "task": {"name": cfg.task.name, "vocab_size": task.vocab_size, "seq_len": task.seq_len}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.describe")
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    try:
        cfg = config.load(args.config, args.set)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(describe(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
