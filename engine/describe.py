"""`python -m engine.describe CONFIG [--set k=v ...]`: the resolved config and parameter count as JSON."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys

from engine import config
from engine.build import build_model, make_task


# Parameter names by the part of the model they belong to, first match wins (fnmatch patterns).
PARTS = (
    ("vocabulary", ("embed.*", "lm_head.*")),  # grows with the vocabulary: the input embedding and the output head
    ("memory", ("*.mixer.memory.*",)),  # the Titans neural memory of every block (its persistent tokens included)
    ("attention", ("*.mixer.*",)),
    ("mlp", ("*.mlp.*",)),
    ("halting", ("q_head.*",)),
)


def parameter_parts(model) -> dict[str, int]:
    """Parameters per part of the model (PARTS); anything unmatched is "other"."""
    parts = {name: 0 for name, _ in PARTS}
    for name, p in model.named_parameters():
        part = next((part for part, patterns in PARTS if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)),
                    "other")
        parts[part] = parts.get(part, 0) + p.numel()
    return parts


def describe(cfg: config.RunConfig) -> dict:
    task = make_task(cfg)
    model = build_model(cfg, task)
    parameters = sum(p.numel() for p in model.parameters())
    return {"config": config.to_dict(cfg), "toml": config.to_toml(cfg), "parameters": parameters,
            "parameters_by_part": parameter_parts(model),
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
