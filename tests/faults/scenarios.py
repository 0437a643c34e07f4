"""The fault-injection suite: every way a run can be hurt, one table row per case.

    .venv/bin/python bench/faults.py [--quick] [--cases 1,5,6] [--seed 0]

 1 kill -9 of the engine at random steps, then `lab run --resume`     7 the console killed with kill -9
 2 SIGTERM in the middle of a step                                    8 two consoles and `lab ctl` at once
 3 the newest checkpoint truncated or a byte flipped                  9 garbage on the control socket
 4 NaN injected into the loss (rollback; diverged after 3)           10 configs with bad values everywhere
 5 out of memory at a step, and VRAM pressure (injected reading)     11 a checkpoint holding a code-running pickle
 6 disk full (ENOSPC) while checkpointing                            12 sandbox programs that loop, allocate, flood
14 one client: a line nested 5,000 deep, then a flood never read    13 the store polled every 250 ms during a run
15 a second engine started on a live run                             17 the run store cannot write for a while
16 a checkpoint that verifies but does not fit the model             18 checkpoints/ on a real 2 MB disk that fills
19 kill -9 in the middle of a checkpoint save (half written; mid-swap)
20 kill -9 of rank 1 of a 2-process run; resumed at 1 (and 1 -> 2)
21 kill -9 of the lead rank of a 2-process run; resumed at 2

Each row says what was done, what was expected, what happened, PASS or FAIL; the last line is
a JSON object {"passed", "failed", "total", "seconds"}. `--quick` runs every case once, with 3
kill points for case 1 instead of 20. Faults are injected through the engine's own hooks:
the `TRM_LAB_FAULTS` environment variable (engine/trainer.py), `Trainer.vram_fraction` for a
VRAM reading (no GPU needed), and plain signals, files and sockets for the rest.
The tests in tests/faults/ call the case functions here; bench/faults.py runs them as a table.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import pty
import random
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import checkpoint, config, protocol  # noqa: E402
from engine.store import RunReader  # noqa: E402
from engine.faults import FAULTS_ENV, parse_faults  # noqa: E402
from engine.trainer import Trainer  # noqa: E402
from tests.helpers import env, fill_disk, kill9, lab, tiny_config, wait_for  # noqa: E402


@dataclass
class Outcome:
    done: str  # what was done to the run
    expected: str
    happened: str
    ok: bool


# ---- driving runs --------------------------------------------------------------------------------


def in_process_trainer(work: Path, name: str, max_steps: int = 20, ckpt_every: int = 5,
                       overrides: list[str] | None = None, faults: str = "") -> Trainer:
    """A real Trainer on the tiny config, in this process (quiet), with injected faults."""
    folder = work / name
    folder.mkdir(parents=True)
    cfg = config.load(tiny_config(folder, max_steps=max_steps, ckpt_every=ckpt_every), overrides)
    (folder / "run").mkdir()
    tr = Trainer(folder / "run", cfg, output="quiet")
    tr.faults.pending = parse_faults(faults)
    return tr


def resumed_trainer(first: Trainer, faults: str = "") -> Trainer:
    """A new Trainer on `first`'s run folder, resumed from its newest good checkpoint."""
    tr = Trainer(first.run_dir, first.cfg, output="quiet")
    tr.faults.pending = parse_faults(faults)
    tr.resume()
    return tr


def alerts(run_dir: Path) -> list[dict]:
    r = RunReader(run_dir)
    try:
        return [e["data"] for e in r.events(kinds=["alert"])]
    finally:
        r.close()


def live_steps(run_dir: Path, key: str = "loss") -> list[int]:
    r = RunReader(run_dir)
    try:
        return [row[1] for row in r.metric(key)]
    finally:
        r.close()


def live_step(run_dir: Path) -> int:
    """The newest live (not superseded) training step in the store; -1 before there is one."""
    db = run_dir / "run.db"
    if not db.exists():
        return -1
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT max(step) FROM metrics WHERE key = 'loss' AND superseded = 0").fetchone()
        finally:
            conn.close()
        return -1 if row[0] is None else row[0]
    except sqlite3.Error:
        return -1


def engine_pid(run_dir: Path) -> int | None:
    try:
        r = RunReader(run_dir)
    except FileNotFoundError:
        return None
    try:
        row = r.run()
        return None if row is None else row.get("pid")
    except sqlite3.Error:
        return None
    finally:
        r.close()


