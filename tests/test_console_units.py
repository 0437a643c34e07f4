"""The console's parts without the app: downsampling, series, alerts, the run state, the client,
and the import boundaries between engine, console and widgets."""

from __future__ import annotations

import ast
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from engine import protocol
from lab.client import AlertRules, EngineClient, EngineUnreachable, RunLimits, RunState, StoreFollower
from tests.fake_engine import CONFIG_TOML, FakeEngine, carry_snapshot, consolidation, telemetry
from widgets.curves import BLOCK, Series, _ema, bucket_bounds, downsample_minmax, drop_flat_runs, render_curves
from widgets.plot import ansi_to_text

ROOT = Path(__file__).resolve().parent.parent


# ---- downsampling -----------------------------------------------------------------------------


def test_downsample_keeps_first_last_and_every_spike():
    rnd = random.Random(0)
    n = 100_000
    values = [rnd.gauss(0, 1) for _ in range(n)]
    spikes = {137: 50.0, 54_321: -40.0, 99_990: 60.0, 1: -70.0}
    for i, v in spikes.items():
        values[i] = v
    s = Series(range(0, 2 * n, 2), values)
    xs, ys = downsample_minmax(s, 120)
    assert len(xs) <= 2 * 120 + 2
    assert (xs[0], ys[0]) == (0, values[0]) and (xs[-1], ys[-1]) == (2 * (n - 1), values[-1])
    kept = set(zip(xs, ys))
    for i, v in spikes.items():
        assert (2 * i, v) in kept
    assert xs == sorted(xs)  # step order, so the line never doubles back
    assert max(ys) == max(values) and min(ys) == min(values)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=2000), st.integers(1, 60))
def test_downsample_keeps_each_buckets_extremes(values, buckets):
    s = Series(range(len(values)), values)
    xs, ys = downsample_minmax(s, buckets)
    if len(values) <= 2 * buckets + 2:
        assert ys == values
        return
    assert len(xs) <= 2 * buckets + 2 and xs[0] == 0 and xs[-1] == len(values) - 1
    bounds = bucket_bounds(len(values), buckets)
    assert len(bounds) <= buckets
    assert [lo for lo, _ in bounds] == [1] + [hi for _, hi in bounds[:-1]]  # contiguous...
    assert bounds[-1][1] == len(values) - 1  # ...over every point but the first and the last
    kept = set(xs)
    for lo, hi in bounds:
        chunk = values[lo:hi]
        assert lo + chunk.index(min(chunk)) in kept and lo + chunk.index(max(chunk)) in kept


def test_long_series_buckets_are_whole_blocks_so_old_buckets_stay_put():
    n, buckets = 100_000, 64
    bounds = bucket_bounds(n, buckets)
    assert all(hi % BLOCK == 0 for _, hi in bounds[:-1])
    later = bucket_bounds(n + 50, buckets)
    assert later[:-1] == bounds[:-1] and later[-1] == (bounds[-1][0], n + 49)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=5 * BLOCK), st.data())
def test_block_extremes_match_a_scan(values, data):
    s = Series()
    for i, v in enumerate(values):  # point by point, as live metrics arrive
        s.append(i, v)
    lo = data.draw(st.integers(0, len(values) - 1))
    hi = data.draw(st.integers(lo + 1, len(values)))
    i_min, i_max = s.extremes(lo, hi)
    assert values[i_min] == min(values[lo:hi]) and values[i_max] == max(values[lo:hi])


def test_ema_kept_in_step_with_appends_matches_a_full_recompute():
    rnd = random.Random(1)
    s = Series(range(100), [rnd.random() for _ in range(100)])
    smooth = s.smoothed(0.9)
    for i in range(100, 400):
        s.append(i, rnd.random())
    s.extend(range(400, 500), [rnd.random() for _ in range(100)])
    fresh = Series(s.steps, s.values).smoothed(0.9)
    assert smooth is s.smoothed(0.9)
    assert len(smooth) == 500
    assert max(abs(a - b) for a, b in zip(smooth.values, fresh.values)) < 1e-12
    m = s.values[0]
    for v in s.values[1:]:
        m = 0.9 * m + 0.1 * v
    assert abs(smooth.values[-1] - m) < 1e-12


