"""`lab dexter ...`: the Dexter models from raw records to trained runs.

    lab dexter sample DIR --seed S --size N     a synthetic raw set in the four formats
    lab dexter build RAW_DIR OUT                the memory, tool and reasoning datasets and their vocabulary
    lab dexter train OUT                        the three models as ordinary runs; each one's best checkpoint
                                                by held-out score is copied to OUT/models/<kind>/
    lab dexter brain RAW_DIR                    sample (when RAW_DIR holds no records), build and train
    lab dexter export MODEL_DIR                 a kept model's ternary export, loadable by the Python API

The engine's Dexter modules are imported inside the commands, like every command that needs more than the
console's own contract with the engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from engine.protocol import EXIT_FAILED, EXIT_OK
from engine.store import RunReader
from lab import runs

KINDS = ("memory", "tool", "reasoning")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class DexterError(Exception):
    """A mistake the user can fix; one sentence, exit 2."""


def cmd_sample(args) -> int:
    from engine.dexter.sample import SampleDirError, write_sample

    if args.size < 1 or args.size > 1_000_000:
        raise DexterError(f"--size {args.size} is out of range; allowed is 1 to 1000000.")
    try:
        counts = write_sample(args.dir, seed=args.seed, size=args.size, force=args.force)
    except SampleDirError as exc:
        raise DexterError(str(exc)) from None
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"wrote a synthetic raw set (seed {args.seed}) to {args.dir}: "
              + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()))
    return EXIT_OK


def cmd_build(args) -> int:
    summary = build_datasets(args.raw_dir, args.out, args.vocab_size, vocab_from=args.vocab_from)
    if args.json:
        print(json.dumps(summary))
    return EXIT_OK


def build_datasets(raw_dir: str, out: str, vocab_size: int, quiet: bool = False, vocab_from: str = "records") -> dict:
    """Build and print the summary (stdout) and each record that could not be used (stderr)."""
    from engine.dexter.dataset import BuildError, build, format_summary

    if not 300 <= vocab_size <= 65536:
        raise DexterError(f"--vocab-size {vocab_size} is out of range; allowed is 300 to 65536.")
    try:
        summary = build(raw_dir, out, vocab_size, vocab_from)
    except BuildError as exc:
        raise DexterError(str(exc)) from None
    for problem in summary["problems"]:
        print(f"lab: {problem}", file=sys.stderr)
    if not quiet:
        print(format_summary(summary, out), flush=True)
    return summary


class BestCheckpoint:
    """Keeps a copy of a run's best checkpoint by held-out score while the run trains.

    Every evaluation is followed by a checkpoint at the same step (the presets' eval.every = checkpoint.every),
    so a checkpoint whose step has an `eval_exact` figure better than any before is copied, whole and verified,
    into `dest` with the tokenizer and dataset summary beside it: a folder the Python API loads on its own."""

    def __init__(self, run_dir: Path, dest: Path, dataset: Path):
        self.run_dir, self.dest, self.dataset = run_dir, dest, dataset
        self.best: dict = {}
        self.seen: set[int] = set()

    def poll(self) -> None:
        try:
            reader = RunReader(self.run_dir)
            scores = {step: value for _, step, value in reader.metric("eval_exact") if value is not None}
            reader.close()
        except (FileNotFoundError, OSError, sqlite3.Error):
            return  # the store is not there yet or busy: the next poll sees it
        root = self.run_dir / "checkpoints"
        for ckpt in sorted(root.glob("step-*")) if root.is_dir() else []:
            step = int(ckpt.name.removeprefix("step-")) if ckpt.name[5:].isdigit() else -1
            if step in self.seen or step not in scores or not (ckpt / "meta.json").is_file():
                continue
            self.seen.add(step)
            if self.best and scores[step] <= self.best["eval_exact"]:
                continue
            if self._copy(ckpt):
                self.best = {"run": self.run_dir.name, "step": step, "eval_exact": scores[step]}
                _write_json(self.dest / "best.json", self.best)

    def _copy(self, ckpt: Path) -> bool:
        """Copy the checkpoint's weights if they match the digest its meta.json records."""
        try:
            meta = json.loads((ckpt / "meta.json").read_text())
            data = (ckpt / "model.safetensors").read_bytes()
        except (OSError, ValueError):
            return False  # rotated away or damaged: a later checkpoint will do
        if hashlib.sha256(data).hexdigest() != meta.get("sha256", {}).get("model.safetensors"):
            return False
        self.dest.mkdir(parents=True, exist_ok=True)
        for name, blob in (("model.safetensors", data), ("config.toml", (self.run_dir / "config.toml").read_bytes()),
                           ("tokenizer.json", (self.dataset / "tokenizer.json").read_bytes()),
                           ("dataset.json", (self.dataset / "dataset.json").read_bytes())):
            tmp = self.dest / f".{name}.tmp"
            tmp.write_bytes(blob)
            os.replace(tmp, self.dest / name)
        return True


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def train_models(out: str | Path, runs_dir: Path, kinds: list[str], overrides: list[str], steps: int | None,
                 output: str = "human", jobs: int = 1) -> dict:
    """Train each model as an ordinary run of its preset on the dataset in `out`, up to `jobs` at once (each its
    own engine process), keeping each one's best checkpoint in out/models/<kind>/.
    Returns {kind: {run, exit, step, eval_exact}} in the order of `kinds`."""
    out = Path(out).resolve()
    try:
        summary = json.loads((out / "dataset.json").read_text())
        sizes = {kind: int(summary["kinds"][kind]["test"]) for kind in kinds}
    except (OSError, ValueError, KeyError, TypeError):
        raise DexterError(f"{out} holds no built Dexter dataset (dataset.json is missing or damaged); build one with "
                          "`lab dexter build RAW_DIR OUT`.") from None
    if steps is not None and steps < 1:
        raise DexterError(f"--steps must be a positive number of steps, not {steps}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= len(KINDS):
        raise DexterError(f"--jobs {jobs} is out of range; allowed is 1 to {len(KINDS)} runs at once.")
    waiting, running, results = list(kinds), {}, {}
    while waiting or running:
        while waiting and len(running) < jobs:
            kind = waiting.pop(0)
            # every held-out example once (up to 1,024), unless --set says otherwise
            sets = [f"task.path={out}", f"eval.n_puzzles={min(sizes[kind], 1024)}"]
            sets += [f"train.max_steps={steps}"] if steps else []
            run_dir = runs.create_run(CONFIGS / f"dexter-{kind}.toml", sets + overrides, runs_dir)
            print(f"dexter {kind}: run {run_dir.name}", flush=True)
            # several at once share the terminal, so each reports only its end
            quiet = output if jobs == 1 else "quiet"
            running[kind] = (subprocess.Popen(runs.engine_command(run_dir, output=quiet)),
                             BestCheckpoint(run_dir, out / "models" / kind, out), run_dir)
        time.sleep(0.5)
        for kind, (engine, keeper, run_dir) in list(running.items()):
            keeper.poll()
            if engine.poll() is None:
                continue
            keeper.poll()
            del running[kind]
            results[kind] = {"run": run_dir.name, "exit": engine.returncode, **keeper.best}
            where = out / "models" / kind
            print(f"dexter {kind}: " + (f"best held-out {keeper.best['eval_exact']:.4f} at step "
                                        f"{keeper.best['step']}, kept in {where}" if keeper.best else
                                        "no evaluated checkpoint to keep")
                  + ("" if engine.returncode == 0 else f" (the run exited {engine.returncode}; see its engine.log)"),
                  flush=True)
    return {kind: results[kind] for kind in kinds}


def cmd_train(args) -> int:
    kinds = _kinds(args.only)
    results = train_models(args.out, _runs_dir(args), kinds, args.set, args.steps, jobs=args.jobs)
    if args.json:
        print(json.dumps(results))
    return EXIT_OK if all(r["exit"] == 0 for r in results.values()) else EXIT_FAILED


def cmd_brain(args) -> int:
    from engine.dexter.records import read_raw

    raw, kinds = Path(args.raw_dir), _kinds(args.only)
    out = Path(args.out) if args.out else raw.with_name(raw.name + "-built")
    if not raw.is_dir() or not read_raw(raw).files:
        cmd_sample(argparse.Namespace(dir=str(raw), seed=args.seed, size=args.size, force=False, json=False))
    else:
        print(f"reading the raw records in {raw}", flush=True)
    build_datasets(str(raw), str(out), args.vocab_size, vocab_from=args.vocab_from)
    results = train_models(out, _runs_dir(args), kinds, args.set, args.steps, jobs=args.jobs)
    if args.json:
        print(json.dumps(results))
    return EXIT_OK if all(r["exit"] == 0 for r in results.values()) else EXIT_FAILED


def cmd_export(args) -> int:
    from engine.dexter.api import TERNARY, DexterAPIError, open_model

    folder = Path(args.model)
    out = Path(args.out) if args.out else folder / TERNARY
    if out.exists() and not args.force:
        raise DexterError(f"{out} exists; pass --force to overwrite it or --out to choose another file.")
    try:
        model = open_model(folder)
        sizes = model.export_ternary(out)
    except DexterAPIError as exc:
        raise DexterError(str(exc)) from None
    float32 = sum(t.numel() * 4 for t in model.model.state_dict().values())
    print(f"wrote {out}: {sizes['file_bytes'] / 2**20:.2f} MB (float32 weights: {float32 / 2**20:.2f} MB; hidden "
          f"linears {sizes['ternary_packed_bytes']:,} bytes packed, the embedding and heads float32)")
    if args.json:
        print(json.dumps({"file": str(out), "float32_bytes": float32, **sizes}))
    return EXIT_OK


def _kinds(only: str | None) -> list[str]:
    if not only:
        return list(KINDS)
    kinds = [k.strip() for k in only.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise DexterError(f"--only {only!r} is not allowed; give a comma-separated list of {', '.join(KINDS)}.")
    return kinds


def _runs_dir(args) -> Path:
    return Path(args.runs_dir or os.environ.get("LAB_RUNS_DIR", runs.DEFAULT_RUNS_DIR))


def add_parser(sub, parser_class, runs_dir_opt) -> None:
    def vocab_from_opt(q):
        q.add_argument("--vocab-from", choices=["records", "examples"], default="records",
                       help="the text the vocabulary learns from: every record's, tool outputs included (default), "
                       "or only what the three models read")

    p = sub.add_parser("dexter", help="the Dexter memory, tool and reasoning models")
    dsub = p.add_subparsers(dest="dexter_cmd", parser_class=parser_class, required=True)
    q = dsub.add_parser("sample", help="write a synthetic raw set in the four formats")
    q.add_argument("dir")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--size", type=int, default=400, help="conversations; the other records scale with it")
    q.add_argument("--force", action="store_true", help="replace the raw records already in DIR")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_sample)

    q = dsub.add_parser("build", help="the memory, tool and reasoning datasets and their shared vocabulary")
    q.add_argument("raw_dir")
    q.add_argument("out")
    q.add_argument("--vocab-size", type=int, default=8000, help="target vocabulary size (the BPE may stop short)")
    vocab_from_opt(q)
    q.add_argument("--json", action="store_true", help="the summary as one JSON object after the printed one")
    q.set_defaults(func=cmd_build)

    def training(q):
        q.add_argument("--only", help="a comma-separated subset of memory, tool, reasoning")
        q.add_argument("--steps", type=int, default=None, help="train.max_steps of every run")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
        q.add_argument("--jobs", type=int, default=1, help="runs at once, 1 to 3, each its own engine process (each "
                       "uses train.threads threads)")
        q.add_argument("--json", action="store_true", help="the results as one JSON object at the end")
        runs_dir_opt(q)

    q = dsub.add_parser("train", help="train the three models as ordinary runs, keeping each one's best checkpoint")
    q.add_argument("out", help="the folder `lab dexter build` wrote")
    training(q)
    q.set_defaults(func=cmd_train)

    q = dsub.add_parser("brain", help="sample (when RAW_DIR holds no records), build and train in one go")
    q.add_argument("raw_dir")
    q.add_argument("--out", help="where the datasets and models go (default: RAW_DIR-built beside it)")
    q.add_argument("--seed", type=int, default=0, help="of the synthetic set, when one is made")
    q.add_argument("--size", type=int, default=400, help="of the synthetic set, when one is made")
    q.add_argument("--vocab-size", type=int, default=8000)
    vocab_from_opt(q)
    training(q)
    q.set_defaults(func=cmd_brain)

    q = dsub.add_parser("export", help="a kept model's ternary export (hidden linears b1.58, 2 bits a weight)")
    q.add_argument("model", help="a folder `lab dexter train` kept (OUT/models/<kind>) or a Dexter run folder")
    q.add_argument("--out", help="the file to write (default: MODEL/model-ternary.safetensors)")
    q.add_argument("--force", action="store_true", help="overwrite the file")
    q.add_argument("--json", action="store_true", help="the sizes as one JSON object after the printed line")
    q.set_defaults(func=cmd_export)