def lab_process(*args: str, faults: str = "") -> subprocess.Popen:
    e = env()
    if faults:
        e[FAULTS_ENV] = faults
    return subprocess.Popen([sys.executable, "-m", "lab.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=e, cwd=ROOT)


def new_run_dir(runs_dir: Path, timeout: float = 60) -> Path:
    return wait_for(lambda: next((d for d in runs_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), None)
                    if runs_dir.exists() else None, timeout=timeout)


@contextlib.contextmanager
def live_engine(work: Path, name: str = "live"):
    """A headless engine that trains until stopped; yields (process, run folder) once it steps and listens."""
    folder = work / name
    folder.mkdir(parents=True)
    cfg = tiny_config(folder, max_steps=10**6, ckpt_every=0)
    runs_dir = folder / "runs"
    proc = lab_process("run", str(cfg), "--headless", "--runs-dir", str(runs_dir))
    try:
        run = new_run_dir(runs_dir)
        wait_for(lambda: (run / protocol.SOCKET_NAME).exists() and live_step(run) >= 3, timeout=120)
        yield proc, run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def weights(run_dir: Path) -> tuple[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    newest = checkpoint.list_checkpoints(run_dir / "checkpoints")[-1]
    return newest.name, load_file(str(newest / checkpoint.WEIGHTS))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the cases -----------------------------------------------------------------------------------


def case_kill_resume(work: Path, kills: int = 20, max_steps: int = 120, ckpt_every: int = 10,
                     seed: int = 0) -> Outcome:
    """1: kill -9 of the engine at `kills` random steps, `lab run --resume` after each."""
    cfg = tiny_config(work, max_steps=max_steps, ckpt_every=ckpt_every)
    straight_dir, broken_dir = work / "straight", work / "broken"
    out = subprocess.run([sys.executable, "-m", "lab.cli", "run", str(cfg), "--headless",
                          "--runs-dir", str(straight_dir)], capture_output=True, text=True, env=env(), cwd=ROOT)
    if out.returncode != 0:
        return Outcome(f"{kills} kills", "", f"the uninterrupted run failed: {out.stderr[-200:]}", False)
    _, want = weights(new_run_dir(straight_dir))

    points = sorted(random.Random(seed).sample(range(2, max_steps), kills))
    proc = lab_process("run", str(cfg), "--headless", "--runs-dir", str(broken_dir))
    run = new_run_dir(broken_dir)
    lost = 0  # rows written after the newest checkpoint of each kill: they must come back as superseded
    for point in points:
        # the pid check: until the resumed engine has started its segment, old rows still look live
        wait_for(lambda: engine_pid(run) == proc.pid and live_step(run) >= point, timeout=180)
        kill9(proc)
        newest = checkpoint.list_checkpoints(run / "checkpoints")[-1]
        lost += live_step(run) - int(newest.name[len(checkpoint.PREFIX):])
        proc = lab_process("run", "--resume", str(run))
    rc = proc.wait(timeout=600)
    name, got = weights(run)
    r = RunReader(run)
    live = [row[1] for row in r.metric("loss")]
    everything = len(r.metric("loss", include_superseded=True))
    status = r.run()["status"]
    r.close()
    identical = same_weights(want, got)
    rows_ok = live == list(range(1, max_steps + 1))
    superseded = everything - len(live)
    ok = rc == 0 and status == "finished" and identical and rows_ok and superseded == lost
    return Outcome(
        done=f"kill -9 at {kills} random steps of {max_steps} (checkpoint every {ckpt_every}), resume after each",
        expected="final weights bit-identical; live loss rows 1..N once each; lost rows kept as superseded",
        happened=(f"exit {rc}, {status}, {name}, weights {'identical' if identical else 'DIFFER'}, "
                  f"{len(live)} live rows {'1..N' if rows_ok else 'WRONG'}, {superseded} superseded of {lost} lost"),
        ok=ok)


def case_sigterm_mid_step(work: Path, at_step: int = 7) -> Outcome:
    """2: SIGTERM delivered while step `at_step` is inside the model's forward."""
    tr = in_process_trainer(work, "sigterm", max_steps=1000, ckpt_every=0)
    forward = tr.model.forward

    def forward_then_signal(*args, **kwargs):
        if tr.step + 1 == at_step:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the handler only sets a flag
        return forward(*args, **kwargs)

    tr.model.forward = forward_then_signal
    rc = tr.run()
    ckpts = [int(p.name[len(checkpoint.PREFIX):]) for p in checkpoint.list_checkpoints(tr.state.root)]
    r = RunReader(tr.run_dir)
    status = r.run()["status"]
    r.close()
    ok = rc == 0 and status == "stopped" and ckpts[-1] == at_step and tr.step == at_step
    return Outcome(f"SIGTERM during the forward of step {at_step}",
                   f"checkpoint at step {at_step} (within one step), exit 0, status stopped",
                   f"exit {rc}, status {status}, newest checkpoint step {ckpts[-1]}", ok)


def case_damaged_checkpoint(work: Path) -> Outcome:
    """3: the newest checkpoint truncated (one run) or with a byte flipped (another): resume falls back."""
    seen = []
    ok = True
    for damage in ("truncate", "flip"):
        tr = in_process_trainer(work, f"damaged-{damage}", max_steps=10, ckpt_every=5)
        tr.run()
        newest = tr.state.root / checkpoint.step_dir_name(10)
        target = newest / (checkpoint.WEIGHTS if damage == "truncate" else checkpoint.STATE)
        data = bytearray(target.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 3]
        else:
            data[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(data))
        again = resumed_trainer(tr)
        warned = [a["message"] for a in alerts(tr.run_dir) if newest.name in a["message"]]
        step = again.step
        again.recorder.close()
        ok &= step == 5 and len(warned) == 1
        seen.append(f"{damage}: resumed at {step}, {len(warned)} warning naming {newest.name}")
    return Outcome("newest checkpoint (step 10) truncated / a byte flipped, then resume",
                   "resume from step 5, one warning naming step-00000010", "; ".join(seen), ok)


def case_nan_rollback(work: Path) -> Outcome:
    """4: NaN loss through the engine's fault hook, in real `lab run` processes."""
    results = {}
    for name, faults in (("once", "nan@13"), ("four", "nan@13,nan@13,nan@13,nan@13")):
        folder = work / f"nan-{name}"
        folder.mkdir()
        cfg = tiny_config(folder, max_steps=20, ckpt_every=5)
        proc = lab_process("run", str(cfg), "--headless", "--runs-dir", str(folder / "runs"),
                           faults=faults)
        rc = proc.wait(timeout=300)
        run = new_run_dir(folder / "runs")
        r = RunReader(run)
        results[name] = (rc, r.run()["status"], [a["message"] for a in alerts(run)])
        r.close()
    rc1, status1, alerts1 = results["once"]
    rc4, status4, alerts4 = results["four"]
    halved = any("rolled back to step 10" in a and "x0.5" in a for a in alerts1)
    rollbacks = sum("rolled back" in a for a in alerts4)
    ok = rc1 == 0 and status1 == "finished" and halved and rc4 == 1 and status4 == "diverged" and rollbacks == 3
    return Outcome("NaN loss at step 13 once; then at step 13 four times in a row",
                   "rollback to step 10 with lr x0.5 and an alert; after 3 rollbacks: diverged, exit 1",
                   f"once: exit {rc1} {status1}, lr-halving alert {'yes' if halved else 'NO'}; "
                   f"four: exit {rc4} {status4} after {rollbacks} rollbacks", ok)


def chunked_gradient_error(work: Path, micro_batches: int = 4, overrides: list[str] | None = None) -> float:
    """Largest relative difference between the full-batch gradient and the one accumulated over
    `micro_batches` slot chunks, on the same carry and data (after a few steps, so slots are mixed)."""
    grads = []
    for m in (1, micro_batches):
        tr = in_process_trainer(work, f"grad-{m}-{len(list(work.iterdir()))}", max_steps=10, ckpt_every=0,
                                overrides=overrides)
        for step in range(1, 4):
            tr.wake.step(step)
        tr.micro.chunks = m
        inputs, labels = tr.wake.next_data()
        tr.wake.forward_backward(inputs, labels, 4, tr.wake.scored_cells(labels))
        grads.append({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        tr.recorder.close()
    full, chunked = grads
    assert full.keys() == chunked.keys()
    return max(float((full[k] - chunked[k]).abs().max() / full[k].abs().max().clamp_min(1e-12)) for k in full)


def case_out_of_memory(work: Path) -> Outcome:
    """5: torch.OutOfMemoryError injected at step 5; a VRAM reading of 0.9 injected from step 12."""
    tr = in_process_trainer(work, "oom", max_steps=20, ckpt_every=10, faults="oom@5")
    tr.vram_fraction = lambda: 0.9 if tr.step >= 12 else 0.5  # no GPU here: an injected reading
    rc = tr.run()
    backoffs = [a for a in alerts(tr.run_dir) if a.get("fault") == "oom_backoff"]
    rows = live_steps(tr.run_dir)
    split = [(a["old_micro_batch"], a["new_micro_batch"]) for a in backoffs]
    err = chunked_gradient_error(work)
    ok = (rc == 0 and tr.step == 20 and rows == list(range(1, 21)) and split == [(16, 8), (8, 4)]
          and "out of memory" in backoffs[0]["reason"] and "VRAM" in backoffs[1]["reason"] and err < 1e-5)
    return Outcome("OOM at step 5; VRAM reading 0.90 > 0.85 from step 12 (injected: no GPU here)",
                   "micro-batch 16->8 at the OOM, 8->4 under pressure, effective batch kept, run finishes",
                   f"exit {rc}, step {tr.step}, back-offs {split}, accumulated-gradient rel. error {err:.1e}", ok)


def case_disk_full(work: Path) -> Outcome:
    """6: ENOSPC while writing the checkpoint at step 10 (after its weights file is on disk)."""
    tr = in_process_trainer(work, "enospc", max_steps=15, ckpt_every=5, faults="enospc@10")
    rc = tr.run()
    names = [p.name for p in checkpoint.list_checkpoints(tr.state.root)]
    leftovers = [p.name for p in tr.state.root.iterdir() if p.name.startswith(".")]
    previous = checkpoint.load(tr.state.root / checkpoint.step_dir_name(5))  # verifies both checksums
    failed = [a["message"] for a in alerts(tr.run_dir) if "checkpoint at step 10 failed" in a["message"]]
    ok = (rc == 0 and tr.step == 15 and "step-00000010" not in names and previous.step == 5 and not leftovers
          and len(failed) == 1 and "No space left" in failed[0])
    return Outcome("ENOSPC injected while the step-10 checkpoint is written",
                   "step-5 checkpoint intact, no temp folder left, an alert, training goes on to the end",
                   f"exit {rc}, step {tr.step}, checkpoints {names}, leftovers {leftovers or 'none'}, "
                   f"alert: {failed[0] if failed else 'NONE'}", ok)


class Console:
    """`lab launch RUN` in a pseudo-terminal, its screen output drained so it never blocks."""

    def __init__(self, target: str, runs_dir: Path):
        master, slave = pty.openpty()
        e = env()
        e.update(TERM="xterm-256color", COLUMNS="160", LINES="48")
        self.proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "launch", target, "--runs-dir", str(runs_dir)],
                                     stdin=slave, stdout=slave, stderr=slave, env=e, cwd=ROOT,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.screen = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen += data[-65536:]

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        os.close(self.master)


def case_console_killed(work: Path) -> Outcome:
    """7: the console started the run; kill -9 of the console; the engine goes on; a new console
    (and the console's own store follower) sees the whole history."""
    from lab.client import EngineClient, RunState, StoreFollower

    folder = work / "console"
    folder.mkdir()
    cfg = tiny_config(folder, max_steps=10**6, ckpt_every=0)
    runs_dir = folder / "runs"
    console = Console(str(cfg), runs_dir)
    run = new_run_dir(runs_dir)
    try:
        wait_for(lambda: live_step(run) >= 10, timeout=180)
        engine = engine_pid(run)
        console.kill9()
        killed_at = live_step(run)
        wait_for(lambda: live_step(run) >= killed_at + 20, timeout=120)  # the engine goes on alone
        second = Console(str(run), runs_dir)  # a new console attaches...
        try:
            wait_for(lambda: b"loss" in second.screen, timeout=90)  # ...and draws the run's curves
        except TimeoutError:
            pass
        second_alive = second.proc.poll() is None and b"loss" in second.screen
        second.kill9()
        state = RunState(run)  # ...and reads what it shows: the store's history, then the live socket
        follower = StoreFollower(run)
        state.apply_store(follower.poll())
        follower.close()
        client = EngineClient(run)
        hello = client.connect()
        client.close()
        history = list(state.series["loss"].steps) if "loss" in state.series else []
        now = live_step(run)
        ok = (engine is not None and second_alive and history[:1] == [1] and history == list(range(1, len(history) + 1))
              and len(history) >= killed_at and hello["status"] == "running")
        happened = (f"engine pid {engine} stepping on ({killed_at} -> {now}); new console "
                    f"{'drew the run' if second_alive else 'FAILED'}; history steps 1..{history[-1] if history else '?'} "
                    f"({len(history)} points); hello status {hello['status']}")
    finally:
        subprocess.run([sys.executable, "-m", "lab.cli", "ctl", str(run), "stop"], capture_output=True, env=env(),
                       cwd=ROOT, timeout=60)
    return Outcome("kill -9 of the console that started the run; a new console attaches",
                   "the engine keeps stepping; the new console sees every step from 1", happened, ok)


def case_concurrent_commands(work: Path, rounds: int = 4) -> Outcome:
    """8: two socket clients and `lab ctl` processes sending commands at the same time."""
    from lab.client import EngineClient

    with live_engine(work, "concurrent") as (proc, run):
        clients = []
        for _ in range(2):
            c = EngineClient(run)
            c.connect()
            clients.append(c)
            time.sleep(0.002)  # client ids are tagged by the millisecond
        sent: dict[int, list] = {0: [], 1: []}
        scripts = {0: ["pause", "status", "resume", "checkpoint"] * rounds, 1: ["status", "inspect", "status"] * rounds}
        readers_stop = threading.Event()
        acks: dict[int, list[str]] = {0: [], 1: []}

        def reader(i: int) -> None:
            while not readers_stop.is_set():
                for msg in clients[i].read(timeout=0.1):
                    if msg.get("type") == "ack":
                        acks[i].append(msg["ack"])

        def sender(i: int) -> None:
            for cmd in scripts[i]:
                sent[i].append(clients[i].send(cmd, **({"slot": 1} if cmd == "inspect" else {})))

        threads = [threading.Thread(target=f, args=(i,)) for i in (0, 1) for f in (reader, sender)]
        ctl = [subprocess.Popen([sys.executable, "-m", "lab.cli", "ctl", str(run), c, "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
               for c in ("status", "checkpoint", "status")]
        for t in threads:
            t.start()
        ctl_acks = [json.loads(p.communicate(timeout=120)[0]) for p in ctl]
        for i in (0, 1):
            for p in sent[i]:
                p.wait(timeout=60)
        time.sleep(0.3)
        readers_stop.set()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        time.sleep(0.5)  # the store's batched writer flushes the command log
        r = RunReader(run)
        logged = r.commands()
        r.close()
    expected_ids = {i: [p.id for p in sent[i]] for i in (0, 1)}
    exactly_once = all(acks[i] == expected_ids[i] for i in (0, 1))  # once each, in the order sent
    all_acked = all(p.state in ("ok", "failed") for i in (0, 1) for p in sent[i]) and all("ack" in a for a in ctl_acks)
    n_sent = sum(len(v) for v in sent.values()) + len(ctl)
    in_order = (len(logged) == n_sent and len({c["cmd_id"] for c in logged}) == n_sent
                and all(a["received"] <= b["received"] and a["applied_step"] <= b["applied_step"]
                        for a, b in zip(logged, logged[1:])))
    ok = exactly_once and all_acked and in_order
    return Outcome(f"2 clients ({n_sent - len(ctl)} commands, pause/resume/checkpoint/inspect/status) "
                   f"+ {len(ctl)} `lab ctl` at once",
                   "each command acknowledged exactly once, applied in arrival order",
                   f"acks once each in send order: {exactly_once}; all acknowledged: {all_acked}; "
                   f"{len(logged)} logged of {n_sent}, arrival order == applied order: {in_order}", ok)


def socket_garbage(run: Path, examples: int) -> tuple[int, list[str]]:
    """Random bytes, 10 MB lines, unknown commands and half-closed connections (hypothesis).
    Returns (error replies seen, problems)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    problems: list[str] = []
    errors = [0]

    def connect() -> tuple[socket.socket, io.BufferedReader]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        address, fd = protocol.socket_address(str(run / protocol.SOCKET_NAME))
        try:
            s.connect(address)
        finally:
            if fd is not None:
                os.close(fd)
        f = s.makefile("rb")
        assert json.loads(f.readline())["type"] == "hello"
        return s, f

    def until_ack(f, cid) -> dict:
        while True:
            msg = json.loads(f.readline())
            if msg["type"] == "ack" and msg["ack"] == cid:
                return msg
            if msg["type"] == "ack" and not msg["ok"]:
                errors[0] += 1

    junk = st.one_of(
        st.binary(max_size=3000),
        st.builds(lambda n: b"x" * n, st.integers(min_value=64 * 1024 + 1, max_value=10 * 1024 * 1024)),
        st.builds(lambda c, a: json.dumps({"id": "j", "cmd": c, "args": a}).encode(),
                  st.text(max_size=20), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
    )

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=junk, half_close=st.booleans())
    def feed(data: bytes, half_close: bool) -> None:
        s, f = connect()
        try:
            s.sendall(data + b"\n" + protocol.encode(protocol.command("after", "status")))
            if half_close:
                s.shutdown(socket.SHUT_WR)  # still owed its acknowledgements
            ack = until_ack(f, "after")
            if not ack["ok"]:
                problems.append(f"status refused after {data[:30]!r}")
        finally:
            s.close()

    feed()
    return errors[0], problems


def case_socket_garbage(work: Path, examples: int = 40) -> Outcome:
    """9: the control socket of a live engine fed garbage."""
    with live_engine(work, "garbage") as (proc, run):
        mode = stat.S_IMODE(os.stat(run / protocol.SOCKET_NAME).st_mode)
        before = live_step(run)
        errors, problems = socket_garbage(run, examples)
        wait_for(lambda: live_step(run) > before + 5, timeout=60)
        alive = proc.poll() is None
        after = live_step(run)
    ok = not problems and alive and mode == 0o600 and errors > 0
    return Outcome(f"{examples} connections: random bytes, up to 10 MB lines, unknown commands, half-closes",
                   "error replies; the engine steps on and answers; socket mode 0600",
                   f"{errors} error replies, {len(problems)} problems, engine stepping {before} -> {after}, "
                   f"mode {mode:o}", ok)


def _leaves(cls=config.RunConfig, prefix: str = ""):
    import dataclasses

    for name, tp in config._fields(cls).items():
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, prefix + name + ".")
        else:
            yield prefix + name, config._unwrap_optional(tp)


def bad_values(tp) -> dict[str, object]:
    """A wrong type, a negative number, NaN, an empty string and a huge value for a field of type `tp`
    (for a list: a list holding the bad number, or far too many entries)."""
    from typing import get_args, get_origin

    if get_origin(tp) is list:
        of_str = get_args(tp) == (str,)
        return {"wrong type": "seven", "negative": ["x", -3] if of_str else [-1.0],
                "NaN": [float("nan")], "empty string": [""], "huge": ["x"] * 1000 if of_str else [1.0] * 1000}
    huge = "x" * 10_000 if tp is str else (1e300 if tp is float else 10**18)
    return {"wrong type": 7 if tp is str else "seven", "negative": -3, "NaN": float("nan"), "empty string": "",
            "huge": huge}


def config_refusal(work: Path, key: str, value: object) -> str | None:
    """Feed one bad value of `key` to `lab run CONFIG --headless` (in process: it is refused before the
    engine would start). None if refused properly, else what went wrong."""
    from lab import cli

    folder = Path(tempfile.mkdtemp(dir=work))
    runs_dir = folder / "runs"
    runs_dir.mkdir()
    section, _, name = key.rpartition(".")
    literal = config._toml_value(value)  # NaN is written `nan`, which TOML reads back as NaN
    path = folder / "bad.toml"
    path.write_text((f"[{section}]\n" if section else "") + f"{name} = {literal}\n")
    err = io.StringIO()
    try:
        config.load(path)
    except config.ConfigError:
        pass
    else:
        return f"{key} = {literal[:40]} was accepted"
    with contextlib.redirect_stderr(err):
        rc = cli.main(["run", str(path), "--headless", "--runs-dir", str(runs_dir)])
    message = err.getvalue().strip()
    if rc != 2:
        return f"{key}: exit {rc}"
    if key not in message or "Traceback" in message or len(message.splitlines()) != 1:
        return f"{key}: message {message[:120]!r}"
    if list(runs_dir.iterdir()):
        return f"{key}: something was left in runs/"
    return None


def case_bad_configs(work: Path, examples: int = 300) -> Outcome:
    """10: every field set to each kind of bad value (all of them), plus hypothesis-chosen pairs."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaves = list(_leaves())
    problems: list[str] = []
    tried = 0
    for key, tp in leaves:
        for kind, value in bad_values(tp).items():
            tried += 1
            problem = config_refusal(work, key, value)
            if problem:
                problems.append(f"{kind}: {problem}")

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(leaves), st.sampled_from(["wrong type", "negative", "NaN", "empty string", "huge"]))
    def random_pairs(leaf, kind):
        key, tp = leaf
        problem = config_refusal(work, key, bad_values(tp)[kind])
        if problem:
            problems.append(f"{kind}: {problem}")

    random_pairs()
    return Outcome(f"{len(leaves)} config fields x 5 bad values ({tried}) + {examples} hypothesis draws, via `lab run`",
                   "exit 2, one sentence naming the key, no traceback, nothing in runs/",
                   f"{len(problems)} problems" + (f": {problems[:3]}" if problems else ""), not problems)


def case_pickle_checkpoint(work: Path) -> Outcome:
    """11: the newest checkpoint's state.pt replaced by a pickle that runs a command on load
    (its checksum fixed up, so only the safe loader stands in the way)."""
    import hashlib

    marker = work / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    tr = in_process_trainer(work, "pickle", max_steps=10, ckpt_every=5)
    tr.run()
    newest = tr.state.root / checkpoint.step_dir_name(10)
    blob = pickle.dumps({"step": 10, "x": Payload()})
    (newest / checkpoint.STATE).write_bytes(blob)
    meta = json.loads((newest / checkpoint.META).read_text())
    meta["sha256"][checkpoint.STATE] = hashlib.sha256(blob).hexdigest()
    (newest / checkpoint.META).write_text(json.dumps(meta))
    again = resumed_trainer(tr)
    step = again.step
    again.recorder.close()
    refused = [a["message"] for a in alerts(tr.run_dir) if newest.name in a["message"] and "refused" in a["message"]]
    ok = step == 5 and refused and not marker.exists()
    return Outcome("state.pt of the newest checkpoint holds a pickle that runs `touch` on load",
                   "refused by the safe loader (weights_only), nothing runs, resume from the previous one",
                   f"resumed at step {step}, refusal warning: {'yes' if refused else 'NO'}, "
                   f"command ran: {'YES' if marker.exists() else 'no'}", ok)


SANDBOX_PROGRAMS = {
    "loops": ("1 while 1 end", "step limit"),
    "allocates": ("1 while 1 1 end", "stack limit"),
    "prints without end": ("1 while 7 . 1 end", "output limit"),
    "recurses without end": (": f 1 f ; f", "call depth"),
    "grows an integer": ("2 dup while dup * dup end", "integer overflow"),
    "opens a file": ("open /etc/passwd read .", "unknown word"),
    # the next two parse, so they reach the interpreter: words named after Python's and the shell's ways out
    "calls Python": (": eval exec ; : exec eval ; eval", "call depth"),
    "runs a shell": (": fork dup dup ; 1 dup while fork end", "stack limit"),  # a fork bomb
}


def case_sandbox(work: Path, slack: float = 3.0) -> Outcome:
    """12: programs that loop, allocate, print without end, or reach for files or Python. Each must fail naming
    its own limit, or the wall-clock limit (which a starved machine reaches first), within `slack` times the
    wall-clock limit."""
    from engine.sandbox import Limits, run

    marker = work / "sandbox-pwned"
    limits = Limits()
    failures = []
    slowest = 0.0
    for what, (program, needle) in SANDBOX_PROGRAMS.items():
        t0 = time.perf_counter()
        result = run(program.format(marker=marker), [], limits)
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        named = needle in result.error or "time limit" in result.error
        if result.ok or not named or seconds > limits.max_seconds * slack:
            failures.append(f"{what}: ok={result.ok} {result.error!r} in {seconds:.3f}s")
    ok = not failures and not marker.exists()
    return Outcome(f"{len(SANDBOX_PROGRAMS)} hostile programs: " + ", ".join(SANDBOX_PROGRAMS),
                   f"each a recorded failure naming its limit, within {limits.max_seconds} s; nothing touched",
                   f"{len(SANDBOX_PROGRAMS) - len(failures)} stopped as expected, slowest {slowest * 1000:.0f} ms"
                   + (f"; {failures}" if failures else ""), ok)


def case_store_polling(work: Path, seconds: float = 5.0) -> Outcome:
    """13: a console's store follower and a RunReader polling every 250 ms while the engine writes."""
    from lab.client import StoreFollower

    errors: list[str] = []
    polls = 0
    with live_engine(work, "polling") as (proc, run):
        start = live_step(run)
        follower = StoreFollower(run)
        reader = RunReader(run)
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                follower.poll()
                reader.latest()
                reader.events()
                reader.run()
                polls += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(f"{exc.__class__.__name__}: {exc}")
            time.sleep(0.25)
        follower.close()
        reader.close()
        end = live_step(run)
    locked = [e for e in errors if "locked" in e]
    ok = not errors and polls >= seconds / 0.25 * 0.5 and end > start
    return Outcome(f"polled the store every 250 ms for {seconds:g} s during a run ({start} -> {end} steps)",
                   'no "database is locked", no error', f"{polls} polls, {len(errors)} errors, {len(locked)} locked", ok)


# ---- holes found in review: hostile clients, a second engine, misfit checkpoints, failing stores, full disks ----


def case_hostile_client(work: Path, flood: int = 2000) -> Outcome:
    """14: one client sends a line nested 5,000 deep, then floods commands without ever reading."""
    with live_engine(work) as (proc, run):
        hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, folder_fd = protocol.socket_address(str(run / protocol.SOCKET_NAME))  # long test paths
        hostile.connect(address)
        if folder_fd is not None:
            os.close(folder_fd)
        hostile.settimeout(10)
        hostile.sendall(b"[" * 5000 + b"\n")
        replies = hostile.makefile("rb")
        reply = replies.readline()  # the hello and the event stream, then the refusal
        while reply and b'"ack"' not in reply:
            reply = replies.readline()
        refused = b'"ok":false' in reply
        try:
            hostile.sendall(b"".join(protocol.encode(protocol.command(f"f{i}", "status")) for i in range(flood)))
        except OSError:
            pass  # the engine may cut a client off that floods it: that is allowed
        before = live_step(run)
        paused, resumed = lab("ctl", str(run), "pause"), lab("ctl", str(run), "resume")
        stepping = wait_for(lambda: live_step(run) > before + 3, timeout=60) is not None
        alive = proc.poll() is None
        hostile.close()
    ok = refused and paused.returncode == 0 and resumed.returncode == 0 and stepping and alive
    return Outcome(f"a line of 5,000 '[' then {flood} commands never read, from one client",
                   "an error reply to the deep line; another client's pause and resume work; the engine steps on",
                   f"deep line refused: {refused}; pause {paused.returncode}, resume {resumed.returncode}; "
                   f"stepping on: {stepping}", ok)


def case_second_engine(work: Path) -> Outcome:
    """15: `lab run --resume RUN` while an engine is live on RUN."""
    with live_engine(work) as (proc, run):
        socket_inode = os.stat(run / protocol.SOCKET_NAME).st_ino
        out = subprocess.run([sys.executable, "-m", "lab.cli", "run", "--resume", str(run)], capture_output=True,
                             text=True, timeout=120, env=env(), cwd=ROOT)
        lines = out.stderr.strip().splitlines()
        untouched = os.stat(run / protocol.SOCKET_NAME).st_ino == socket_inode and engine_pid(run) == proc.pid
        answers = lab("ctl", str(run), "status").returncode == 0
    ok = out.returncode == 2 and len(lines) == 1 and "already has a live engine" in lines[0] and untouched and answers
    return Outcome("`lab run --resume RUN` on a run whose engine is live",
                   "exit 2 with one sentence; the live engine's socket, store and checkpoints untouched",
                   f"exit {out.returncode}: {lines[0] if lines else '(nothing)'}; first engine untouched and answering: "
                   f"{untouched and answers}", ok)


def case_misfit_checkpoint(work: Path) -> Outcome:
    """16: the newest checkpoint verifies (its checksums are right) but its weights have the wrong shapes."""
    tr = in_process_trainer(work, "misfit", max_steps=10, ckpt_every=5)
    tr.run()
    newest = checkpoint.load(tr.state.root / checkpoint.step_dir_name(10))
    tensors = dict(newest.tensors)
    name = next(k for k in tensors if k.startswith("model.") and tensors[k].ndim == 2)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    shutil.rmtree(newest.path)
    checkpoint.save(tr.state.root, 10, tensors, newest.state, meta=newest.meta)
    again = resumed_trainer(tr)
    warned = [a["message"] for a in alerts(tr.run_dir) if "step-00000010" in a["message"] and "skipped" in a["message"]]
    step = again.step
    again.recorder.close()
    ok = step == 5 and len(warned) == 1 and name in warned[0]
    return Outcome("the step-10 checkpoint re-saved with a weight one row too many (checksums right)",
                   "resume skips it with one warning naming it, and continues from step 5",
                   f"resumed at {step}; warning: {warned[0] if warned else 'NONE'}", ok)


def case_store_failure(work: Path) -> Outcome:
    """17: the run store cannot write (SQLite refuses) from step 5 to step 9 of 12."""
    folder = work / "store"
    folder.mkdir(parents=True)
    cfg = config.load(tiny_config(folder, max_steps=12, ckpt_every=4))

    def on_event(message: dict) -> None:
        if message["event"] == "metrics" and message["step"] in (5, 9):
            tr.recorder.store.db.conn.execute(f"PRAGMA query_only={int(message['step'] == 5)}")

    tr = Trainer(folder / "run", cfg, output="quiet", emit=on_event)
    rc = tr.run()
    told = [a["message"] for a in alerts(tr.run_dir) if "run store could not write" in a["message"]]
    meta = {s: checkpoint.load(tr.state.root / checkpoint.step_dir_name(s)).meta.get("rows_on_disk") for s in (4, 8, 12)}
    rows = live_steps(tr.run_dir)
    ok = rc == 0 and told and meta == {4: True, 8: False, 12: True} and rows == list(range(1, 13))
    return Outcome("SQLite refuses every write from step 5 to step 9 (PRAGMA query_only)",
                   "an alert that says so; the step-8 checkpoint records its rows were not all on disk; the kept rows "
                   "are written once the store recovers; the run finishes",
                   f"exit {rc}; alert: {told[0][:80] if told else 'NONE'}; rows_on_disk by checkpoint {meta}; "
                   f"rows 1..12 on disk: {rows == list(range(1, 13))}", ok)


def case_real_disk_full(work: Path) -> Outcome:
    """18: the checkpoint folder is a real 2 MB filesystem that fills up during the run."""
    tr = in_process_trainer(work, "tmpfs", max_steps=16, ckpt_every=4)
    root = tr.state.root
    root.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return Outcome("a real 2 MB filesystem under checkpoints/", "(needs root to mount)",
                       f"mount failed: {mounted.stderr.strip()}", False)
    try:
        def on_event(message: dict) -> None:
            if message["event"] == "checkpoint" and message["step"] == 4:
                fill_disk(root, leave=1024)  # from here on, nothing fits

        tr.recorder.extra_emit = on_event
        rc = tr.run()
        names = [p.name for p in checkpoint.list_checkpoints(root)]
        leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
        ck, warnings = checkpoint.load_latest(root)
        failed = [a["message"] for a in alerts(tr.run_dir) if "failed" in a["message"] and "checkpoint" in a["message"]]
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
    ok = (rc == 0 and tr.step == 16 and "step-00000004" in names and ck is not None and ck.step == 4 and not warnings
          and not leftovers and failed and "No space left" in failed[0])
    return Outcome("checkpoints/ on a 2 MB tmpfs, filled to the last KB after the step-4 checkpoint",
                   "each later checkpoint fails with an alert, step-4 stays intact and loadable, no half-written "
                   "folder, training goes on to the end",
                   f"exit {rc}, step {tr.step}, checkpoints {names}, leftovers {leftovers or 'none'}, "
                   f"alerts {len(failed)}: {failed[0][:70] if failed else 'NONE'}", ok)


KILLED_SAVE = """
import os, sys, time
from pathlib import Path
import torch
from engine import checkpoint
root, where = Path(sys.argv[1]), sys.argv[2]


def stall():
    print("inside", flush=True)
    time.sleep(600)


if where == "write":  # half of state.pt is on disk when the process dies
    write = checkpoint._write

    def half_then_stall(path, data):
        if path.name == checkpoint.STATE:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            stall()
        return write(path, data)

    checkpoint._write = half_then_stall
    step = 2
else:  # re-saving step 1: the old folder is parked, its replacement not yet renamed in
    rename = os.rename

    def park_then_stall(src, dst):
        rename(src, dst)
        if Path(dst).name.startswith(".old-"):
            stall()

    os.rename = park_then_stall
    step = 1
checkpoint.save(root, step, {"w": torch.full((64, 64), float(step) + 0.5)}, {"step": step})
"""


def killed_save(root: Path, where: str) -> tuple[list[str], checkpoint.Checkpoint | None, list[str], list[str]]:
    """kill -9 of a process in the middle of saving a checkpoint under `root` (after step 1's): what it left,
    what the next load finds, and what is left after that load."""
    checkpoint.save(root, 1, {"w": torch.full((64, 64), 1.0)}, {"step": 1})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(root), where], stdout=subprocess.PIPE, text=True,
                            env=env(), cwd=ROOT)
    try:
        inside = proc.stdout.readline().strip() == "inside"
    finally:
        kill9(proc)
    assert inside, "the save never reached the point where it is killed"
    left = [p.name for p in root.iterdir() if p.name.startswith(".")]
    ck, warnings = checkpoint.load_latest(root)
    return left, ck, warnings, [p.name for p in root.iterdir() if p.name.startswith(".")]


def case_killed_save(work: Path) -> Outcome:
    """19: kill -9 while a checkpoint is half written, and between the two renames of a re-save."""
    seen, ok = [], True
    for where in ("write", "swap"):
        left, ck, warnings, after = killed_save(work / where, where)
        fine = bool(left) and ck is not None and ck.step == 1 and not warnings and not after \
            and torch.equal(ck.tensors["w"], torch.full((64, 64), 1.0))
        ok &= fine
        seen.append(f"{where}: left {left}, then loaded step {ck.step if ck else None}, leftovers after {after or 'none'}")
    return Outcome("kill -9 with state.pt half written; kill -9 between the renames of a re-saved step",
                   "the previous checkpoint loads with no warning; the leftovers are tidied by that load",
                   "; ".join(seen), ok)
# ---- distributed runs (torchrun, gloo) ------------------------------------------------------------

# the neural memory and a sleep every 8 wake steps (3 steps long), held-out accuracy every 12 steps
DDP_SETS = ["train.device=cpu", "model.memory=titans-mag", "sleep.enabled=true", "sleep.wake_steps=8",
            "sleep.sleep_steps=3", "eval.every=12"]
DDP_STEPS = 40
# float32 sums run in another order when the batch is split across ranks: about 1e-7 relative per step
LOSS_RTOL = 1e-5
DDP_FIGURES = ("loss", "consolidation_loss", "eval_exact", "eval_cell", "grad_norm")


def ddp_config(work: Path) -> Path:
    return tiny_config(work, max_steps=DDP_STEPS, ckpt_every=10)


def ddp_sets() -> list[str]:
    return [a for s in DDP_SETS for a in ("--set", s)]


def run_figures(run_dir: Path) -> dict[str, dict[int, float]]:
    """The live rows of the figures that must match across numbers of processes, by step."""
    r = RunReader(run_dir)
    try:
        return {key: {step: value for _, step, value in r.metric(key)} for key in DDP_FIGURES}
    finally:
        r.close()


def reference_figures(work: Path) -> dict[str, dict[int, float]]:
    """One process at the global batch, in this process: what every distributed run must match."""
    folder = work / "reference"
    folder.mkdir(parents=True)
    trainer = Trainer(folder / "run", config.load(ddp_config(folder), DDP_SETS), output="quiet")
    assert trainer.run() == 0
    return run_figures(folder / "run")


def largest_difference(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]]) -> float:
    """The largest relative difference over every figure and step; inf when the steps differ."""
    worst = 0.0
    for key in DDP_FIGURES:
        if got[key].keys() != want[key].keys():
            return float("inf")
        for step, value in want[key].items():
            worst = max(worst, abs(got[key][step] - value) / max(abs(value), 1e-3))
    return worst


def world_of(run_dir: Path) -> dict:
    """The newest "world" event of the run: its size and every rank's pid."""
    r = RunReader(run_dir)
    try:
        worlds = r.events(kinds=["world"])
        return worlds[-1]["data"] if worlds else {}
    finally:
        r.close()


def run_status(run_dir: Path) -> str:
    r = RunReader(run_dir)
    try:
        return r.run()["status"]
    finally:
        r.close()


def any_live_step(run_dir: Path) -> int:
    """The newest live step, wake or sleep."""
    return max(live_step(run_dir), max(live_steps(run_dir, "consolidation_loss"), default=-1)) \
        if (run_dir / "run.db").exists() else -1


def lab_run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)