def ema_reference(values, weight, start=None):
    m = values[0] if start is None else weight * start + (1 - weight) * values[0]
    out = [m]
    for v in values[1:]:
        m = weight * m + (1 - weight) * v
        out.append(m)
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=3000), st.sampled_from([0.3, 0.6, 0.9, 0.99, 0.999]),
       st.none() | st.floats(-1e3, 1e3))
def test_vectorised_ema_equals_the_loop(values, weight, start):
    fast, slow = _ema(values, weight, start), ema_reference(values, weight, start)
    assert len(fast) == len(slow)
    assert max(abs(a - b) for a, b in zip(fast, slow)) <= 1e-9 * (1 + max(abs(v) for v in values))


def test_vectorised_ema_of_100k_points_equals_the_loop_to_rounding():
    rnd = random.Random(3)
    values = [2.2 * math.exp(-i / 20_000) + rnd.gauss(0, 0.03) for i in range(100_000)]
    for weight in (0.6, 0.9, 0.99):
        fast, slow = _ema(values, weight, None), ema_reference(values, weight)
        assert max(abs(a - b) for a, b in zip(fast, slow)) < 1e-12


def test_replacing_the_last_value_keeps_block_extremes_and_the_ema_true():
    rnd = random.Random(4)
    s = Series()
    smooth = s.smoothed(0.9)
    for i in range(3 * BLOCK):
        s.append(i, rnd.random())
        if i % 7 == 0 or i == 3 * BLOCK - 1:  # the last one closes a block
            s.set_last(10.0 + i)  # a later report of the same step
    fresh = Series(s.steps, s.values)
    assert s.extremes(0, len(s)) == fresh.extremes(0, len(s))
    assert s.values[s.extremes(0, len(s))[1]] == 10.0 + 3 * BLOCK - 1
    assert max(abs(a - b) for a, b in zip(smooth.values, ema_reference(s.values, 0.9))) < 1e-12


def test_drop_flat_runs_keeps_the_corners():
    xs = list(range(10))
    ys = [0, 0, 0, 0, 5, 5, 5, 5, 5, 0]
    kx, ky = drop_flat_runs(xs, ys, 0, 5, 20)
    assert kx == [0, 3, 4, 8, 9] and ky == [0, 0, 5, 5, 0]


def test_render_curves_100k_points_draws_the_series_and_the_latest_value():
    n = 100_000
    s = Series(range(n), [2 * math.exp(-i / 20_000) for i in range(n)])
    text = render_curves([("run", {"loss": s, "lr": Series(range(n), [1e-3] * n)})], ["loss", "lr"], 100, 30)
    plain = text.plain
    assert "loss  0.01348" in plain and "lr  0.001" in plain
    assert len(plain.splitlines()) == 30 and max(len(line) for line in plain.splitlines()) == 100
    assert "80k" in plain  # step ticks as short integers


def test_compare_mode_names_the_runs_in_a_line_above_the_plot_not_on_the_curves():
    n = 400
    runs = [(name, {"loss": Series(range(n), [k + math.exp(-i / 80) for i in range(n)])})
            for k, name in enumerate(["alpha-run", "beta-run"])]
    text = render_curves(runs, ["loss"], 80, 20)
    lines = text.plain.splitlines()
    assert len(lines) == 20 and "alpha-run" in lines[0] and "beta-run" in lines[0]
    assert not any("alpha-run" in line or "beta-run" in line for line in lines[1:])  # nothing drawn over the plot
    colors = {span.style for span in text.spans if "color(" in str(span.style)}
    assert {"color(45)", "color(214)"} <= {str(c) for c in colors}


def test_a_flat_zero_accuracy_is_drawn_on_zero_to_one_not_below_zero():
    text = render_curves([("run", {"exact_acc": Series(range(50), [0.0] * 50)})], ["exact_acc"], 60, 12)
    ticks = [line.split("┤")[0].strip() for line in text.plain.splitlines() if "┤" in line]
    assert ticks and all(float(t) >= 0 for t in ticks) and max(float(t) for t in ticks) == 1.0


