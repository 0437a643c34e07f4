"""`lab dexter ...`: the Dexter models from raw records to trained runs.

    lab dexter sample DIR --seed S --size N     a synthetic raw set in the four formats
    lab dexter build RAW_DIR OUT                the memory, tool and reasoning datasets and their vocabulary
    lab dexter train OUT                        the three models as ordinary runs; each one's best checkpoint
                                                by held-out score is copied to OUT/models/<kind>/
    lab dexter brain RAW_DIR                    sample (when RAW_DIR holds no records), build and train

The engine's Dexter modules are imported inside the commands, like every command that needs more than the
console's own contract with the engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from engine.protocol import EXIT_BAD_INPUT, EXIT_OK
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
    summary = build_datasets(args.raw_dir, args.out, args.vocab_size)
    if args.json:
        print(json.dumps(summary))
    return EXIT_OK


def build_datasets(raw_dir: str, out: str, vocab_size: int, quiet: bool = False) -> dict:
    """Build and print the summary (stdout) and each record that could not be used (stderr)."""
    from engine.dexter.dataset import BuildError, build, format_summary

    if not 300 <= vocab_size <= 65536:
        raise DexterError(f"--vocab-size {vocab_size} is out of range; allowed is 300 to 65536.")
    try:
        summary = build(raw_dir, out, vocab_size)
    except BuildError as exc:
        raise DexterError(str(exc)) from None
    for problem in summary["problems"]:
        print(f"lab: {problem}", file=sys.stderr)
    if not quiet:
        print(format_summary(summary, out), flush=True)
    return summary


def add_parser(sub, parser_class, runs_dir_opt) -> None:
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
    q.add_argument("--json", action="store_true", help="the summary as one JSON object after the printed one")
    q.set_defaults(func=cmd_build)
