"""Console figures: how fast the curves pane draws long runs, what attaching costs.

- render_ms_100k: the dashboard's curves pane (default series: loss, exact accuracy, learning
  rate) at its size in a 160x48 terminal, 100,000 points per series; median of repeated
  redraws with the data changed in between. Target <= 30 ms. Also with EMA smoothing on.
- downsample_ms_100k, backfill_s_100k: min/max reduction of one series; opening a run of
  100,000 steps from its store (--quick: 20,000 steps, reported as backfill_s_20k; every key
  names the size it measured, nothing is scaled).
- console_cpu_percent, ack_latency_ms: the console attached to a real engine: a run folder
  prepared and the engine spawned as `lab run` / the console do (lab.runs.create_run,
  lab.runs.spawn_engine: `python -m engine RUN_DIR` in its own process) on --engine-config
  (default configs/quickstart.toml, run length unbounded), then stopped; --run RUN_DIR
  attaches to a live run instead. Targets <= 10% of one core; <= one step + 200 ms.
- attached_throughput_ratio: engine steps/s with a console attached over headless, on a real
  engine (--throughput-config CONFIG), in one run with attached and headless blocks alternating;
  null when not asked for. Target >= 0.97. Beside it attached_cpu_per_step_ratio, the same
  ratio per engine CPU second: what a client costs inside the engine, whatever the machine's load.

    .venv/bin/python bench/console.py [--quick | --smoke] [--run RUN_DIR] [--engine-config CONFIG]
                                      [--throughput-config configs/quickstart.toml]

The last line printed is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.app import LabApp  # noqa: E402
from lab.client import RunState, StoreFollower  # noqa: E402
from widgets.curves import CurvesPlot, Series, downsample_minmax, render_curves  # noqa: E402
from widgets.eventlog import EventLog  # noqa: E402

N = 100_000


def size_key(n: int) -> str:
    """The size a figure was measured at, for its key: 100000 -> "100k", 2500 -> "2500"."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def curve_series(n: int, seed: int = 0) -> dict[str, Series]:
    rnd = random.Random(seed)
    return {
        "loss": Series(range(n), [2.2 * math.exp(-i / (n / 5)) + 0.05 + rnd.gauss(0, 0.03) for i in range(n)]),
        "exact_acc": Series(range(n), [min(1.0, 1 - math.exp(-i / (n / 4)) + rnd.gauss(0, 0.01)) for i in range(n)]),
        "lr": Series(range(n), [2e-3 * min(1.0, i / 500) * (0.5 + 0.5 * math.cos(math.pi * i / n)) for i in range(n)]),
        "cell_acc": Series(range(n), [1 - 0.7 * math.exp(-i / (n / 6)) for i in range(n)]),
    }


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) over `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def pane_size() -> tuple[int, int]:
    """The curves plot's size on the dashboard of a 160x48 terminal (measured, not assumed)."""
    async def go():
        with tempfile.TemporaryDirectory() as d:
            app = LabApp(Path(d), ROOT / "configs", run_dir=Path(d) / "none")
            async with app.run_test(size=(160, 48)) as pilot:
                await pilot.pause(0.3)
                return tuple(app.screen.query_one(CurvesPlot).size)
    return asyncio.run(go())


def bench_render(n: int, repeats: int) -> dict:
    series = curve_series(n)
    width, height = pane_size()
    keys = ["loss", "exact_acc", "lr"]
    def redraw(smoothing: float):
        def once():
            for s in series.values():  # new data since the last frame, as in a live run
                s.append(s.last_step + 1, s.last)
            render_curves([("run", series)], keys, width, height, smoothing)
        return once

    render_curves([("run", series)], keys, width, height, 0.9)  # warm: EMA computed once, then kept
    wall, cpu = timed(redraw(0.0), repeats)
    wall_s, cpu_s = timed(redraw(0.9), repeats)
    ds_wall, _ = timed(lambda: downsample_minmax(series["loss"], width), repeats)
    print(f"curves pane {width}x{height}, 3 series x {n:,} points: {wall:.1f} ms (cpu {cpu:.1f} ms); "
          f"smoothed {wall_s:.1f} ms (cpu {cpu_s:.1f} ms); downsample one series {ds_wall:.2f} ms  (target <= 30 ms "
          f"at 100k)")
    k = size_key(n)
    return {f"render_ms_{k}": round(wall, 2), f"render_cpu_ms_{k}": round(cpu, 2),
            f"render_ms_{k}_smoothed": round(wall_s, 2), f"render_cpu_ms_{k}_smoothed": round(cpu_s, 2),
            f"downsample_ms_{k}": round(ds_wall, 3),
            "pane_size": [width, height]}


def bench_backfill(n: int) -> dict:
    from tests.fake_engine import FakeEngine

    with tempfile.TemporaryDirectory() as d:
        fake = FakeEngine(Path(d) / "run")
        t0 = time.perf_counter()
        fake.write_history(n, phases=False, curriculum=False)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state = RunState(fake.run_dir)
        follower = StoreFollower(fake.run_dir)
        state.apply_store(follower.poll())
        follower.close()
        load_s = time.perf_counter() - t0
    assert len(state.series["loss"]) == n
    print(f"backfill: {n:,} steps x {sum(len(v) == n for v in state.series.values())} metrics read into the console in {load_s:.2f} s (written in {write_s:.1f} s)")
    return {f"backfill_s_{size_key(n)}": round(load_s, 3)}


# ---- attached to an engine ------------------------------------------------------------------------


def start_engine(config_path: Path, runs_dir: Path) -> tuple[Path, subprocess.Popen]:
    """A real run: its folder prepared and the engine spawned as `lab run` does, in its own process (so its CPU is
    not the console's); returns once its control socket accepts."""
    from lab import runs

    run_dir = runs.create_run(config_path, ["train.max_steps=100000000", "train.max_minutes=0"], runs_dir)
    proc = runs.spawn_engine(run_dir)
    deadline = time.monotonic() + 60
    while not (run_dir / "engine.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_engine(run_dir, proc)
            raise RuntimeError(f"the engine did not start (code {proc.returncode}); see {run_dir / 'engine.log'}")
        time.sleep(0.05)
    return run_dir, proc


def stop_engine(run_dir: Path, proc: subprocess.Popen) -> None:
    """A `stop` command, as the console sends it, then wait for the engine to exit; terminate it when the socket
    does not answer or it does not exit within a minute."""
    from lab.client import EngineClient, EngineUnreachable

    if proc.poll() is None:
        try:
            client = EngineClient(run_dir)
            client.connect()
            client.send("stop")  # acknowledged at the next step boundary; the exit is what is waited for
            client.close()
        except EngineUnreachable:
            proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)


def bench_attached(run_dir: Path, seconds: float, presses: int, settle_s: float = 2.0) -> dict:
    """Console CPU over `seconds` attached (default refresh), then key-to-ack latency on screen."""
    async def go():
        app = LabApp(run_dir.parent, ROOT / "configs", run_dir=run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            dash = app.screen
            deadline = time.monotonic() + 30
            while dash.mode != "live" and time.monotonic() < deadline:
                await pilot.pause(0.05)
            await pilot.pause(settle_s)  # history loaded and drawn
            c0, t0 = time.process_time(), time.perf_counter()
            await pilot.pause(seconds)
            cpu = (time.process_time() - c0) / (time.perf_counter() - t0) * 100
            latencies = []
            log = dash.query_one(EventLog)
            for i in range(presses):
                before = len(log.lines_written)
                t = time.perf_counter()
                await pilot.press("space")
                while not any("✓" in line for line in log.lines_written[before:]):
                    if time.perf_counter() - t > 30:
                        break
                    await pilot.pause(0.005)
                latencies.append((time.perf_counter() - t) * 1e3)
                await pilot.pause(0.3)
            steps_s = dash.state.steps_per_second
        return cpu, latencies, steps_s

    cpu, latencies, steps_s = asyncio.run(go())
    step_ms = 1e3 / steps_s if steps_s else None
    lat = statistics.median(latencies)
    print(f"attached: console CPU {cpu:.1f}% of one core over {seconds:.0f} s at {steps_s or 0:.1f} steps/s "
          f"(target <= 10%); key to ack on screen {lat:.0f} ms median of {len(latencies)} "
          f"(target <= one step{f' ({step_ms:.0f} ms)' if step_ms else ''} + 200 ms)")
    return {"console_cpu_percent": round(cpu, 2), "ack_latency_ms": round(lat, 1),
            "engine_steps_per_s": round(steps_s, 2) if steps_s else None}


def attached_throughput_ratio(config_path: Path, pairs: int, block_s: float, client: str = "console") -> dict:
    """Real engine, one run, blocks with a client attached and blocks without, alternating
    (AB BA AB ...) so drift and machine load fall on both sides alike. Two ratios, attached over
    headless: steps per wall second (what the user sees; on a machine with no spare core it
    also counts the console's own CPU taking the engine's), and steps per engine CPU second
    (what a client costs inside the engine: encoding, sending, threads). Periodic eval and
    checkpoints are off: they land in blocks by chance and would be noise, not a cost of attaching.

    client: "console" (the dashboard, in this process) or "socket" (a bare reader of the event
    stream in another process).
    """
    from lab import runs

    settle_s = 3.0  # after attaching: the console starts and reads the history; not steady state
    with tempfile.TemporaryDirectory() as d:
        run_dir = runs.create_run(config_path, ["train.max_steps=100000000", "train.max_minutes=0",
                                               "eval.every=0", "checkpoint.every=0"], Path(d))
        proc = runs.spawn_engine(run_dir)
        engine = psutil.Process(proc.pid)

        def cpu() -> float:
            t = engine.cpu_times()
            return t.user + t.system

        blocks: list[tuple[bool, float, float, float]] = []  # (attached, start, end, engine CPU s)
        try:
            time.sleep(settle_s + block_s)  # warm-up, not measured
            for p in range(pairs):
                for attached in ((False, True) if p % 2 == 0 else (True, False)):
                    if proc.poll() is not None:
                        raise RuntimeError(f"the engine exited early (code {proc.returncode}); see {run_dir / 'engine.log'}")
                    blocks.append((attached, *_block(run_dir, attached, client, settle_s, block_s, cpu)))
        finally:
            stop_engine(run_dir, proc)
        follower = StoreFollower(run_dir)
        times = [t for (t,) in follower.reader.conn.execute("SELECT time FROM metrics WHERE key = 'loss' ORDER BY id")]
        follower.close()

    def steps_done(t: float) -> float:
        """Steps finished by time t, interpolated between step ends: no rounding at block edges."""
        i = bisect.bisect_right(times, t)
        if i == 0 or i == len(times):
            return float(i)
        return i - 1 + (t - times[i - 1]) / (times[i] - times[i - 1])

    totals = {True: [0.0, 0.0, 0.0], False: [0.0, 0.0, 0.0]}  # steps, wall s, engine CPU s
    per_block = []
    for attached, lo, hi, cpu_s in blocks:
        steps = steps_done(hi) - steps_done(lo)
        assert steps > 1, "a block saw fewer than two steps: make the blocks longer"
        for i, v in enumerate((steps, hi - lo, cpu_s)):
            totals[attached][i] += v
        per_block.append(steps / (hi - lo))
    (sa, wa, ca), (sh, wh, ch) = totals[True], totals[False]
    ratio, cpu_ratio = (sa / wa) / (sh / wh), (sa / ca) / (sh / ch)
    pair_ratios = sorted(per_block[i + (not blocks[i][0])] / per_block[i + blocks[i][0]]
                         for i in range(0, len(blocks), 2))
    print(f"engine throughput, {client} attached vs headless, one run, {pairs} pairs of {block_s:.0f} s blocks "
          f"alternating: {sa / wa:.2f} vs {sh / wh:.2f} steps/s, ratio {ratio:.3f} (pairs {pair_ratios[0]:.3f} .. "
          f"{pair_ratios[-1]:.3f}; target >= 0.97); per engine CPU second {sa / ca:.2f} vs {sh / ch:.2f} steps, "
          f"ratio {cpu_ratio:.3f}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return {"attached_throughput_ratio": round(ratio, 4), "attached_cpu_per_step_ratio": round(cpu_ratio, 4),
            "attached_pair_ratios": [round(r, 3) for r in pair_ratios]}


def _block(run_dir: Path, attached: bool, client: str, settle_s: float, block_s: float, cpu) -> tuple[float, float, float]:
    """One block: (start, end, engine CPU seconds) of its measured window, after `settle_s`."""
    if not attached:
        time.sleep(settle_s)
        t0, c0 = time.time(), cpu()
        time.sleep(block_s)
        return t0, time.time(), cpu() - c0
    if client == "socket":
        code = ("import sys, socket, time; from engine import protocol; s = socket.socket(socket.AF_UNIX); "
                "s.connect(protocol.socket_address(sys.argv[1])[0]); end = time.time() + float(sys.argv[2])\n"
                "while time.time() < end and s.recv(1 << 16): pass")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        reader = subprocess.Popen([sys.executable, "-c", code, str(run_dir / "engine.sock"),
                                   str(settle_s + block_s + 0.5)], env=env)
        time.sleep(settle_s)
        t0, c0 = time.time(), cpu()
        time.sleep(block_s)
        t1, c1 = time.time(), cpu()
        reader.wait(timeout=30)
        return t0, t1, c1 - c0

    async def go():
        app = LabApp(run_dir.parent, ROOT / "configs", run_dir=run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(settle_s)
            t0, c0 = time.time(), cpu()
            await pilot.pause(block_s)
            return t0, time.time(), cpu() - c0
    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="small sizes and a second attached: checks the code path")
    ap.add_argument("--run", type=Path, help="attach to this live run instead of starting an engine")
    ap.add_argument("--engine-config", type=Path, default=ROOT / "configs" / "quickstart.toml",
                    help="the config of the engine the console attaches to")
    ap.add_argument("--throughput-config", type=Path, help="measure attached_throughput_ratio on a real engine")
    ap.add_argument("--throughput-client", choices=("console", "socket"), default="console",
                    help="what is attached in the throughput blocks: the dashboard, or a bare socket reader")
    args = ap.parse_args()

    figures: dict = {}
    figures.update(bench_render(2_000 if args.smoke else N, repeats=3 if args.smoke else 7 if args.quick else 21))
    figures.update(bench_backfill(2_000 if args.smoke else 20_000 if args.quick else N))
    seconds, presses, settle = (1.0, 1, 0.5) if args.smoke else (5.0, 3, 2.0) if args.quick else (20.0, 6, 2.0)
    if args.run:
        figures.update(bench_attached(args.run, seconds, presses, settle))
        figures["engine"] = "live run"
    else:
        with tempfile.TemporaryDirectory() as d:
            run_dir, proc = start_engine(args.engine_config, Path(d) / "runs")
            try:
                figures.update(bench_attached(run_dir, seconds, presses, settle))
            finally:
                stop_engine(run_dir, proc)
        figures["engine"] = f"real ({args.engine_config.name})"
    figures["attached_throughput_ratio"] = None
    if args.throughput_config:
        figures.update(attached_throughput_ratio(args.throughput_config, *((3, 10.0) if args.quick else (6, 30.0)),
                                                 client=args.throughput_client))
    figures["smoke"] = args.smoke
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
