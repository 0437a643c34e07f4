"""Commands from the control socket, applied at step boundaries: one handler per protocol command.

A handler takes the command's arguments and returns (ok, error, result); whatever it raises becomes a failed
acknowledgement, never a dead run. Every command is logged in the store and acknowledged with the step at
which it took effect.
"""

from __future__ import annotations

import queue
from typing import Any, Callable

from engine import protocol
from engine.probe import probe
from engine.recorder import Recorder

Reply = tuple[bool, "str | None", Any]
Handler = Callable[[dict], Reply]


class CommandDispatch:
    def __init__(self, recorder: Recorder, handlers: dict[str, Handler]):
        assert set(handlers) == set(protocol.COMMANDS), "one handler per protocol command"
        self.recorder, self.handlers = recorder, handlers

    def apply_pending(self, block: bool = False) -> None:
        """Apply every queued command now (a step boundary). With block=True wait briefly for one."""
        server = self.recorder.server
        if server is None:
            return
        while True:
            try:
                rec = server.commands.get(timeout=0.1) if block else server.commands.get_nowait()
            except queue.Empty:
                return
            block = False
            self.apply(rec)

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
        snapshot = run.model.inspect(run.carry, slot)
        run.recorder.event("carry", snapshot, store=False)
        return True, None, snapshot

    return {"pause": pause, "resume": resume, "sleep": sleep, "checkpoint": checkpoint, "stop": stop,
            "inspect": inspect, "status": lambda args: (True, None, run.status_dict()),
            "probe": lambda args: probe(run.ema, run.task.seq_len, run.device, args)}
