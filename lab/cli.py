"""`lab`: the command line.

    lab launch [CONFIG | RUN]          the console (starts or attaches to a run)
    lab run CONFIG --headless          the same engine without the console (CI, long jobs)
    lab run CONFIG --headless --nproc N   N data-parallel processes (torchrun); --nnodes/--rdzv-endpoint for
                                       several machines, which join with `lab run --join ...`
    lab run --resume RUN               continue a run from its newest good checkpoint
    lab runs                           list runs
    lab show RUN                       one run's status, figures and checkpoints
    lab ctl RUN COMMAND                pause | resume | sleep | checkpoint | stop | inspect | status | probe TEXT | stage
    lab eval RUN --puzzles FILE        exact-match accuracy on a puzzle file
    lab eval RUN --task NAME --n 1000  held-out exact accuracy per difficulty (and curriculum level)
    lab config show CONFIG             the resolved config and the parameter count
    lab tasks list | show NAME --n 5   the task generators and their samples
    lab export RUN [--ternary]         the run's weights; BitNet runs packed 2 bits per weight
    lab dexter sample|build|train|brain  the Dexter memory, tool and reasoning models (lab/dexter.py)

Bad input never shows a traceback: one sentence on stderr and exit code 2.
Commands that need the model (eval, config show) import the engine lazily, so the
console's own modules stay free of torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from engine import config, protocol
from engine.protocol import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from engine.faults import faults_from_env
from engine.store import RunReader
from lab import dexter, runs



class UserError(Exception):
    """A mistake the user can fix; printed as one sentence, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(EXIT_BAD_INPUT, f"lab: {message} (see `{self.prog} --help`).\n")


def _runs_dir(args) -> Path:
    return Path(args.runs_dir or os.environ.get("LAB_RUNS_DIR", runs.DEFAULT_RUNS_DIR))


def _run_dir(args) -> Path:
    try:
        return runs.resolve_run(args.run, _runs_dir(args))
    except runs.RunNotFound as exc:
        raise UserError(str(exc)) from None


# ---- commands ---------------------------------------------------------------------------------


def cmd_run(args) -> int:
    processes = _processes(args)
    if args.join:
        if args.config or args.resume or args.set:
            raise UserError("--join takes no config, run or --set: the run's first machine sends its config.")
        if processes.nnodes < 2 or not processes.rdzv_endpoint:
            raise UserError("--join needs --nnodes (2 or more) and --rdzv-endpoint HOST:PORT of the run's first "
                            "machine.")
        return _exec_engine(None, resume=False, output=args.output, processes=processes)
    if args.resume:
        if args.config or args.set:
            raise UserError("--resume takes a run, not a config or --set overrides.")
        run_dir = runs.resolve_run(args.resume, _runs_dir(args))
        config.check_processes(config.load(run_dir / "config.toml"), processes.total)
        return _exec_engine(run_dir, resume=True, output=args.output, processes=processes)
    if not args.config:
        raise UserError("lab run needs a config file (e.g. configs/quickstart.toml) or --resume RUN.")
    faults_from_env()  # a malformed TRM_LAB_FAULTS is refused before a run folder exists
    config.check_processes(config.load(args.config, args.set), processes.total)
    if not args.headless:
        from lab.app import launch

        return launch(args.config, _runs_dir(args), args.set, processes=processes)
    run_dir = runs.create_run(args.config, args.set, _runs_dir(args))
    if args.output == "human":
        print(f"run {run_dir.name} in {run_dir}", flush=True)
    return _exec_engine(run_dir, resume=False, output=args.output, processes=processes)


def _processes(args) -> runs.Processes:
    """--nproc, --nnodes and the rendezvous, checked: how many processes train the run."""
    if args.nproc < 1 or args.nnodes < 1:
        raise UserError(f"--nproc and --nnodes count processes and machines: 1 or more, not "
                        f"{min(args.nproc, args.nnodes)}.")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise UserError("--nnodes 2 or more needs --rdzv-endpoint HOST:PORT, where the machines meet "
                        "(the first machine's address and a free port).")
    return runs.Processes(args.nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_backend, args.rdzv_id)