def test_ansi_reader_matches_rich():
    from rich.text import Text

    ansi = "\x1b[0m\x1b[38;5;12m\x1b[48;5;15mab\x1b[0m cd\x1b[1;38;5;45me\x1b[0m\n\x1b[38;5;9mf"
    ours, rich_ = ansi_to_text(ansi), Text.from_ansi(ansi)
    assert ours.plain == rich_.plain
    assert [(s.start, s.end, str(s.style)) for s in ours.spans] == [(s.start, s.end, str(s.style)) for s in rich_.spans]


# ---- alerts -----------------------------------------------------------------------------------


def test_alert_rules_fire_once_per_episode():
    rules = AlertRules(silent_after=30)
    assert rules.metrics(10, {"loss": 1.0}) == []
    assert "non-finite loss" in rules.metrics(11, {"loss": None, "exact_acc": 0.5})[0]
    assert rules.metrics(12, {"loss": float("inf")}) == []  # still the same episode
    assert rules.metrics(13, {"loss": 0.9}) == []
    assert rules.metrics(14, {"halt_loss": float("nan")}) != []  # a new one
    assert rules.metrics(15, {"halted_exact_acc": None}) == []  # only losses count
    limits = RunLimits(vram=0.85)
    assert rules.telemetry({"vram_used_mb": 8000, "vram_total_mb": 10000}, limits) == []
    assert "VRAM at 90%" in rules.telemetry({"vram_used_mb": 9000, "vram_total_mb": 10000}, limits)[0]
    assert rules.telemetry({"vram_used_mb": None, "vram_total_mb": None}, limits) == []  # no GPU: no alert
    assert rules.silence(29, "running") == []
    assert "silent for 31 s" in rules.silence(31, "running")[0]
    assert rules.silence(90, "running") == []
    assert rules.silence(90, "finished") == []


def test_resource_alerts_use_the_runs_own_limits(tmp_path):
    fake = FakeEngine(tmp_path / "run", config_toml=CONFIG_TOML + "vram_limit = 0.6\nram_limit = 0.5\n")
    fake.write_history(10)
    state = RunState(fake.run_dir)
    assert state.limits == RunLimits()  # the engine's default until the config is read
    follower = StoreFollower(fake.run_dir)
    state.apply_store(follower.poll())
    follower.close()
    assert state.limits == RunLimits(vram=0.6, ram=0.5)
    at_70 = dict(telemetry(gpu=True, vram_fraction=0.7), sys_ram_used_mb=4000.0, sys_ram_total_mb=10000.0)
    assert AlertRules().telemetry(at_70, RunLimits()) == []  # under the default 0.85
    assert AlertRules().telemetry(at_70, state.limits) == [
        "VRAM at 70% of the card, past this run's limit of 60% (train.vram_limit)."]
    assert AlertRules().telemetry(dict(at_70, sys_ram_used_mb=6000.0), state.limits)[1] == (
        "system RAM at 60% in use, past this run's limit of 50% (train.ram_limit).")
    full = telemetry(gpu=True, vram_fraction=0.99)
    assert AlertRules().telemetry(full, RunLimits(vram=1.0)) == []  # 1: the engine's back-off is off, so is ours


def test_resources_pane_shows_cpu_against_the_cores_and_the_runs_limits():
    from widgets.resources import bar, resources_table

    t = dict(telemetry(gpu=True, vram_fraction=0.7), cpu_percent=200.0, cpu_count=4)
    text = resources_table(t, 60, vram_limit=0.6).plain
    cpu = next(line for line in text.splitlines() if line.startswith("CPU"))
    assert "2.0 of 4 cores" in cpu and abs(cpu.count("█") - cpu.count("░")) <= 1  # two cores of four: half
    assert "limits  VRAM 60% (train.vram_limit)" in text
    vram = next(line for line in text.splitlines() if line.startswith("VRAM"))
    width = vram.count("█") + vram.count("░") + vram.count("┃")
    assert vram.index("┃") - 8 == int(0.6 * width)  # the limit's tick
    assert [span.style for span in bar(0.7, 20, alert=0.6).spans][0] == "red"
    assert [span.style for span in bar(0.7, 20, alert=0.85).spans][0] == "green"  # under both thresholds
    assert "VRAM off" in resources_table(t, 60, vram_limit=1.0).plain


# ---- panes --------------------------------------------------------------------------------------


