import threading
import time

from engine import store as store_module
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


# ---- write failures are never silent ----------------------------------------------------------


def failing_writes(store: RunStore) -> None:
    """A real SQLite write failure: the store's own connection refuses to write."""
    store.db.conn.execute("PRAGMA query_only=1")


def working_writes(store: RunStore) -> None:
    store.db.conn.execute("PRAGMA query_only=0")


def test_a_failing_write_is_reported_once_and_flush_says_the_rows_are_not_on_disk(tmp_path):
    s = RunStore(tmp_path, flush_seconds=0.05)
    s.create_run("r", "r", "")
    assert s.flush() is True and s.take_error() is None
    failing_writes(s)
    for i in range(10):
        s.log_metrics(i, {"loss": 1.0})
    t0 = time.monotonic()
    assert s.flush() is False
    assert time.monotonic() - t0 < 5  # answered at the next attempt, not after the 30 s timeout
    error = s.take_error()
    assert error.startswith("the run store could not write run.db (attempt to write a readonly database)")
    assert error.endswith("are retried.") and error.count(". ") == 0
    s.log_metrics(10, {"loss": 1.0})
    assert s.flush() is False
    assert s.take_error() is None  # the same run of failures is reported once
    working_writes(s)
    assert s.flush() is True  # the queued rows were kept and written
    assert [row[1] for row in RunReader(tmp_path).metric("loss")] == list(range(11))
    failing_writes(s)  # a new failure after a success is reported again
    s.log_metrics(11, {"loss": 1.0})
    assert s.flush() is False and "readonly" in s.take_error()
    working_writes(s)
    s.close()


def test_rows_past_the_limit_are_dropped_counted_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_PENDING_ROWS", 100)
    s = RunStore(tmp_path, flush_seconds=0.05)
    s.create_run("r", "r", "")
    failing_writes(s)
    for i in range(150):
        s.log_metrics(i, {"loss": 1.0})
    assert s.dropped_rows == 50
    assert s.flush() is False
    error = s.take_error()
    assert "100 rows wait in memory, so new rows are dropped until writes succeed." in error, error
    assert s.take_error() is None
    working_writes(s)
    assert s.flush() is True  # the rows dropped before were already reported by the last flush
    assert len(RunReader(tmp_path).metric("loss")) == 100
    s.log_metrics(150, {"loss": 1.0})
    assert s.flush() is True
    s.close()


def test_flush_is_false_when_rows_were_dropped_since_the_last_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_PENDING_ROWS", 10)
    s = RunStore(tmp_path, flush_seconds=60)  # the writer only writes when asked
    s.create_run("r", "r", "")
    for i in range(11):
        s.log_metrics(i, {"loss": 1.0})  # the eleventh row finds ten waiting
    assert s.dropped_rows == 1 and "writes fall behind" in s.take_error()
    assert s.flush() is False  # ten rows are on disk, the eleventh never will be
    assert s.flush() is True
    s.close()


def test_a_writer_exception_that_is_not_sqlite_keeps_the_writer_alive(tmp_path, monkeypatch):
    s = RunStore(tmp_path, flush_seconds=0.05)
    s.create_run("r", "r", "")
    write = s._write

    def broken(batch, update):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(s, "_write", broken)
    s.log_metrics(1, {"loss": 1.0})
    assert s.flush() is False and "Input/output error" in s.take_error()
    monkeypatch.setattr(s, "_write", write)
    assert s._thread.is_alive() and s.flush() is True
    assert len(RunReader(tmp_path).metric("loss")) == 1
    s.close()
