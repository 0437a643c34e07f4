"""`python -m engine RUN_DIR [--resume] [--output human|json|quiet]`: the engine process.

The console spawns this in its own session, so closing the console never stops training.
Exit codes: 0 finished or stopped, 1 failed or diverged, 2 bad input (a run that already has
a live engine included: this process holds the run's lock for its whole life).

Under torchrun (`python -m torch.distributed.run ... -m engine RUN_DIR`, which `lab run --nproc N` starts through
engine/launch.py) every process is one rank of the run. The lead rank alone reads the run folder, takes the lock
(unless the launcher holds it) and records; the others get the config from it. A machine that joins a run
started elsewhere runs `-m engine --join` with no run folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from engine import config, runlock
from engine.faults import faults_from_env
from engine.protocol import EXIT_BAD_INPUT, EXIT_FAILED
from engine.trainer import Trainer

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence and exit 2, like every other bad input
        print(f"engine: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m engine", description="Run the training engine on a prepared run folder.")
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    ap.add_argument("--output", choices=("human", "json", "quiet"), default="human")
    ap.add_argument("--join", action="store_true",
                    help="under torchrun: ranks on a machine without the run folder; the lead sends the config")
    args = ap.parse_args(argv)
    if (args.run_dir is None) != args.join:
        ap.error("give a run folder, or --join (under torchrun, on a machine that joins a run started elsewhere)")
    from engine.distributed import World

    if World.launched():
        return _run_ranked(args)
    if args.join:
        ap.error("--join is for processes started by torchrun with more than one process")
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


def _run_ranked(args: argparse.Namespace) -> int:
    """One rank of a torchrun launch: join the group, hear the lead's verdict on the run folder, train."""
    from engine.distributed import World

    world = World.join(holds_run=args.run_dir is not None)
    lock = None
    try:
        verdict = None
        if world.is_lead:
            verdict, lock = _open_run(args.run_dir)
        elif world.lead < 0 and world.rank == 0:
            verdict = ("refused", "no rank of this launch was given a run folder; start the run with "
                                  "`lab run CONFIG --nproc N` and let other machines join it.")
        shared = world.from_lead(verdict) if world.lead >= 0 else verdict
        if shared is None or shared[0] == "refused":
            if shared is not None and (world.is_lead or world.lead < 0):
                print(f"engine: {shared[1]}", file=sys.stderr)
            return EXIT_BAD_INPUT
        _, name, toml_text = shared
        try:
            cfg = config.from_dict(tomllib.loads(toml_text), where=f"{name}/config.toml")
            faults_from_env()
            # the lead's folder; on a machine that only joined, a name that is never written to
            run_dir = args.run_dir if args.run_dir is not None else Path(name)
            trainer = Trainer(run_dir, cfg, output=args.output if world.is_lead else "quiet", world=world)
        except config.ConfigError as exc:  # every rank meets the same refusal; the lead says it
            if world.is_lead:
                print(f"engine: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.resume:
            trainer.resume()
        return trainer.run()
    except Exception as exc:
        if world.is_lead:
            raise
        # a follower whose lead or peer went away: one line; the lead (or the launcher) records why
        print(f"engine rank {world.rank}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if lock is not None:
            lock.release()
        world.close()


def _open_run(run_dir: Path):
    """On the lead: ("ok", run name, config text) for a run folder it may train, or ("refused", why), and the
    lock it took (None when the launcher holds it)."""
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        return ("refused", f"{run_dir} is not a run folder (it has no config.toml)."), None
    lock = None
    if not os.environ.get(runlock.LAUNCHER_HOLDS_LOCK):
        try:
            lock = runlock.hold_run_lock(run_dir)
        except runlock.RunLockError as exc:
            return ("refused", str(exc)), None
    return ("ok", run_dir.name, cfg_path.read_text(encoding="utf-8")), lock


if __name__ == "__main__":
    sys.exit(main())