def plain(renderable, width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_carry_view_shows_the_memory_per_cycle_of_the_replay():
    from widgets.carry import render_carry

    snap = carry_snapshot(cycles=3, blocks=2)
    text = plain(render_carry(snap, 100), 100)
    assert "memory, per cycle of the replayed step (one figure per block)" in text
    rows = text.split("‖ΔW‖ fast weights moved")[1].splitlines()[1:4]
    for c, row in enumerate(rows):
        assert row.split() == [str(c + 1), *[f"{v:.4g}" for v in snap["memory_change"][c] + snap["memory_surprise"][c]]]
    assert "memory change" not in text  # not drawn as one more latent change by position


def test_consolidation_pane_shows_the_memory_and_slow_weight_change_per_sleep():
    from widgets.consolidation import render_consolidation

    sleeps = [{"step": 100 * n, **consolidation(n, 100 * n)} for n in (1, 2, 3)]
    older = {"step": 400, "memory_change": 0.75, "importance_change": 0.0, "retention_after": 0.8}  # before weights_change
    text = plain(render_consolidation(sleeps + [older], 70, 30), 70)
    header = next(line for line in text.splitlines() if "sleep at" in line)
    assert header.split()[2:4] == ["Δ‖mem‖", "‖Δslow‖"]
    row = next(line for line in text.splitlines() if line.split()[:1] == ["300"])
    assert row.split()[1:3] == [f"{sleeps[2]['memory_change']:.3g}", f"{sleeps[2]['weights_change']:.3g}"]
    old = next(line for line in text.splitlines() if line.split()[:1] == ["400"])
    assert old.split()[1:3] == ["—", "—"] and "0.75" not in old  # a fast-weight norm is not a change
    assert "‖Δslow‖ ‖change of the slow weights‖" in text
    narrow = plain(render_consolidation(sleeps, 40, 12), 40)
    assert "‖Δslow‖" in narrow and "loss" not in narrow.split("sleep at")[1].splitlines()[0]


def test_the_event_log_line_of_a_sleep_names_both_changes():
    from lab.screens.dashboard import event_line

    msg = protocol.event("consolidation", 120, 1.0, consolidation(1, 120))
    kind, text = event_line(msg, set())
    assert text == "sleep consolidated: retention 0.7 → 0.7812, Δ‖mem‖ -0.0188, ‖Δslow‖ 0.412"


# ---- run state --------------------------------------------------------------------------------


def test_run_state_takes_the_store_then_the_socket_without_duplicates(tmp_path):
    fake = FakeEngine(tmp_path / "run", run_id="r1")
    fake.write_history(300)
    state = RunState(fake.run_dir)
    follower = StoreFollower(fake.run_dir)
    new = state.apply_store(follower.poll())
    assert len(state.series["loss"]) == 300 and state.step == 300 and state.status == "running"
    assert [p[1] for p in state.phases] == ["wake", "sleep", "wake", "sleep", "wake"]
    assert len(state.sleeps) == 2 and state.telemetry["rss_mb"] == 812.0
    assert any(e["event"] == "checkpoint" for e in new)
    # the engine broadcast the same events the store holds; a live console sees both
    for e in new:
        assert state.apply(e) is None
    assert len(state.phases) == 5
    # metrics the store already had are not appended twice; new steps are
    state.apply(protocol.event("metrics", 300, time.time(), {"loss": 9.0}))
    state.apply(protocol.event("metrics", 301, time.time(), {"loss": 0.5, "exact_acc": None}))
    assert state.series["loss"].values[-2:] != [9.0] and state.series["loss"].last == 0.5
    assert len(state.series["loss"]) == 301
    assert follower.poll().metrics == {}  # nothing new in the store
    follower.close()


def test_a_resumed_run_is_read_again_without_its_superseded_rows(tmp_path):
    from engine.store import RunStore

    fake = FakeEngine(tmp_path / "run")
    fake.write_history(300, phases=False, curriculum=False)
    state, follower = RunState(fake.run_dir), StoreFollower(fake.run_dir)
    state.apply_store(follower.poll())
    assert len(state.series["loss"]) == 300
    store = RunStore(fake.run_dir)  # the engine resumes from a checkpoint at step 150
    store.start_segment(150)
    for step in range(151, 181):
        store.log_metrics(step, {"loss": 7.0})
    store.flush()
    store.close()
    update = follower.poll()
    assert update.reset
    state.apply_store(update)
    loss = state.series["loss"]
    assert loss.steps == list(range(1, 181)) and loss.values[150:] == [7.0] * 30
    follower.close()


# ---- the engine's side of the socket ------------------------------------------------------------


def _server_and_client(tmp_path):
    import socket

    from engine.control import ControlServer

    srv = ControlServer(tmp_path / protocol.SOCKET_NAME, hello=lambda: protocol.hello("r", 0, "running"))
    srv.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(srv.path)
    f = sock.makefile("rb")
    assert json.loads(f.readline())["type"] == "hello"
    return srv, sock, f


def test_events_to_a_reading_client_go_out_without_waking_the_server_thread(tmp_path):
    srv, sock, f = _server_and_client(tmp_path)
    wakes = []
    srv._wakeup = lambda: wakes.append(1)  # the hand-off to the server thread we want to avoid
    try:
        for i in range(200):
            srv.broadcast(protocol.event("metrics", i, 0.0, {"loss": 1.0 / (i + 1)}))
            assert json.loads(f.readline())["step"] == i  # already on the wire
        assert wakes == []
    finally:
        sock.close()
        srv.close()


def test_a_client_that_falls_behind_still_gets_whole_lines_in_order(tmp_path):
    srv, sock, f = _server_and_client(tmp_path)
    try:
        n = 3000
        for i in range(n):  # ~3 MB: more than the socket holds, so most of it queues
            srv.broadcast(protocol.event("metrics", i, 0.0, {"loss": 1.0, "pad": "x" * 1000}))
        srv.reply(next(iter(srv._clients)), protocol.ack("last", True, n, None), settles_command=False)
        steps = []
        while True:
            msg = json.loads(f.readline())  # a torn line would not parse
            if msg["type"] == "ack":
                break
            steps.append(msg["step"])
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        assert len(steps) + srv.dropped_total == n and steps[0] == 0
    finally:
        sock.close()
        srv.close()


# ---- client -----------------------------------------------------------------------------------


def test_client_commands_resolve_with_the_step_of_their_ack(tmp_path):
    fake = FakeEngine(tmp_path / "run", step=42).start()
    try:
        client = EngineClient(fake.run_dir)
        hello = client.connect()
        assert hello["type"] == "hello" and hello["step"] == 42
        pending = client.send("inspect", slot=3)
        assert pending.state == "pending"
        deadline = time.monotonic() + 5
        seen = []
        while not pending.wait(0) and time.monotonic() < deadline:
            seen += client.read(0.05)
        assert pending.state == "ok" and pending.step == 42
        assert pending.result == carry_snapshot(3)
        assert any(m.get("type") == "ack" for m in seen)
        assert fake.commands[0].cmd == "inspect" and fake.commands[0].args == {"slot": 3}
    finally:
        client.close()
        fake.stop()


def test_client_says_why_the_engine_is_unreachable(tmp_path):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(EngineUnreachable, match="not running"):
        EngineClient(run).connect()
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listens, never says hello
    mute.bind(str(run / protocol.SOCKET_NAME))
    mute.listen(1)
    t0 = time.monotonic()
    with pytest.raises(EngineUnreachable, match="did not answer within 0.3 s"):
        EngineClient(run, hello_timeout=0.3).connect()
    assert time.monotonic() - t0 < 2
    mute.close()
    with pytest.raises(EngineUnreachable, match="refuses connections"):
        EngineClient(run).connect()


def test_client_reaches_a_socket_in_a_deep_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "run"  # longer than an AF_UNIX path may be
    fake = FakeEngine(deep).start()
    try:
        client = EngineClient(deep)
        assert client.connect()["run_id"] == "fake-run"
        client.close()
    finally:
        fake.stop()


# ---- import boundaries ------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_never_imports_the_console_and_widgets_never_import_torch_or_engine():
    for f in (ROOT / "engine").rglob("*.py"):
        assert not _imports(f) & {"textual", "lab", "widgets", "rich", "plotext"}, f
    for f in (ROOT / "widgets").rglob("*.py"):
        # numpy is allowed: a declared dependency, already in the console's process (sqlite-utils loads it)
        assert not _imports(f) & {"torch", "engine", "lab"}, f
    console = [ROOT / "lab" / "app.py", ROOT / "lab" / "client.py", *(ROOT / "lab" / "screens").rglob("*.py")]
    for f in console:
        assert "torch" not in _imports(f), f


def test_the_console_does_not_pull_torch_into_the_process():
    code = (
        "import sys; import lab.app, lab.client, lab.screens.dashboard, lab.screens.inspector, lab.screens.runs, "
        "lab.screens.compare, lab.screens.launch, widgets.curves, widgets.carry, widgets.resources, "
        "widgets.timeline, widgets.consolidation, widgets.curriculum, widgets.eventlog, widgets.pipeline; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'torch']; print(bad[:5]); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_timeline_shows_any_stage_by_name():
    from widgets.timeline import render_timeline

    text = render_timeline([(0, "wake", False), (10, "sleep", False), (14, "wake", False), (20, "bake", True),
                            (25, "wake", False)], 30, 30).plain
    bar = text.splitlines()[1]
    assert "▆" in bar and "█" in bar and "▁" in bar  # bake, sleep and wake each have their own band
    assert "▆ bake" in text and "█ sleep" in text and "now wake since step 25" in text
    assert text.splitlines()[0].index("▼") == bar.index("▆")  # begun by hand: marked where it starts


def test_the_timeline_shows_the_pipelines_stage_changes():
    from widgets.timeline import render_timeline, stage_look

    stages = ["curriculum", "bake", "selfmodel", "dream"]
    text = render_timeline([(0, "curriculum", False), (40, "bake", False), (56, "selfmodel", False),
                            (60, "dream", False)], 64, 64).plain
    assert text.splitlines()[1] == "▆" * 64  # no wake: every column is a pipeline stage's
    assert all(f"▆ {name}" in text.splitlines()[3] for name in stages) and "now dream since step 60" in text
    assert len({style for _, style in stage_look(stages).values()}) == 4  # each stage its own colour


def test_a_pipelines_curves_show_the_baking_kl_and_the_self_models_calibration():
    from widgets.curves import default_keys

    plain = ["cell_acc", "exact_acc", "loss", "lr", "pipeline/level"]
    assert default_keys(plain) == ["loss", "exact_acc", "lr"]
    assert default_keys(plain + ["bake_kl"]) == ["loss", "exact_acc", "bake_kl"]
    assert default_keys(plain + ["bake_kl", "selfmodel/ece", "selfmodel/ece_answer"]) == [
        "loss", "exact_acc", "bake_kl", "selfmodel/ece"]


def test_lab_ctl_stage_prints_where_the_pipeline_stands(tmp_path):
    from tests.helpers import lab

    fake = FakeEngine(tmp_path / "p5", pipeline=True)
    fake.write_history(530)
    fake.start()
    try:
        out = lab("ctl", str(fake.run_dir), "stage")  # a run without a pipeline: tests/test_engine.py's ctl test
    finally:
        fake.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("level 2 of 10, stage bake (2 of 4: curriculum -> bake -> selfmodel -> dream), "
                                  "30% done (30 steps), 203 of 300 questions left; run step 530")


def test_the_header_shows_the_world_size_and_each_ranks_step_time(tmp_path):
    from lab.screens.dashboard import header_text

    state = RunState(tmp_path / "run")
    now = time.time()
    state.apply(protocol.event("world", 0, now, {"world_size": 2, "lead": 0, "ranks": [
        {"rank": 0, "host": "a", "pid": 10}, {"rank": 1, "host": "a", "pid": 11}]}))
    assert header_text(state, "live", "", 0.0).plain.count("ranks") == 1
    state.apply(protocol.event("metrics", 3, now, {"loss": 1.0, "step_time_rank0": 0.041, "step_time_rank1": 0.043}))
    assert "2 ranks: 41 · 43 ms/step" in header_text(state, "live", "", 0.0).plain
    one = RunState(tmp_path / "one")
    one.apply(protocol.event("world", 0, now, {"world_size": 1, "lead": 0, "ranks": [
        {"rank": 0, "host": "a", "pid": 10}]}))
    assert "ranks" not in header_text(one, "live", "", 0.0).plain  # one process: nothing to say