def _exec_engine(run_dir: Path | None, resume: bool, output: str,
                 processes: runs.Processes = runs.ONE_PROCESS) -> int:
    """Become the engine (or, for several processes, its launcher): signals, exit codes and the terminal belong
    to it directly."""
    cmd = runs.engine_command(run_dir, resume=resume, output=output, processes=processes)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return EXIT_FAILED  # not reached


def cmd_launch(args) -> int:
    from lab.app import launch

    return launch(args.target, _runs_dir(args), args.set, processes=_processes(args))


def cmd_runs(args) -> int:
    rows = [runs.run_summary(d) for d in runs.list_run_dirs(_runs_dir(args))]
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows:
        print(f"no runs in {_runs_dir(args)}")
        return EXIT_OK
    print(f"{'RUN':<44} {'STATUS':<10} {'STEP':>8}  UPDATED")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["updated"])) if r.get("updated") else "-"
        print(f"{r['id']:<44} {r['status']:<10} {r['step'] if r['step'] is not None else '-':>8}  {when}")
    return EXIT_OK


def cmd_show(args) -> int:
    run_dir = _run_dir(args)
    summary = runs.run_summary(run_dir)
    reader = RunReader(run_dir)
    latest = reader.latest()
    events = reader.events(kinds=["alert", "checkpoint"])[-10:]
    reader.close()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
    if args.json:
        print(json.dumps({"run": summary, "latest": latest, "checkpoints": ckpts, "events": events}, default=str))
        return EXIT_OK
    print(f"run      {summary['id']}\nstatus   {summary['status']}\nstep     {summary['step']}\nfolder   {run_dir}")
    print("latest:")
    for k, (step, v) in sorted(latest.items()):
        if not k.startswith("sys/"):
            print(f"  {k:<20} {v if v is None else f'{v:.6g}'}  (step {step})")
    print("checkpoints: " + (", ".join(ckpts) or "none"))
    for e in events:
        print(f"  [{e['kind']}] step {e['step']}: {json.dumps(e['data'])}")
    return EXIT_OK


