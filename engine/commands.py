"""Commands from the control socket, applied at step boundaries: one handler per protocol command.

A handler takes the command's arguments and returns (ok, error, result); whatever it raises becomes a failed
acknowledgement, never a dead run. Every command is logged in the store and acknowledged with the step at
which it took effect.
"""

from __future__ import annotations

import queue
from typing import Any, Callable

from engine import protocol
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
