"""A stand-in engine for console tests and demos: a run folder with a real store, a real Unix
socket that speaks the engine protocol, and a scripted event stream.

Commands are acknowledged with the current step (or held until `release_acks()`), and have
the side effects a console can see: pause and resume change the status, sleep opens a manual
sleep phase, checkpoint emits a checkpoint event, inspect returns a carry snapshot.

Run it alone to look at the console:  python tests/fake_engine.py RUN_DIR [--steps-per-second 20]
then `lab launch RUN_DIR` (or `python -c "from lab.app import launch; launch('RUN_DIR', ...)"`).
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time
from pathlib import Path

from engine import protocol
from engine.store import RunStore

CONFIG_TOML = 'name = "fake"\n\n[train]\nmax_steps = 5000\n'


class SchemaDrift(AssertionError):
    """The fake was about to send a message that engine.protocol's schemas refuse."""


def checked(message: dict) -> dict:
    problems = protocol.check_event(message)
    if problems:
        raise SchemaDrift("; ".join(problems))
    return message


def carry_snapshot(slot: int = 0, positions: int = 16, cycles: int = 3, blocks: int = 2) -> dict:
    """Shaped like the real engine's `inspect` result (a titans-mag model; the keys of
    protocol.EVENT_DATA["carry"]), deterministic in the slot. `cycles` = H_cycles."""
    rnd = random.Random(slot)
    side = int(math.isqrt(positions))
    labels = [2 + (r * side + (r // 2) + c) % side for r in range(side) for c in range(side)]
    inputs = [t if rnd.random() < 0.5 else 1 for t in labels]
    preds = [t if rnd.random() < 0.85 else 2 + (t - 1) % side for t in labels]

    def rows(n, base, step, jitter):
        return [[round(base + c * step + rnd.random() * jitter, 4) for _ in range(positions)] for c in range(n)]

    return {
        "slot": slot, "shapes": {"z_H": [64, positions, 64], "z_L": [64, positions, 64], "inputs": [64, positions]},
        "prefix": 0, "H_cycles": cycles, "L_cycles": 4, "steps": 3, "max_steps": 8, "halted": False,
        "q_halt": -1.25, "next_q_halt": 0.5,
        "inputs": inputs, "labels": labels, "preds": preds, "next_preds": [t if rnd.random() < 0.9 else 1 for t in labels],
        "z_H_norms": rows(cycles + 1, 1.0, 0.3, 0.5), "z_L_norms": rows(cycles + 1, 2.0, 0.1, 1.0),
        "z_H_change": [round(0.5 / (c + 1), 4) for c in range(cycles)],
        "z_L_change": [round(0.8 / (c + 1), 4) for c in range(cycles)],
        "z_H_position_change": rows(cycles, 0.5, -0.1, 0.2), "z_L_position_change": rows(cycles, 0.8, -0.2, 0.2),
        "memory_change": [[round((0.3 + 0.1 * b) / (c + 1), 4) for b in range(blocks)] for c in range(cycles)],
        "memory_surprise": [[round(0.1 + 0.05 * c + 0.02 * b, 4) for b in range(blocks)] for c in range(cycles)],
    }


def telemetry(gpu: bool, vram_fraction: float = 0.4) -> dict:
    out = {"rss_mb": 812.0, "cpu_percent": 97.0, "cpu_count": 4, "sys_ram_used_mb": 6144.0, "sys_ram_total_mb": 16384.0,
           "gpu_name": None, "vram_used_mb": None, "vram_total_mb": None, "torch_alloc_mb": None, "torch_peak_mb": None}
    if gpu:
        out.update(gpu_name="NVIDIA GeForce RTX 3080 Ti", vram_total_mb=12288.0, vram_used_mb=12288.0 * vram_fraction,
                   torch_alloc_mb=2100.0, torch_peak_mb=3350.0)
    return out


def consolidation(sleep: int, step: int) -> dict:
    """One sleep's figures, drifting a little with the step."""
    return {"sleep": sleep, "mode": "replay", "memory_change": round(-0.02 + step / 1e5, 5),
            "weights_change": round(0.4 + step / 1e4, 5), "importance_change": -0.02, "consolidation_loss": 0.3,
            "retention_before": 0.7, "retention_after": round(0.78 + step / 1e5, 5), "pruned": 3, "buffer": 509,
            "efficiency": round((0.08 + step / 1e5) / 20, 6), "steps": 20, "eligible": 212}


def curriculum_change(step: int, steps: int) -> dict:
    """The queue after a graded batch, as the engine's CurriculumFeed reports it."""
    level, remaining = 1 + step * 2 // max(1, steps), 200 - step * 150 // max(1, steps)
    return {"level": level, "levels": 3, "epoch": 1, "size": 200, "remaining": remaining, "done": False,
            "by_streak": [remaining // 2, remaining - remaining // 2, 0], "by_hint": {"0": remaining - 3, "1": 3},
            "changes": [], "mastered": step % 4,
            "item": {"id": f"L{level} batch of 8", "pass": step % 5, "fail": step % 3, "hint": step % 2}}


PIPELINE_STAGES = ["curriculum", "bake", "selfmodel", "dream"]


def pipeline_position(step: int, steps_per_level: int = 400) -> dict:
    """Where a level pipeline of 10 levels stands at `step`: each level's stages take equal shares of its steps."""
    level, within = 1 + step // steps_per_level, step % steps_per_level
    share = steps_per_level // len(PIPELINE_STAGES)
    index = min(len(PIPELINE_STAGES) - 1, within // share)
    return {"level": level, "levels": 10, "stage": PIPELINE_STAGES[index], "stages": list(PIPELINE_STAGES),
            "progress": round((within - index * share) / share, 4), "steps": within - index * share,
            "questions": 300, "questions_left": max(5, 300 - within * 3 // 4)}


def metrics_at(step: int) -> dict:
    """A plausible, deterministic training curve."""
    noise = math.sin(step * 12.9898) * 0.03
    return {"loss": 2.2 * math.exp(-step / 400) + 0.05 + noise, "exact_acc": 1 - math.exp(-step / 600),
            "cell_acc": 1 - 0.7 * math.exp(-step / 300), "lr": 2e-3 * min(1.0, step / 50),
            # the neural memory's figures: surprise fades as the model learns, the memory fills
            "memory_surprise_rate": 0.3 + 0.6 * math.exp(-step / 500), "memory_update_rate": 0.08,
            "memory_utilisation": 0.4 * (1 - math.exp(-step / 200))}


class FakeEngine:
    def __init__(self, run_dir: str | Path, *, run_id: str = "fake-run", step: int = 0, status: str = "running",
                 gpu: bool = True, hold_acks: bool = False, clock: float | None = None,
                 config_toml: str = CONFIG_TOML, pipeline: bool = False):
        self.run_dir = Path(run_dir)
        self.config_toml = config_toml
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id, self.step, self.status, self.gpu = run_id, step, status, gpu
        self.clock = clock  # a fixed event time (for stable screenshots); None: real time
        self.hold_acks = hold_acks
        self.pipeline = pipeline  # a run with a level pipeline: "pipeline" events, and `stage` answered
        self.commands: list[protocol.Command] = []
        self._held: list[tuple[socket.socket, protocol.Command]] = []
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.socket_path = self.run_dir / protocol.SOCKET_NAME

    # ---- the store ------------------------------------------------------------------------------

    def write_history(self, steps: int, every: int = 1, phases: bool = True, curriculum: bool = True) -> None:
        """A run's past in run.db: metrics for `steps` steps, a few events, telemetry as sys/ metrics."""
        (self.run_dir / "config.toml").write_text(self.config_toml)
        store = RunStore(self.run_dir, flush_seconds=0.05)
        store.create_run(self.run_id, "fake", self.config_toml)
        t0 = self.clock or time.time() - steps * 0.05

        def log_event(step: int, kind: str, data: dict, at: float) -> None:
            checked(protocol.event(kind, step, at, data))
            store.log_event(step, kind, data, at=at)

        for s in range(every, steps + 1, every):
            store.log_metrics(s, metrics_at(s), at=t0 + s * 0.05)
            if s % 5_000 < every:  # let the writer catch up: a history written this fast would pass the store's bound
                store.flush()
        tele = {k: v for k, v in telemetry(self.gpu).items() if isinstance(v, (int, float))}  # as the engine stores it
        store.log_metrics(steps, {f"sys/{k}": v for k, v in tele.items()}, at=t0 + steps * 0.05)
        log_event(0, "status", {"status": "running"}, at=t0)
        if phases:
            log_event(0, "phase", {"phase": "wake", "manual": False}, at=t0)
            for n, s in enumerate(range(steps // 3, steps, steps // 3 or 1), start=1):
                log_event(s, "phase", {"phase": "sleep", "manual": False}, at=t0 + s * 0.05)
                log_event(s + 20, "consolidation", consolidation(n, s), at=t0 + s * 0.05 + 1)
                log_event(s + 20, "phase", {"phase": "wake", "manual": False}, at=t0 + s * 0.05 + 1)
        if curriculum:
            for s in range(0, steps, max(1, steps // 20)):
                log_event(s, "curriculum", curriculum_change(s, steps), at=t0 + s * 0.05)
        if self.pipeline:
            for s in range(20, steps + 1, 20):
                log_event(s, "pipeline", pipeline_position(s), at=t0 + s * 0.05)
        log_event(steps // 2, "checkpoint", {"path": str(self.run_dir / "checkpoints" / f"step-{steps // 2:08d}"),
                                            "step": steps // 2, "reason": "periodic"}, at=t0 + steps * 0.025)
        store.update_run(status=self.status, step=steps, pid=os.getpid())
        store.flush()
        store.close()
        self.step = max(self.step, steps)

    # ---- the socket -----------------------------------------------------------------------------

    def start(self) -> "FakeEngine":
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, fd = protocol.socket_address(str(self.socket_path))
        srv.bind(address)
        if fd is not None:
            os.close(fd)
        os.chmod(self.socket_path, 0o600)
        srv.listen(8)
        srv.settimeout(0.1)
        self._server = srv
        self._spawn(self._accept)
        return self

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(None)
            # hello and registration under one lock, as the engine's server does: an event emitted once the
            # client has its hello must reach it (it was lost in the gap between the two on a loaded machine)
            with self._lock:
                self._send(conn, protocol.hello(self.run_id, self.step, self.status))
                self._clients.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            conn.settimeout(0.1)
        except OSError:  # closed by stop() already
            return
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    cmd = protocol.decode_command(line)
                except protocol.ProtocolError as exc:
                    self._send(conn, protocol.ack(None, False, None, str(exc)))
                    continue
                self.commands.append(cmd)
                if self.hold_acks:
                    self._held.append((conn, cmd))
                else:
                    self._apply(conn, cmd)
        with self._lock:
            if conn in self._clients:
                self._clients.remove(conn)

    def release_acks(self) -> None:
        held, self._held = self._held, []
        self.hold_acks = False
        for conn, cmd in held:
            self._apply(conn, cmd)

    def _apply(self, conn: socket.socket, cmd: protocol.Command) -> None:
        ok, error, result = True, None, None
        if cmd.cmd == "pause":
            self.set_status("paused")
        elif cmd.cmd == "resume":
            self.set_status("running")
        elif cmd.cmd == "sleep":
            self.emit("phase", {"phase": "sleep", "manual": True})
        elif cmd.cmd == "checkpoint":
            path = str(self.run_dir / "checkpoints" / f"step-{self.step:08d}")
            result = {"path": path}
            self.emit("checkpoint", {"path": path, "step": self.step, "reason": "manual"})
        elif cmd.cmd == "stop":
            self.set_status("stopped")
        elif cmd.cmd == "inspect":
            result = carry_snapshot(int(cmd.args.get("slot", 0)))
            self.emit("carry", result)  # as the engine does: other consoles see the snapshot too
        elif cmd.cmd == "probe":
            text = cmd.args.get("input")
            if text and " " in text:  # text for a text model: the answer and how far the carry moved
                result = {"answer": "<MEM_FACT> Harbor is a website project", "steps": 3, "q_halt": 1.5,
                          "carried": True, "z_H_change": 4.25, "z_L_change": 6.5}
            elif text:
                result = {"answer": "1234341221434321", "steps": 2}
            else:
                result = {"reset": True}
        elif cmd.cmd == "status":
            result = {"status": self.status, "step": self.step}
        elif cmd.cmd == "stage" and self.pipeline:
            result = checked(protocol.event("pipeline", self.step, 0.0, pipeline_position(self.step)))["data"]
        elif cmd.cmd == "stage":
            ok, error = False, "this run has no level pipeline (pipeline.enabled is false): use `status`."
        self._send(conn, protocol.ack(cmd.id, ok, self.step, error, result))
        self.emit("command", {"id": cmd.id, "cmd": cmd.cmd, "ok": ok, "error": error, "client": "fake-client"})

    # ---- events ---------------------------------------------------------------------------------

    def _send(self, conn: socket.socket, message: dict) -> None:
        try:
            conn.sendall(protocol.encode(message))
        except OSError:
            pass

    def emit(self, kind: str, data, step: int | None = None) -> None:
        """Send one event to every client; raises SchemaDrift when the protocol's schema refuses it."""
        msg = checked(protocol.event(kind, self.step if step is None else step, self.clock or time.time(), data))
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            self._send(c, msg)

    def set_status(self, status: str) -> None:
        self.status = status
        self.emit("status", {"status": status})

    def advance(self, steps: int = 1, telemetry_every: int = 10, vram_fraction: float = 0.4) -> None:
        """Train for `steps` fake steps: one metrics event each, telemetry now and then."""
        for _ in range(steps):
            self.step += 1
            self.emit("metrics", metrics_at(self.step))
            if self.pipeline and self.step % 20 == 0:
                self.emit("pipeline", pipeline_position(self.step))
            if self.step % telemetry_every == 0:
                self.emit("telemetry", telemetry(self.gpu, vram_fraction))

    def run_live(self, steps_per_second: float, stop_at: int | None = None) -> None:
        """Advance in a background thread while not paused (for demos and the console benchmark)."""
        def loop():
            self.emit("world", {"world_size": 1, "lead": 0, "ranks": [{"rank": 0, "host": "fake", "pid": os.getpid()}],
                                "device": "cpu", "dtype": "float32"})
            while not self._stop.is_set() and (stop_at is None or self.step < stop_at):
                if self.status == "running":
                    self.advance(1)
                    if self.step % 500 == 0:
                        self.emit("phase", {"phase": "sleep", "manual": False})
                    if self.step % 500 == 50:
                        self.emit("consolidation", consolidation(self.step // 500, self.step))
                        self.emit("phase", {"phase": "wake", "manual": False})
                    if self.step % 25 == 0:
                        self.emit("curriculum", curriculum_change(self.step % 1000, 1000))
                time.sleep(1.0 / steps_per_second)
        self._spawn(loop)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        if self._server is not None:
            self._server.close()
        for t in self._threads:
            t.join(timeout=2)
        if self.socket_path.exists():
            self.socket_path.unlink()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--steps-per-second", type=float, default=20.0)
    ap.add_argument("--history", type=int, default=1500)
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--pipeline", action="store_true", help="a run with a level pipeline")
    args = ap.parse_args()
    fake = FakeEngine(args.run_dir, gpu=not args.no_gpu, pipeline=args.pipeline)
    fake.write_history(args.history)
    fake.start()
    fake.run_live(args.steps_per_second)
    print(f"fake engine on {fake.socket_path}; ctrl+c stops it", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        fake.stop()
