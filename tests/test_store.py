import threading
import time

from engine.store import RunReader, RunStore


def test_batched_writes_and_segments(tmp_path):
    s = RunStore(tmp_path, flush_seconds=0.05)
    s.create_run("r", "r", "")
    for i in range(1, 101):
        s.log_metrics(i, {"loss": 1.0 / i})
    s.flush()
    r = RunReader(tmp_path)
    assert [row[1] for row in r.metric("loss")] == list(range(1, 101))
    s.start_segment(60)  # a resume from step 60
    for i in range(61, 71):
        s.log_metrics(i, {"loss": 0.0})
    s.flush()
    live = r.metric("loss")
    assert [row[1] for row in live] == list(range(1, 71))
    assert len(r.metric("loss", include_superseded=True)) == 110  # nothing deleted
    s.close()


def test_writes_are_off_the_hot_path(tmp_path):
    s = RunStore(tmp_path, flush_seconds=0.5)
    s.create_run("r", "r", "")
    t0 = time.perf_counter()
    for i in range(2000):
        s.log_metrics(i, {"a": 1.0, "b": 2.0, "c": 3.0})
    elapsed = time.perf_counter() - t0
    r = RunReader(tmp_path)
    assert r.metric("a") == []  # still queued: nothing was written synchronously
    s.flush()
    assert len(r.metric("a")) == 2000
    assert elapsed < 1.0
    s.close()


def test_reader_polling_never_sees_locked(tmp_path):
    s = RunStore(tmp_path, flush_seconds=0.01)
    s.create_run("r", "r", "")
    errors = []
    stop = threading.Event()

    def poll():
        r = RunReader(tmp_path)
        while not stop.is_set():
            try:
                r.latest()
                r.events()
                r.run()
            except Exception as exc:  # noqa: BLE001 - the test records any failure
                errors.append(exc)
        r.close()

    threads = [threading.Thread(target=poll) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(3000):
        s.log_metrics(i, {"x": float(i)})
        if i % 100 == 0:
            s.log_event(i, "alert", {"i": i})
    s.flush()
    stop.set()
    for t in threads:
        t.join()
    s.close()
    assert errors == []