def kill_rank(run_dir: Path, rank: int, at_step: int) -> int:
    """kill -9 of one rank of a live distributed run once it passed `at_step`; returns its pid."""
    wait_for(lambda: any_live_step(run_dir) >= at_step, timeout=180)
    pid = next(p["pid"] for p in world_of(run_dir)["ranks"] if p["rank"] == rank)
    os.kill(pid, signal.SIGKILL)
    return pid


def case_rank_killed(work: Path) -> Outcome:
    """20: one process killed and resumed at 2; rank 1 of those killed with kill -9 (the run fails, naming it)
    and resumed at 1: the run ends as the uninterrupted one-process run."""
    want = reference_figures(work)
    cfg, runs_dir = ddp_config(work), work / "runs"
    proc = lab_run(str(cfg), "--headless", "--runs-dir", str(runs_dir), *ddp_sets())
    run = new_run_dir(runs_dir)
    wait_for(lambda: any_live_step(run) >= 12, timeout=180)
    kill9(proc)
    proc = lab_run("--resume", str(run), "--nproc", "2")
    wait_for(lambda: world_of(run).get("world_size") == 2, timeout=180)
    pid = kill_rank(run, 1, at_step=22)
    _, err = proc.communicate(timeout=120)
    sentence = f"rank 1 (pid {pid}) of 2 ended"
    failed = proc.returncode, run_status(run), any(sentence in a["message"] for a in alerts(run)), sentence in err
    finish = subprocess.run([sys.executable, "-m", "lab.cli", "run", "--resume", str(run)], capture_output=True,
                            text=True, env=env(), cwd=ROOT, timeout=300)
    diff = largest_difference(run_figures(run), want)
    ok = failed == (1, "failed", True, True) and finish.returncode == 0 and run_status(run) == "finished" \
        and diff <= LOSS_RTOL
    return Outcome("1 process killed at step 12, resumed at 2; kill -9 of rank 1 at step 22, resumed at 1",
                   f"exit 1, status failed, '{sentence}' recorded and printed; finished with every figure within "
                   f"{LOSS_RTOL:g} of one uninterrupted process",
                   f"exit {failed[0]}, {failed[1]}, recorded {failed[2]}, printed {failed[3]}; then exit "
                   f"{finish.returncode}, {run_status(run)}, largest difference {diff:.1e}", ok)