def cmd_ctl(args) -> int:
    run_dir = _run_dir(args)
    cmd_args: dict = {}
    if args.command == "inspect":
        cmd_args["slot"] = args.slot
    if args.text is not None and args.command != "probe":
        raise UserError(f"lab ctl {args.command} takes no text; only probe does (lab ctl RUN probe TEXT).")
    if args.command == "probe":
        if args.text is None and not args.reset:
            raise UserError("lab ctl RUN probe needs TEXT (an input for the run's model) or --reset.")
        cmd_args = {"input": args.text, "reset": args.reset}
    try:
        reply = send_command(run_dir, args.command, cmd_args, timeout=args.timeout)
    except ConnectionError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(reply))
    elif reply["ok"] and args.command == "stage":
        print(stage_line(reply["result"], reply["step"]))
    elif reply["ok"]:
        print(f"{args.command}: ok at step {reply['step']}")
        if reply.get("result") is not None:
            print(json.dumps(reply["result"], indent=1))
    else:
        print(f"{args.command}: refused at step {reply['step']}: {reply['error']}")
    if not reply["ok"] and args.command == "probe":  # what was typed was wrong: the engine's one sentence
        print(f"lab: {reply['error']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK if reply["ok"] else EXIT_FAILED


def stage_line(position: dict, step: int) -> str:
    """Where the level pipeline stands, in one line (`lab ctl RUN stage`)."""
    stages, stage = position["stages"], position["stage"]
    which = f" ({stages.index(stage) + 1} of {len(stages)}: {' -> '.join(stages)})" if stage in stages else ""
    return (f"level {position['level']} of {position['levels']}, stage {stage}{which}, {position['progress']:.0%} "
            f"done ({position['steps']:,} steps), {position['questions_left']:,} of {position['questions']:,} "
            f"questions left; run step {step:,}")


def send_command(run_dir: Path, cmd: str, cmd_args: dict, timeout: float = 30.0) -> dict:
    """Send one command over the run's socket and wait for its acknowledgement."""
    from lab.client import ConnectionLost, EngineClient, EngineUnreachable

    client = EngineClient(run_dir, hello_timeout=timeout)
    try:
        client.connect()
        pending = client.send(cmd, **cmd_args)
        deadline = time.monotonic() + timeout
        while pending.state == "pending" and time.monotonic() < deadline:
            client.read(timeout=min(0.25, max(0.01, deadline - time.monotonic())))
    except (EngineUnreachable, ConnectionLost) as exc:
        raise ConnectionError(f"run {run_dir.name}: {exc}") from None
    finally:
        client.close()
    if pending.state == "pending":
        raise ConnectionError(f"no acknowledgement for {cmd} from run {run_dir.name} within {timeout:g} s.")
    if pending.state == "lost":
        raise ConnectionError(f"run {run_dir.name}'s engine went away before acknowledging {cmd}.")
    return protocol.ack(pending.id, bool(pending.ok), pending.step, pending.error, pending.result)


def cmd_eval(args) -> int:
    from engine.evaluate import EvalError, evaluate_run

    run_dir = _run_dir(args)
    if (args.puzzles is None) == (args.task is None):
        raise UserError("lab eval takes exactly one of --puzzles FILE or --task NAME.")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be a positive number of puzzles, not {args.n}.")
    if args.task is not None:
        return _eval_task(run_dir, args)
    try:
        result = evaluate_run(run_dir, puzzles=args.puzzles, limit=args.n)
    except EvalError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
    else:
        print(f"exact {result['exact']:.4f}  ({result['n_exact']}/{result['n']} puzzles)  cell {result['cell']:.4f}  "
              f"checkpoint step {result['step']}")
    return EXIT_OK


def _eval_task(run_dir: Path, args) -> int:
    from engine.evaluate import EvalError, evaluate_task

    try:
        result = evaluate_task(run_dir, args.task, n=args.n or 1000, difficulty=args.difficulty)
    except EvalError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    print(f"{result['task']}: exact {result['exact']:.4f} over {len(result['by_difficulty'])} x {result['n']} "
          f"held-out samples, checkpoint step {result['step']}")
    for d, acc in result["by_difficulty"].items():
        print(f"  difficulty {d}  exact {acc:.4f}")
    for level, acc in result.get("by_level", {}).items():
        print(f"  level {level:>2}     exact {acc:.4f}")
    return EXIT_OK


def cmd_export(args) -> int:
    from engine.evaluate import EvalError, load_run_model

    run_dir = _run_dir(args)
    try:
        cfg, task, model, step = load_run_model(run_dir)
    except EvalError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out) if args.out else run_dir / (f"export-step-{step:08d}" + ("-ternary" if args.ternary else "")
                                                      + ".safetensors")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it or --out to choose another file.")
    tmp = out.with_name(out.name + ".tmp")
    if args.ternary:
        from engine.model.bitlinear import TernaryFileError, export_ternary

        try:
            sizes = export_ternary(model, tmp)
        except TernaryFileError as exc:
            raise UserError(f"run {run_dir.name}: {exc}") from None
        note = f"ternary weights {sizes['ternary_packed_bytes']:,} bytes packed (float32: {sizes['ternary_float32_bytes']:,})"
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        note = "EMA weights, float32"
    os.replace(tmp, out)  # whole file or none
    print(f"wrote {out} (step {step}; {note})")
    return EXIT_OK


def cmd_tasks_list(args) -> int:
    from engine.tasks.registry import describe_tasks

    rows = describe_tasks()
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    print(f"{'TASK':<16} {'VOCAB':>5} {'LEN':>5}  DESCRIPTION")
    for r in rows:
        print(f"{r['name']:<16} {r['vocab_size'] or '-':>5} {r['seq_len'] or '-':>5}  {r['description']}")
    return EXIT_OK


def cmd_tasks_show(args) -> int:
    from engine.tasks.registry import show_samples

    print(show_samples(args.name, n=args.n, split=args.split, difficulty=args.difficulty, seed=args.seed))
    return EXIT_OK


