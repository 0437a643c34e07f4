"""The event schemas of engine.protocol, held against what the real engine sends and what the fake engine
(the console tests' stand-in) sends, so that a drift between the two fails here instead of hiding in the UI."""

from __future__ import annotations

import time

import pytest

from engine import protocol
from engine.protocol import EVENT_DATA, EVENTS, check_data, check_event
from lab.client import ConnectionLost, EngineClient
from tests.fake_engine import FakeEngine, SchemaDrift, carry_snapshot



def layout(value):
    """The nesting and JSON types of a value, without its numbers: what two snapshots must share."""
    if isinstance(value, dict):
        return {k: layout(v) for k, v in value.items()}
    if isinstance(value, list):
        return [layout(value[0])] if value else []
    return protocol._json_type(value)


# ---- the schemas themselves ---------------------------------------------------------------------


def test_every_event_kind_has_a_schema():
    assert set(EVENT_DATA) == set(EVENTS)


def test_check_event_names_every_problem():
    good = protocol.event("consolidation", 40, 1.0, {
        "sleep": 1, "mode": "replay", "memory_change": -0.01, "weights_change": 0.4, "importance_change": 0.0,
        "consolidation_loss": float("nan"), "retention_before": 0.5, "retention_after": 0.6, "pruned": 0, "buffer": 8})
    assert check_event(good) == []
    bad = dict(good, step="40", data={k: v for k, v in good["data"].items() if k != "weights_change"})
    bad["data"].update(pruned=1.5, mode="nap", extra=1)
    assert sorted(check_event(bad)) == sorted([
        "message.step: expected integer, got string",
        "consolidation: missing 'weights_change'",
        "consolidation.pruned: expected integer, got number",
        "consolidation.mode: 'nap' is not one of replay, replay-surprise, distill, dream",
        "consolidation: unexpected key 'extra'",
    ])
    snapshot = carry_snapshot()
    snapshot["memory_change"] = [[0.1, 0.2], [0.3, "0.4"]]
    assert check_data("carry", snapshot) == ["carry.memory_change[1][1]: expected number, got string"]
    assert check_data("metrics", {"loss": None}) == ["metrics.loss: expected number, got null"]
    assert check_event({"type": "ack"}) == ["not an event message (type 'ack')"]
    assert check_event(protocol.event("status", 1, 1.0, {"status": "dozing"})) == [
        "status.status: 'dozing' is not one of " + ", ".join(protocol.STATUSES)]


# ---- the fake engine ----------------------------------------------------------------------------


def read_until(client: EngineClient, done, timeout: float = 20.0) -> list[dict]:
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    while not done(messages):
        assert time.monotonic() < deadline, "the fake engine did not send what was expected in time"
        messages += client.read(0.1)
    return messages


def test_the_fake_engine_sends_only_what_the_schema_allows(tmp_path):
    fake = FakeEngine(tmp_path / "fake-run", pipeline=True)  # a level pipeline: its events, `stage` answered
    fake.write_history(90)  # every stored event goes through the schema too
    fake.start()
    client = EngineClient(fake.run_dir)
    try:
        client.connect()
        fake.advance(20)
        fake.run_live(steps_per_second=2000, stop_at=fake.step + 520)  # through a sleep and its consolidation
        messages = read_until(client, lambda ms: {"consolidation", "curriculum"} <= {m.get("event") for m in ms})
        args = {"inspect": {"slot": 1}, "probe": {"input": "1.2.", "reset": False}}
        sent = [client.send(cmd, **args.get(cmd, {})) for cmd in protocol.COMMANDS]  # stop last: it ends the live run
        messages += read_until(client, lambda ms: all(p.state != "pending" for p in sent))
        with pytest.raises(SchemaDrift, match="missing 'weights_change'"):
            fake.emit("consolidation", {"memory_change": 0.1})  # the fake's old shape
    finally:
        client.close()
        fake.stop()
    events = [m for m in messages if m.get("type") == "event"]
    assert [p for m in events for p in check_event(m)] == []
    seen = {m["event"] for m in events}
    assert seen >= set(EVENTS) - {"alert", "eval"}, seen  # the fake has no alerts or evaluations of its own
    assert all(p.ok for p in sent)
    [inspected] = [p for p in sent if p.cmd == "inspect"]
    assert check_data("carry", inspected.result) == []
    [stage] = [p for p in sent if p.cmd == "stage"]
    assert check_data("pipeline", stage.result) == []


