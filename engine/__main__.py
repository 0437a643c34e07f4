"""`python -m engine RUN_DIR [--resume] [--output human|json|quiet]`: the engine process.

The console spawns this in its own session, so closing the console never stops training.
Exit codes: 0 finished or stopped, 1 failed or diverged, 2 bad input (a run that already has
a live engine included: this process holds the run's lock for its whole life).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine import config, runlock
from engine.faults import faults_from_env
from engine.protocol import EXIT_BAD_INPUT
from engine.trainer import Trainer


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence and exit 2, like every other bad input
        print(f"engine: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m engine", description="Run the training engine on a prepared run folder.")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    ap.add_argument("--output", choices=("human", "json", "quiet"), default="human")
    args = ap.parse_args(argv)
    cfg_path = args.run_dir / "config.toml"
    if not cfg_path.is_file():
        print(f"engine: {args.run_dir} is not a run folder (it has no config.toml).", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        lock = runlock.hold_run_lock(args.run_dir)  # before the store or the socket is touched
    except runlock.RunLockError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _run(args, cfg_path)
    finally:
        lock.release()


def _run(args: argparse.Namespace, cfg_path: Path) -> int:
    try:
        cfg = config.load(cfg_path)
        faults_from_env()  # a malformed fault spec is refused here, before the run starts
        trainer = Trainer(args.run_dir, cfg, output=args.output)  # refuses what the device cannot do
    except config.ConfigError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.resume:
        trainer.resume()
    return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
