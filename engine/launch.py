"""`python -m engine.launch RUN_DIR --nproc N [--nnodes M --rdzv-endpoint HOST:PORT] [--resume]`: a run trained
by several processes, through torchrun (`python -m torch.distributed.run`); `lab run --nproc N` becomes this.

The launcher holds the run's lock for the whole launch, starts torchrun with one engine per process
(`-m engine RUN_DIR`), waits for it and makes sure the run's status says how it ended. A rank that dies takes
the run down with it (torchrun's agent stops the others); the lead rank records which rank it was. When the
lead itself was killed nobody else could, so the launcher records the failure, naming the lead.

A machine that joins a run started elsewhere runs `python -m engine.launch --join --nproc N --nnodes M
--rdzv-endpoint HOST:PORT` (no run folder: the lead sends the config). Torch-free: torch is imported by the
engines torchrun starts, not here.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from engine import runlock
from engine.protocol import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, LIVE_STATUSES
from engine.store import RunReader, RunStore


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"engine.launch: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def torchrun_command(run_dir: Path | None, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
                     rdzv_backend: str = "c10d", rdzv_id: str | None = None, resume: bool = False,
                     output: str = "human") -> list[str]:
    """The torchrun command line: one engine per process; one machine gets a private rendezvous."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", rdzv_backend, "--rdzv-endpoint", rdzv_endpoint]
        if rdzv_id is not None:
            cmd += ["--rdzv-id", rdzv_id]
    cmd += ["-m", "engine", str(run_dir) if run_dir is not None else "--join", "--output", output]
    return cmd + (["--resume"] if resume else [])


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m engine.launch", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("--join", action="store_true", help="this machine joins a run started on another")
    ap.add_argument("--nproc", type=int, required=True, help="processes on this machine")
    ap.add_argument("--nnodes", type=int, default=1, help="machines taking part")
    ap.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the rendezvous (several machines)")
    ap.add_argument("--rdzv-backend", default="c10d")
    ap.add_argument("--rdzv-id", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--output", choices=("human", "json", "quiet"), default="human")
    args = ap.parse_args(argv)
    if (args.run_dir is None) != args.join:
        ap.error("give a run folder, or --join on a machine that joins a run started elsewhere")
    cmd = torchrun_command(args.run_dir, args.nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_backend,
                           args.rdzv_id, args.resume, args.output)
    if args.join:
        return EXIT_OK if _wait(cmd, os.environ) == 0 else EXIT_FAILED
    try:
        lock = runlock.hold_run_lock(args.run_dir)  # for the whole launch: no second engine slips in meanwhile
    except runlock.RunLockError as exc:
        print(f"engine.launch: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        before = _run_row(args.run_dir)
        rc = _wait(cmd, {**os.environ, runlock.LAUNCHER_HOLDS_LOCK: "1"})
        return _outcome(args.run_dir, before, rc)
    finally:
        lock.release()


def _wait(cmd: list[str], env) -> int:
    """Run torchrun to its end. SIGTERM is passed on (its agent stops every rank, which checkpoint and stop);
    SIGINT from a terminal reaches torchrun and the ranks directly, so the launcher only waits."""
    proc = subprocess.Popen(cmd, env=env)
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    old_int = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def _run_row(run_dir: Path) -> dict:
    reader = RunReader(run_dir)
    try:
        return reader.run() or {}
    finally:
        reader.close()


def _outcome(run_dir: Path, before: dict, rc: int) -> int:
    """The exit code, from what the run's store says; a lead that died silently gets its failure recorded."""
    row = _run_row(run_dir)
    if row.get("pid") == before.get("pid") and rc != 0:
        return EXIT_BAD_INPUT  # no lead began to train: the ranks refused the run, and the lead said why
    status = row.get("status")
    if status in ("finished", "stopped"):
        return EXIT_OK
    if status in LIVE_STATUSES:
        _record_lost_lead(run_dir, row)
    return EXIT_FAILED


def _record_lost_lead(run_dir: Path, row: dict) -> None:
    reader = RunReader(run_dir)
    try:
        worlds = reader.events(kinds=["world"])
    finally:
        reader.close()
    world = worlds[-1]["data"] if worlds else {}
    lead, size = world.get("lead", 0), world.get("world_size", "?")
    step = row.get("step") or 0
    message = (f"rank {lead} (pid {row.get('pid')}) of {size}, the rank that records the run, ended without a word "
               f"after step {step} (killed?), so the run failed; `lab run --resume {run_dir.name}` continues from the "
               "last checkpoint.")
    store = RunStore(run_dir)
    try:
        store.log_event(step, "alert", {"level": "error", "message": message})
        store.update_run(status="failed", step=step)
        store.flush()
    finally:
        store.close()
    print(f"[error] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