# ---- the real engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A few steps of the real engine in this process, with a neural memory, a sleep, the curriculum, an
    evaluation, an out-of-memory back-off (injected) and two commands over its socket. Returns (every event
    message, the ack of `inspect`, the config)."""
    from engine.config import from_dict
    from engine.faults import FAULTS_ENV
    from engine.trainer import Trainer

    cfg = from_dict({
        "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "H_cycles": 2, "L_cycles": 1, "halt_max_steps": 2,
                  "memory": "titans-mag", "window": 4, "d_mem": 8, "memory_chunk": 4, "persistent_tokens": 2},
        "task": {"name": "arithmetic"},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": 12, "threads": 1, "device": "cpu"},
        "eval": {"every": 6, "n_puzzles": 8, "batch_size": 8}, "checkpoint": {"every": 0},
        "log": {"flush_seconds": 0.05, "telemetry_seconds": 0.1, "print_seconds": 100.0},
        "sleep": {"enabled": True, "wake_steps": 5, "sleep_steps": 4, "probe_size": 4},
        "curriculum": {"enabled": True, "questions": 20, "levels": 1, "mastery": 2, "max_epochs": 1000},
    })
    run_dir = tmp_path_factory.mktemp("real") / "run"
    run_dir.mkdir()
    events: list[dict] = []
    client = EngineClient(run_dir)
    sent = []

    def on_event(message: dict) -> None:  # runs on the engine's thread, at its step boundaries
        events.append(message)
        if message["event"] != "metrics":
            return
        if not sent:
            client.connect()
            sent.extend([client.send("inspect", slot=0), client.send("status")])
        if sum(e["event"] == "command" for e in events) < len(sent):
            time.sleep(0.2)  # give the socket's thread time to queue the commands for the next boundary

    mp = pytest.MonkeyPatch()
    mp.setenv(FAULTS_ENV, "oom@3")
    try:
        trainer = Trainer(run_dir, cfg, output="quiet", emit=on_event)
        assert trainer.run() == 0
        try:
            while True:
                client.read(0.2)  # the acks still on their way
        except ConnectionLost:
            pass
    finally:
        mp.undo()
        client.close()
    events.append(protocol.event("carry", 0, time.time(), trainer.model.inspect(trainer.carry, 1)))
    [inspected] = [p for p in sent if p.cmd == "inspect"]
    assert inspected.ok, inspected.error
    return events, inspected.result, cfg


def real_problems(events) -> set[str]:
    return {p for m in events for p in check_event(m)}


def test_the_real_engine_sends_only_what_the_schema_allows(real_run):
    events, _, _ = real_run
    assert real_problems(events) == set()
    # every kind was exercised but the level pipeline's, which tests/test_pipeline.py checks on a pipeline run
    assert {m["event"] for m in events} == set(EVENTS) - {"pipeline"}


def test_the_fake_carry_snapshot_has_the_real_ones_shape(real_run):
    events, inspected, cfg = real_run
    assert check_data("carry", inspected) == []
    assert layout(carry_snapshot()) == layout(inspected)
    [streamed] = [m["data"] for m in events if m["event"] == "carry" and m["data"]["slot"] == 0]
    assert streamed == inspected  # other consoles see what the asker saw
    T, blocks = cfg.model.H_cycles, cfg.model.n_layers
    for key in ("memory_change", "memory_surprise"):  # one row per cycle, one entry per block
        assert len(inspected[key]) == T and all(len(row) == blocks for row in inspected[key]), key
    assert len(inspected["z_H_change"]) == T and len(inspected["z_H_norms"]) == T + 1


def test_telemetry_counts_the_cores_this_process_may_use():
    import os

    import torch

    from engine.telemetry import Telemetry

    sample = Telemetry(torch.device("cpu")).sample()
    assert check_data("telemetry", sample) == []
    assert sample["cpu_count"] == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
