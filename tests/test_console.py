"""The console app driven by the Pilot against a fake engine: a real Unix socket in a temporary
run folder that replays scripted events, and a store with rows."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from lab.app import LabApp
from lab.screens.compare import CompareScreen
from lab.screens.dashboard import DashboardScreen, commands_text, header_text
from lab.screens.dialogs import ConfirmScreen, HelpScreen
from lab.screens.inspector import CarryInspectorScreen
from lab.screens.launch import LaunchScreen
from lab.screens.runs import RunsBrowserScreen
from tests.fake_engine import CONFIG_TOML, FakeEngine, carry_snapshot
from widgets.carry import CarryView
from widgets.curves import CurvesPane
from widgets.eventlog import EventLog
from widgets.pipeline import PipelineStrip, render_strip
from widgets.resources import ResourcesPane, resources_table

SNAPSHOTS = Path(__file__).parent / "console_snapshots"
FIXED_CLOCK = 1_700_000_000.0


def run(coro):
    return asyncio.run(coro)


async def until(pilot, condition, timeout: float = 8.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture
def fake(runs):
    eng = FakeEngine(runs / "fake-run")
    eng.write_history(300)
    eng.start()
    yield eng
    eng.stop()


def app_for(runs: Path, run_dir: Path | None = None, **kw) -> LabApp:
    return LabApp(runs, Path(__file__).parent.parent / "configs", run_dir=run_dir, **kw)


def log_lines(app) -> list[str]:
    return app.screen.query_one(EventLog).lines_written


def strip(dash: DashboardScreen) -> str:
    return commands_text(dash.commands, time.monotonic()).plain


# ---- keys and commands ---------------------------------------------------------------------------


def test_keys_send_commands_shown_pending_until_acked_with_the_step(runs, fake):
    fake.hold_acks = True

    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            dash = app.screen
            await until(pilot, lambda: dash.mode == "live" and len(dash.state.series.get("loss", ())) == 300, what="attach")
            await pilot.press("space")
            await until(pilot, lambda: [c.cmd for c in fake.commands] == ["pause"], what="pause sent")
            await pilot.pause(0.2)
            assert "pause … pending" in strip(dash)
            assert any("→ pause sent" in line for line in log_lines(app))
            fake.step = 305
            fake.release_acks()
            await until(pilot, lambda: any("✓ pause applied at step 305" in line for line in log_lines(app)),
                        what="pause acked")
            assert "pause ✓ step 305" in strip(dash)
            await until(pilot, lambda: dash.state.status == "paused", what="status paused")
            for key, cmd in (("s", "sleep"), ("c", "checkpoint"), ("space", "resume")):
                await pilot.press(key)
                await until(pilot, lambda: f"{cmd} ✓ step 305" in strip(dash), what=f"{cmd} acked")
            assert [c.cmd for c in fake.commands] == ["pause", "sleep", "checkpoint", "resume"]
            assert dash.state.phases[-1] == (305, "sleep", True)  # the manual sleep is on the timeline
            assert any("checkpoint saved (manual)" in line for line in log_lines(app))

    run(go())


def test_stop_asks_first_and_q_leaves_the_run_running(runs, fake):
    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.screen.mode == "live", what="attach")
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
            await pilot.press("n")
            await pilot.pause(0.3)
            assert fake.commands == [] and isinstance(app.screen, DashboardScreen)
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
            await pilot.press("y")
            await until(pilot, lambda: [c.cmd for c in fake.commands] == ["stop"], what="stop sent")
            await until(pilot, lambda: "stop ✓ step 300" in strip(app.screen), what="stop acked")
            await pilot.press("q")
        assert fake.status == "stopped" and fake.socket_path.exists()  # leaving sent nothing more

    run(go())


def test_command_palette_lists_the_run_commands(runs, fake):
    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.screen.mode == "live", what="attach")
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for want in ("Pause / resume the run", "Sleep now", "Checkpoint now", "Carry inspector", "Stop the run",
                         "Runs browser", "Leave the console", "Keys"):
                assert want in titles
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="back")

    run(go())


# ---- panes --------------------------------------------------------------------------------------


def test_panes_fill_from_the_store_then_live(runs, fake):
    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            dash = app.screen
            await until(pilot, lambda: dash.mode == "live" and len(dash.state.series.get("loss", ())) == 300, what="history")
            curves = dash.query_one(CurvesPane)
            assert curves.plot.keys == ["loss", "exact_acc", "lr"]
            await until(pilot, lambda: "loss" in curves.plot.render().plain, what="curves drawn")
            fake.advance(20)  # live metrics and telemetry
            await until(pilot, lambda: len(dash.state.series["loss"]) == 320, what="live metrics")
            await until(pilot, lambda: "RTX 3080 Ti" in resources_table(dash.query_one(ResourcesPane).telemetry).plain,
                        what="telemetry")
            header = header_text(dash.state, dash.mode, dash.reason, 0.0).plain
            assert "● running" in header and "step 320 / 5,000" in header and "⚡ live" in header
            assert len(dash.state.sleeps) == 2 and [p[1] for p in dash.state.phases][-1] == "wake"
            assert dash.state.curriculum.items and dash.state.curriculum.level == 2
            shot = app.export_screenshot()
            for text in ("curves", "resources", "phases", "events", "curriculum", "consolidation", "RTX&#160;3080&#160;Ti",
                         "retention&#160;per&#160;sleep", "remaining&#160;per&#160;level"):
                assert text in shot, text
            # a NaN loss (null on the wire) and VRAM past 0.85 raise alerts
            fake.emit("metrics", {"loss": float("nan")}, step=321)
            fake.advance(10, vram_fraction=0.9)
            await until(pilot, lambda: sum("⚠" in line for line in log_lines(app)) >= 2, what="alerts")
            alerts = [line for line in log_lines(app) if "⚠" in line]
            assert any("non-finite loss at step 321" in a for a in alerts)
            assert any("VRAM at 90%" in a for a in alerts)

    run(go())


def test_the_pipeline_strip_shows_level_stage_progress_and_questions_and_follows_the_run(runs):
    eng = FakeEngine(runs / "p5-run", pipeline=True)
    eng.write_history(300)  # the store's last word: level 1, dream (the fake's levels take 400 steps)
    eng.start()
    try:
        async def go():
            app = app_for(runs, eng.run_dir)
            async with app.run_test(size=(160, 48)) as pilot:
                dash = app.screen
                bar = dash.query_one(PipelineStrip)
                await until(pilot, lambda: dash.mode == "live" and bar.display and "dream" in bar.render().plain,
                            what="the strip from the store")
                text = bar.render().plain
                assert "level 1 of 10" in text and "✓ curriculum ▸ ✓ bake ▸ ✓ selfmodel ▸  dream " in text
                assert "75 of 300 questions left" in text and " 0%" in text
                eng.advance(120)  # live: 20 steps into level 2's curriculum
                await until(pilot, lambda: "285 of 300" in bar.render().plain, what="the next level")
                text = bar.render().plain
                assert "level 2 of 10" in text and " curriculum  ▸ bake" in text and "✓" not in text
                assert "20%" in text and "285 of 300 questions left" in text  # the fake's step 420
                assert "level&#160;pipeline" in app.export_screenshot()

        run(go())
    finally:
        eng.stop()


def test_a_run_without_a_pipeline_has_no_strip(runs, fake):
    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            dash = app.screen
            await until(pilot, lambda: dash.mode == "live", what="attach")
            await pilot.pause(0.6)
            assert not dash.query_one(PipelineStrip).display
            assert "level&#160;pipeline" not in app.export_screenshot()

    run(go())
    assert render_strip(None, 80).plain == "no level pipeline in this run"


def test_no_gpu_shows_no_gpu(runs):
    eng = FakeEngine(runs / "cpu-run", gpu=False)
    eng.write_history(50)
    eng.start()
    try:
        async def go():
            app = app_for(runs, eng.run_dir)
            async with app.run_test(size=(160, 48)) as pilot:
                await until(pilot, lambda: app.screen.mode == "live", what="attach")
                eng.advance(10)
                pane = app.screen.query_one(ResourcesPane)
                await until(pilot, lambda: pane.telemetry and pane.telemetry.get("gpu_name") is None
                            and "rss_mb" in pane.telemetry, what="telemetry")
                text = resources_table(pane.telemetry).plain
                assert "no GPU" in text and "VRAM" not in text.replace("VRAM n/a", "")
                assert "no&#160;GPU" in app.export_screenshot()

        run(go())
    finally:
        eng.stop()


def test_vram_alert_and_pane_follow_the_runs_own_limit(runs):
    eng = FakeEngine(runs / "tight-run", config_toml=CONFIG_TOML + "vram_limit = 0.6\n")
    eng.write_history(50)
    eng.start()
    try:
        async def go():
            app = app_for(runs, eng.run_dir)
            async with app.run_test(size=(160, 48)) as pilot:
                dash = app.screen
                await until(pilot, lambda: dash.mode == "live" and dash.state.limits.vram == 0.6, what="config read")
                eng.advance(10, vram_fraction=0.7)  # under the seeds' 0.85, over this run's 0.6
                await until(pilot, lambda: any("⚠" in line for line in log_lines(app)), what="alert")
                assert [line for line in log_lines(app) if "⚠" in line][0].endswith(
                    "VRAM at 70% of the card, past this run's limit of 60% (train.vram_limit).")
                await until(pilot, lambda: "limits  VRAM 60% (train.vram_limit)"
                            in str(dash.query_one(ResourcesPane).render()), what="limit shown")

        run(go())
    finally:
        eng.stop()


def test_engine_silent_raises_an_alert(runs, fake):
    async def go():
        app = app_for(runs, fake.run_dir, silent_after=0.6)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.screen.mode == "live", what="attach")
            await until(pilot, lambda: any("silent for" in line for line in log_lines(app)), timeout=5, what="silence")

    run(go())


def test_plots_redraw_at_most_twice_a_second_and_not_while_hidden(runs, fake, monkeypatch):
    import widgets.curves

    draws: list[float] = []
    real = widgets.curves.render_curves

    def counting(*args, **kw):
        draws.append(time.monotonic())
        return real(*args, **kw)

    monkeypatch.setattr(widgets.curves, "render_curves", counting)

    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.screen.mode == "live" and draws, what="attach")
            fake.run_live(steps_per_second=100)  # far more often than the screen may redraw
            await pilot.pause(0.5)
            start, steps = time.monotonic(), fake.step
            await pilot.pause(1.6)
            window = [t for t in draws if t >= start]
            assert fake.step - steps > 30 and 2 <= len(window) <= 4, (len(window), fake.step - steps)
            await pilot.press("i")  # the inspector covers the dashboard: its plots stay idle
            await until(pilot, lambda: isinstance(app.screen, CarryInspectorScreen), what="inspector")
            await pilot.pause(0.3)
            hidden_from = time.monotonic()
            await pilot.pause(1.2)
            assert [t for t in draws if t >= hidden_from] == []
            await pilot.press("escape")
            await until(pilot, lambda: [t for t in draws if t >= hidden_from], what="redraw when shown again")

    run(go())


# ---- read-only and degraded -------------------------------------------------------------------


def test_a_run_without_engine_opens_read_only_from_its_store(runs):
    eng = FakeEngine(runs / "done-run", status="finished")
    eng.write_history(200)  # no socket: the engine is gone

    async def go():
        app = app_for(runs, eng.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            dash = app.screen
            await until(pilot, lambda: dash.mode == "read-only" and len(dash.state.series.get("loss", ())) == 200,
                        what="read-only")
            assert "not running" in dash.reason and dash.state.status == "finished"
            await pilot.press("space")
            await pilot.pause(0.2)
            assert dash.commands == []  # nothing sent, a notification says why

    run(go())


def test_a_socket_that_does_not_answer_gives_read_only(runs):
    import socket

    eng = FakeEngine(runs / "hung-run")
    eng.write_history(100)
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(eng.socket_path))
    mute.listen(4)
    try:
        async def go():
            app = app_for(runs, eng.run_dir, hello_timeout=0.3)
            async with app.run_test(size=(160, 48)) as pilot:
                dash = app.screen
                await until(pilot, lambda: dash.mode == "read-only" and len(dash.state.series.get("loss", ())) == 100,
                            what="read-only")
                assert "did not answer" in dash.reason

        run(go())
    finally:
        mute.close()


def test_engine_going_away_turns_live_into_read_only(runs, fake):
    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            dash = app.screen
            await until(pilot, lambda: dash.mode == "live", what="attach")
            fake.stop()
            await until(pilot, lambda: dash.mode == "read-only", what="read-only")
            assert any("connecting" in line or "read-only" in line for line in log_lines(app))

    run(go())


@pytest.mark.parametrize("size", [(100, 30), (60, 16), (20, 6)])
def test_small_terminals_drop_panes_and_do_not_crash(runs, fake, size):
    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=size) as pilot:
            dash = app.screen
            await until(pilot, lambda: dash.mode == "live" and dash.state.series.get("loss"), what="attach")
            fake.advance(10)
            await pilot.pause(0.7)  # one redraw tick at this size
            w, h = size
            assert dash.has_class("-compact")
            assert dash.has_class("-tiny") == (w < 80 or h < 22)
            if dash.has_class("-tiny"):
                assert not dash.query_one("#side").display
            assert not dash.query_one("#consolidation").display or not dash.query_one("#side").display
            await pilot.resize_terminal(160, 48)
            await pilot.pause(0.3)
            assert not dash.has_class("-compact") and dash.query_one("#consolidation").display

    run(go())


# ---- inspector, runs browser, compare, launch ---------------------------------------------------


def test_carry_inspector_shows_the_snapshot_and_probes(runs, fake):
    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.screen.mode == "live", what="attach")
            await pilot.press("i")
            await until(pilot, lambda: isinstance(app.screen, CarryInspectorScreen), what="inspector")
            view = app.screen.query_one(CarryView)
            await until(pilot, lambda: view.snapshot == carry_snapshot(0), what="snapshot")
            shown = app.export_screenshot().replace("&#160;", " ")
            assert "memory, per cycle of the replayed step" in shown and "‖ΔW‖ fast weights moved" in shown
            assert [c.cmd for c in fake.commands] == ["inspect"] and fake.commands[0].args == {"slot": 0}
            await pilot.press(*"1.3..2.4...1.2.3", "enter")
            answer = app.screen.query_one("#probe-answer")
            await until(pilot, lambda: "1234341221434321" in str(answer.render()), what="answer")
            assert fake.commands[-1].cmd == "probe" and fake.commands[-1].args == {"input": "1.3..2.4...1.2.3", "reset": False}
            app.screen.query_one("#probe-input").value = "what website projects do I have?"
            await pilot.press("enter")
            await until(pilot, lambda: "carry moved z_H 4.250, z_L 6.500 from the last probe's" in
                        str(answer.render()), what="text answer")
            assert "<MEM_FACT> Harbor is a website project" in str(answer.render())
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="back")

    run(go())


def test_runs_browser_sees_new_runs_and_compares_two(runs, fake):
    other = FakeEngine(runs / "other-run", run_id="other-run", status="finished")
    other.write_history(120)

    async def go():
        app = app_for(runs, fake.run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.screen.mode == "live", what="attach")
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, RunsBrowserScreen), what="browser")
            browser = app.screen
            await until(pilot, lambda: len(browser.rows) == 2, what="two runs")
            assert {r["id"]: r["status"] for r in browser.rows} == {"fake-run": "running", "other-run": "finished"}
            late = FakeEngine(runs / "late-run", run_id="late-run")  # started from another shell
            late.write_history(10)
            await until(pilot, lambda: len(browser.rows) == 3, timeout=8, what="new run")
            while browser._selected() != other.run_dir:
                await pilot.press("down")
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
            cmp_ = app.screen
            plot = cmp_.query_one(CurvesPane).plot
            await until(pilot, lambda: len(plot.runs) == 2 and all(len(s.get("loss", ())) for _, s in plot.runs),
                        what="both loaded")
            assert [len(s.series["loss"]) for s in cmp_.states] == [300, 120]
            assert [label for label, _ in plot.runs] == ["fake-run", "other-run"]
            await pilot.press("escape", "escape")
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="back")

    run(go())


def test_launch_screen_validates_and_starts_a_run(runs, tmp_path, monkeypatch):
    import lab.runs

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "quickstart.toml").write_text('name = "qs"\n[train]\nmax_steps = 100\n')
    (configs / "broken.toml").write_text('name = "broken"\n[model]\nd_model = -5\n')
    engines: list[FakeEngine] = []

    def spawn(run_dir, resume=False):
        engines.append(FakeEngine(run_dir, run_id=Path(run_dir).name).start())

    monkeypatch.setattr(lab.runs, "spawn_engine", spawn)
    monkeypatch.setattr(lab.runs, "describe_config", lambda path, overrides=None: {"parameters": 123_456})

    async def go():
        app = LabApp(runs, configs)
        async with app.run_test(size=(160, 48)) as pilot:
            screen = app.screen
            assert isinstance(screen, LaunchScreen)
            assert [p.stem for p in screen.presets] == ["quickstart", "broken"]
            (configs / "added.toml").write_text('name = "added"\n')  # watchdog reloads the presets
            await until(pilot, lambda: [p.stem for p in screen.presets] == ["quickstart", "added", "broken"],
                        what="new preset listed")
            await until(pilot, lambda: "123,456" in str(screen.query_one("#preset-summary").render()), what="params")
            await pilot.press("down", "down")
            await until(pilot, lambda: screen.error and "model.d_model" in screen.error, what="error shown")
            assert screen.query_one("#start").disabled
            await pilot.press("up", "up")
            await until(pilot, lambda: screen.error is None, what="valid")
            screen.query_one("#overrides").value = "train.max_steps=abc"
            await until(pilot, lambda: screen.error and "train.max_steps" in screen.error, what="override error")
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            assert not [d for d in runs.iterdir()]  # nothing started
            screen.query_one("#overrides").value = "train.max_steps=50"
            await until(pilot, lambda: screen.error is None, what="valid again")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.mode == "live",
                        what="attached to the new run")
            created = [d for d in runs.iterdir() if not d.name.startswith(".")]
            assert len(created) == 1 and "max_steps = 50" in (created[0] / "config.toml").read_text()

    try:
        run(go())
    finally:
        for e in engines:
            e.stop()


# ---- screenshot -------------------------------------------------------------------------------


def test_dashboard_screenshot_matches_the_stored_one(runs, monkeypatch):
    """A read-only run at a fixed size and clock. LAB_UPDATE_SNAPSHOTS=1 rewrites the stored file."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    eng = FakeEngine(runs / "snap-run", run_id="snap-run", status="finished", clock=FIXED_CLOCK)
    eng.write_history(400)

    async def go():
        app = app_for(runs, eng.run_dir, clock=lambda: FIXED_CLOCK)
        async with app.run_test(size=(130, 40)) as pilot:
            dash = app.screen
            await until(pilot, lambda: dash.mode == "read-only" and len(dash.state.series.get("loss", ())) == 400,
                        what="loaded")
            await pilot.pause(1.2)  # two redraw ticks
            return app.export_screenshot(title="trm-lab")

    try:
        svg = run(go())
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    stored = SNAPSHOTS / "dashboard_read_only.svg"
    if os.environ.get("LAB_UPDATE_SNAPSHOTS") or not stored.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        stored.write_text(svg)
    assert svg == stored.read_text(), "screenshot changed; rerun with LAB_UPDATE_SNAPSHOTS=1 if intended"