def case_lead_killed(work: Path) -> Outcome:
    """21: kill -9 of the lead rank (the one that records): the launcher records the failure naming it; resumed
    at 2 processes the run ends as the uninterrupted one-process run."""
    want = reference_figures(work)
    cfg, runs_dir = ddp_config(work), work / "runs"
    proc = lab_run(str(cfg), "--headless", "--nproc", "2", "--runs-dir", str(runs_dir), *ddp_sets())
    run = new_run_dir(runs_dir)
    wait_for(lambda: world_of(run).get("world_size") == 2, timeout=180)
    pid = kill_rank(run, world_of(run)["lead"], at_step=12)
    _, err = proc.communicate(timeout=120)
    sentence = f"(pid {pid}) of 2, the rank that records the run, ended"
    failed = proc.returncode, run_status(run), any(sentence in a["message"] for a in alerts(run)), sentence in err
    finish = subprocess.run([sys.executable, "-m", "lab.cli", "run", "--resume", str(run), "--nproc", "2"],
                            capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    diff = largest_difference(run_figures(run), want)
    ok = failed == (1, "failed", True, True) and finish.returncode == 0 and run_status(run) == "finished" \
        and diff <= LOSS_RTOL
    return Outcome("kill -9 of the lead rank of 2 at step 12, resumed at 2",
                   f"exit 1, status failed, '...{sentence}' recorded by the launcher and printed; finished with every "
                   f"figure within {LOSS_RTOL:g} of one uninterrupted process",
                   f"exit {failed[0]}, {failed[1]}, recorded {failed[2]}, printed {failed[3]}; then exit "
                   f"{finish.returncode}, {run_status(run)}, largest difference {diff:.1e}", ok)


# ---- the table -----------------------------------------------------------------------------------

CASES = {
    1: ("kill -9 + resume", lambda w, q, seed: case_kill_resume(w, kills=3 if q else 20, seed=seed)),
    2: ("SIGTERM mid-step", lambda w, q, seed: case_sigterm_mid_step(w)),
    3: ("damaged checkpoint", lambda w, q, seed: case_damaged_checkpoint(w)),
    4: ("NaN loss", lambda w, q, seed: case_nan_rollback(w)),
    5: ("out of memory", lambda w, q, seed: case_out_of_memory(w)),
    6: ("disk full", lambda w, q, seed: case_disk_full(w)),
    7: ("console kill -9", lambda w, q, seed: case_console_killed(w)),
    8: ("concurrent commands", lambda w, q, seed: case_concurrent_commands(w, rounds=4 if q else 10)),
    9: ("socket garbage", lambda w, q, seed: case_socket_garbage(w, examples=40 if q else 200)),
    10: ("bad configs", lambda w, q, seed: case_bad_configs(w, examples=100 if q else 500)),
    11: ("pickle checkpoint", lambda w, q, seed: case_pickle_checkpoint(w)),
    12: ("sandbox", lambda w, q, seed: case_sandbox(w)),
    13: ("store polling", lambda w, q, seed: case_store_polling(w, seconds=5 if q else 30)),
    14: ("hostile client", lambda w, q, seed: case_hostile_client(w)),
    15: ("second engine", lambda w, q, seed: case_second_engine(w)),
    16: ("misfit checkpoint", lambda w, q, seed: case_misfit_checkpoint(w)),
    17: ("store failure", lambda w, q, seed: case_store_failure(w)),
    18: ("real disk full", lambda w, q, seed: case_real_disk_full(w)),
    19: ("killed save", lambda w, q, seed: case_killed_save(w)),
    20: ("rank kill -9", lambda w, q, seed: case_rank_killed(w)),
    21: ("lead rank kill -9", lambda w, q, seed: case_lead_killed(w)),
}
