"""Commands from the control socket, applied at step boundaries: one handler per protocol command.

A handler takes the command's arguments and returns (ok, error, result); whatever it raises becomes a failed
acknowledgement, never a dead run. Every command is logged in the store and acknowledged with the step at
which it took effect.

Under several processes only the lead rank listens. At every boundary it shares the commands it took (a few
integers, one all-reduce) and every rank runs the same handlers in the same order, so a pause, a sleep, a
checkpoint or a stop takes effect on all ranks at the same step; the lead alone logs and acknowledges.
"""

from __future__ import annotations

import queue
from typing import Any, Callable

import torch

from engine import protocol
from engine.distributed import World
from engine.probe import probe
from engine.recorder import Recorder

Reply = tuple[bool, "str | None", Any]
Handler = Callable[[dict], Reply]

NAMES = tuple(protocol.COMMANDS)  # a shared command is its index here, plus one
MAX_SHARED = 8  # commands shared per step boundary; the rest wait for the next one
LEAD_ONLY = ("status", "probe", "stage")  # they change nothing a rank keeps: the lead answers them alone


class CommandDispatch:
    def __init__(self, recorder: Recorder, handlers: dict[str, Handler], world: World | None = None):
        assert set(handlers) == set(protocol.COMMANDS), "one handler per protocol command"
        self.recorder, self.handlers, self.world = recorder, handlers, world or World()

    def apply_pending(self, block: bool = False, flags: tuple[bool, ...] = ()) -> tuple[bool, ...]:
        """Apply every queued command now (a step boundary). With block=True wait briefly for one.
        `flags`: this process's reasons to stop (a signal, the clock). Returns each one as true when any rank
        has it, so that every rank stops at the same boundary."""
        records = self._take(block)
        if self.world.size == 1:
            for rec in records:
                self.apply(rec)
            return tuple(flags)
        n = len(flags)
        codes = torch.zeros(n + 1 + 2 * MAX_SHARED, dtype=torch.int64)
        codes[:n] = torch.tensor([int(f) for f in flags], dtype=torch.int64)
        if self.world.is_lead:
            codes[n] = len(records)
            for i, rec in enumerate(records):
                slot = rec.command.args.get("slot", 0)
                ok_slot = isinstance(slot, int) and not isinstance(slot, bool) and abs(slot) < 2**62
                codes[n + 1 + 2 * i] = NAMES.index(rec.command.cmd) + 1
                codes[n + 2 + 2 * i] = slot if ok_slot else -1  # the one argument a shared command takes
        shared = self.world.sum(codes)
        for i in range(int(shared[n])):
            if self.world.is_lead:
                self.apply(records[i])
                continue
            name = NAMES[int(shared[n + 1 + 2 * i]) - 1]
            if name not in LEAD_ONLY:
                self.handlers[name]({"slot": int(shared[n + 2 + 2 * i])} if name == "inspect" else {})
        return tuple(bool(v) for v in shared[:n])

    def _take(self, block: bool) -> list:
        """The lead's queued commands (at most MAX_SHARED under several processes); none elsewhere."""
        server, records = self.recorder.server, []
        if server is None:
            return records
        limit = MAX_SHARED if self.world.size > 1 else None
        while limit is None or len(records) < limit:
            try:
                records.append(server.commands.get(timeout=0.1) if block else server.commands.get_nowait())
            except queue.Empty:
                break
            block = False
        return records

    def apply(self, rec) -> None:
        cmd, step = rec.command, self.recorder.step
        try:
            ok, error, result = self.handlers[cmd.cmd](cmd.args)
        except Exception as exc:  # a command must never take the run down with it
            ok, error, result = False, f"{cmd.cmd} failed inside the engine: {exc.__class__.__name__}: {exc}", None
        self.recorder.store.log_command(cmd.id, rec.client, cmd.cmd, cmd.args, step, ok, error, rec.at)
        self.recorder.server.reply(rec.client, protocol.ack(cmd.id, ok, step, error, result))
        self.recorder.event("command", {"id": cmd.id, "cmd": cmd.cmd, "ok": ok, "error": error, "client": rec.client})


def run_handlers(run) -> dict[str, Handler]:
    """The handlers of a run (an engine.trainer.Trainer): what each command does to it."""

    def pause(args: dict) -> Reply:
        if run.paused:
            return False, "the run is already paused.", None
        run.paused = True
        run.set_status("paused")
        return True, None, None

    def resume(args: dict) -> Reply:
        if not run.paused:
            return False, "the run is not paused.", None
        run.paused = False
        run.set_status("running")
        return True, None, None

    def sleep(args: dict) -> Reply:
        stage = run.stages.get("sleep")
        if stage is None:
            return False, "sleep is not available: this run has no sleep/wake phase.", None
        error = stage.refusal(sleeping=run.schedule.current == "sleep", requested=run.schedule.requested == "sleep")
        if error is None:
            run.schedule.request("sleep")  # it starts at the next step boundary
        return error is None, error, None

    def checkpoint(args: dict) -> Reply:
        path = run.save_checkpoint(reason="manual")
        if path is None:
            return False, "the checkpoint could not be written (see alerts).", None
        return True, None, {"path": str(path)}

    def stop(args: dict) -> Reply:
        run.stop_reason = "stopped"  # taken at the next step boundary
        return True, None, None

    def inspect(args: dict) -> Reply:
        slot, B = args.get("slot", 0), run.cfg.train.batch_size
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < B:
            return False, f"slot must be an integer from 0 to {B - 1}.", None
        carry = run.wake.global_carry()  # every rank takes part; the lead looks
        if not run.recorder.enabled:
            return True, None, None
        snapshot = run.model.inspect(carry, slot)
        run.recorder.event("carry", snapshot, store=False)
        return True, None, snapshot

    def stage(args: dict) -> Reply:
        running = run.stages.get(run.schedule.current)
        if not run.cfg.pipeline.enabled or not hasattr(running, "position"):
            return False, "this run has no level pipeline (pipeline.enabled is false): use `status`.", None
        return True, None, running.position()

    return {"pause": pause, "resume": resume, "sleep": sleep, "checkpoint": checkpoint, "stop": stop,
            "inspect": inspect, "status": lambda args: (True, None, run.status_dict()),
            "probe": lambda args: probe(run.ema, run.task, run.device, args), "stage": stage}