def cmd_config_show(args) -> int:
    from engine.describe import describe

    cfg = config.load(args.config, args.set)
    d = describe(cfg)
    if args.json:
        print(json.dumps(d))
        return EXIT_OK
    print(d["toml"].rstrip())
    print(f"\n# task: {d['task']['name']}  vocab {d['task']['vocab_size']}  positions {d['task']['seq_len']}")
    parts = ", ".join(f"{name} {n:,}" for name, n in d["parameters_by_part"].items() if n)
    print(f"# parameters: {d['parameters']:,} ({parts})")
    return EXIT_OK


# ---- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="lab", description="trm-lab: train and study tiny recursive-reasoning models.")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser, required=True)

    def runs_dir_opt(p):
        p.add_argument("--runs-dir", help="where runs live (default: runs/, or $LAB_RUNS_DIR)")

    def processes_opt(p):
        g = p.add_argument_group("several processes (torchrun; the global batch is train.batch_size)")
        g.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine")
        g.add_argument("--nnodes", type=int, default=1, help="machines taking part (each runs lab with --nproc)")
        g.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT", help="where the machines meet")
        g.add_argument("--rdzv-backend", default="c10d", help="torchrun's rendezvous backend (default c10d)")
        g.add_argument("--rdzv-id", default=None, help="torchrun's rendezvous id, the same on every machine")

    p = sub.add_parser("launch", help="open the console")
    p.add_argument("target", nargs="?", help="a config to start or a run to attach to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    runs_dir_opt(p)
    processes_opt(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("run", help="start a run (headless with --headless) or resume one")
    p.add_argument("config", nargs="?")
    p.add_argument("--headless", action="store_true")
    p.add_argument("--resume", metavar="RUN")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. model.d_model=128")
    p.add_argument("--json", dest="output", action="store_const", const="json", default="human",
                   help="JSON lines instead of human lines")
    p.add_argument("--join", action="store_true",
                   help="this machine joins a run started on another (with --nproc, --nnodes, --rdzv-endpoint)")
    runs_dir_opt(p)
    processes_opt(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--json", action="store_true")
    runs_dir_opt(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="show one run")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    runs_dir_opt(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("ctl", help="send a command to a live run")
    p.add_argument("run")
    p.add_argument("command", choices=["pause", "resume", "sleep", "checkpoint", "stop", "inspect", "status",
                                        "probe",
                                        "stage"])
    p.add_argument("text", nargs="?", help="probe: an input for the run's model (a question, a task, a puzzle line)")
    p.add_argument("--reset", action="store_true", help="probe: reset the carry first")
    p.add_argument("--slot", type=int, default=0, help="slot for inspect")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true")
    runs_dir_opt(p)
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("eval", help="evaluate a run's newest checkpoint")
    p.add_argument("run")
    p.add_argument("--puzzles", default=None, help="one puzzle per line; `.` or 0 for blanks; optional ,solution")
    p.add_argument("--task", default=None, help="a generated task: accuracy on its held-out split per difficulty")
    p.add_argument("--difficulty", type=int, default=None, help="with --task: only this difficulty (1 to 3)")
    p.add_argument("--n", type=int, default=None, help="evaluate only the first N puzzles (--task: N per difficulty, 1000)")
    p.add_argument("--json", action="store_true")
    runs_dir_opt(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a run's weights (EMA) to a safetensors file")
    p.add_argument("run")
    p.add_argument("--ternary", action="store_true", help="BitNet runs: ternary weights packed 2 bits each")
    p.add_argument("--out", help="output file (default: in the run folder)")
    p.add_argument("--force", action="store_true")
    runs_dir_opt(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("tasks", help="list tasks and show samples")
    tsub = p.add_subparsers(dest="tasks_cmd", parser_class=_Parser, required=True)
    q = tsub.add_parser("list", help="every task with its vocabulary and length")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_tasks_list)
    q = tsub.add_parser("show", help="print samples as a person reads them")
    q.add_argument("name")
    q.add_argument("--n", type=int, default=5)
    q.add_argument("--split", default="train", help="train or test")
    q.add_argument("--difficulty", type=int, default=None)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_tasks_show)

    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_cmd", parser_class=_Parser, required=True)
    q = csub.add_parser("show", help="print the resolved config and the parameter count")
    q.add_argument("config")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_config_show)

    dexter.add_parser(sub, _Parser, runs_dir_opt)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, config.ConfigError, runs.RunNotFound, dexter.DexterError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
