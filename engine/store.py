"""The run's durable record: SQLite (WAL) through sqlite-utils.

The engine writes through `RunStore`: rows are queued in memory and a background thread
inserts them in batches at most every `flush_seconds`, so the training step never waits on
disk. Consoles read through `RunReader`, which never writes and never blocks the engine
(WAL lets readers and the one writer work at once).

Tables: `runs` (one row: the run), `metrics` (long format: step, segment, key, value),
`events`, `commands`. A resume starts a new segment; rows of older segments past the
resume step are marked superseded, never deleted.

A write that fails (disk full, I/O error) keeps its rows queued and retries them at the next
tick; past MAX_PENDING_ROWS waiting rows, new rows are dropped and counted. Nothing here is
silent, but the engine has to look:
- `take_error()` after each step: a new failure comes back once, as one sentence, for an alert;
- `flush()` before a checkpoint returns False when a row queued before it is not on disk (or
  was dropped since the last flush); the checkpoint's meta then records that its rows were not
  all flushed, and the engine raises an alert instead of claiming the record is complete.

Plain Python (no torch), so the console imports it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

DB_NAME = "run.db"
BUSY_TIMEOUT_MS = 10_000
MAX_PENDING_ROWS = 100_000  # rows waiting for the disk (about a minute of a fast run); past it new rows are dropped


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.execute("PRAGMA query_only=1")
    else:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def _clean(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class RunStore:
    """The engine's writer. One per run; lives in the engine process."""

    def __init__(self, run_dir: str | Path, flush_seconds: float = 0.5):
        self.path = Path(run_dir) / DB_NAME
        self.flush_seconds = flush_seconds
        self.db = sqlite_utils.Database(_connect(self.path))
        self.db.enable_wal()
        self.db.conn.execute("PRAGMA synchronous=NORMAL")
        self._ensure_schema()
        self.segment = self._current_segment()
        self._lock = threading.Lock()
        self._pending: dict[str, list[dict]] = {"metrics": [], "events": [], "commands": []}
        self._run_update: dict[str, Any] = {}
        self._flushed = threading.Condition(self._lock)
        self._generation = 0  # increments after every completed flush
        self._ok_generation = 0  # the generation of the newest flush that wrote everything it took
        self._queued = 0  # rows in _pending
        self.dropped_rows = 0  # rows refused because MAX_PENDING_ROWS were waiting
        self._dropped_at_flush = 0  # dropped_rows when flush() last answered
        self._dropping = False  # rows are being dropped; reset by the next write that succeeds
        self.write_error: str | None = None  # the failure of the newest write; None once writes succeed
        self._unreported_failure: str | None = None  # the reason of a failure take_error() has not returned
        self._unreported_drops = False  # rows began to be dropped and take_error() has not said so
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._writer, name="run-store-writer", daemon=True)
        self._thread.start()

    # ---- schema -------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        db = self.db
        with db.conn:
            if "runs" not in db.table_names():
                db["runs"].create(
                    {"id": str, "name": str, "created": float, "updated": float, "status": str, "step": int,
                     "segment": int, "pid": int, "config": str, "info": str},
                    pk="id",
                )
            if "metrics" not in db.table_names():
                db["metrics"].create(
                    {"id": int, "step": int, "segment": int, "key": str, "value": float, "time": float,
                     "superseded": int},
                    pk="id",
                )
                db["metrics"].create_index(["key", "step"])
                db["metrics"].create_index(["step"])
            if "events" not in db.table_names():
                db["events"].create(
                    {"id": int, "step": int, "segment": int, "time": float, "kind": str, "data": str}, pk="id"
                )
                db["events"].create_index(["kind"])
            if "commands" not in db.table_names():
                db["commands"].create(
                    {"id": int, "cmd_id": str, "client": str, "received": float, "cmd": str, "args": str,
                     "applied_step": int, "ok": int, "error": str, "segment": int},
                    pk="id",
                )

    def _current_segment(self) -> int:
        row = self.db.execute("SELECT max(segment) FROM runs").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # ---- run row --------------------------------------------------------------------------

    def create_run(self, run_id: str, name: str, config_toml: str, info: dict | None = None) -> None:
        now = time.time()
        with self.db.conn:
            self.db["runs"].insert(
                {"id": run_id, "name": name, "created": now, "updated": now, "status": "starting", "step": 0,
                 "segment": 0, "pid": 0, "config": config_toml, "info": json.dumps(info or {})},
                replace=True,
            )

    def run_row(self) -> dict | None:
        rows = list(self.db["runs"].rows)
        return rows[0] if rows else None

    def update_run(self, **fields: Any) -> None:
        """Queue a change to the run row (status, step, pid...); written with the next batch."""
        with self._lock:
            self._run_update.update(fields)
        if "status" in fields:
            self._wake.set()

    def start_segment(self, resume_step: int) -> int:
        """A resume from `resume_step`: later rows of older segments become superseded."""
        self.flush()
        with self.db.conn:
            self.segment = self._current_segment() + 1
            self.db.execute("UPDATE metrics SET superseded = 1 WHERE step > ? AND superseded = 0", [resume_step])
            self.db.execute("UPDATE runs SET segment = ?, step = ?", [self.segment, resume_step])
        return self.segment

    # ---- queued writes --------------------------------------------------------------------

    def log_metrics(self, step: int, values: dict[str, float], at: float | None = None) -> None:
        at = at or time.time()
        rows = [
            {"step": step, "segment": self.segment, "key": k, "value": _clean(v), "time": at, "superseded": 0}
            for k, v in values.items()
        ]
        with self._lock:
            self._queue("metrics", rows)

    def log_event(self, step: int, kind: str, data: Any, at: float | None = None) -> None:
        row = {"step": step, "segment": self.segment, "time": at or time.time(), "kind": kind,
               "data": json.dumps(data, default=str)}
        with self._lock:
            self._queue("events", [row])

    def log_command(self, cmd_id: str, client: str, cmd: str, args: dict, applied_step: int | None,
                    ok: bool, error: str | None, received: float) -> None:
        row = {"cmd_id": cmd_id, "client": client, "received": received, "cmd": cmd,
               "args": json.dumps(args, default=str), "applied_step": applied_step, "ok": int(ok),
               "error": error, "segment": self.segment}
        with self._lock:
            self._queue("commands", [row])

    def _queue(self, table: str, rows: list[dict]) -> None:
        """Under the lock: queue rows, or drop them (counted) while MAX_PENDING_ROWS wait for a failing disk."""
        if self._queued + len(rows) > MAX_PENDING_ROWS:
            if not self._dropping:  # the first drop of this run of failures: said once
                self._dropping = self._unreported_drops = True
            self.dropped_rows += len(rows)
            return
        self._pending[table].extend(rows)
        self._queued += len(rows)

    def take_error(self) -> str | None:
        """A write failure (or the start of dropped rows) not reported before, as one sentence; else None."""
        with self._lock:
            failure, drops = self._unreported_failure, self._unreported_drops
            self._unreported_failure, self._unreported_drops = None, False
            reason = self.write_error or failure
            if drops:
                return (f"the run store could not write {self.path.name} ({reason or 'its writes fall behind'}) and "
                        f"{MAX_PENDING_ROWS} rows wait in memory, so new rows are dropped until writes succeed.")
            if failure:
                return (f"the run store could not write {self.path.name} ({reason}); {self._queued} rows wait in "
                        "memory and are retried.")
        return None

    def _take(self) -> tuple[dict[str, list[dict]], dict[str, Any]]:
        with self._lock:
            batch = {k: v for k, v in self._pending.items() if v}
            self._pending = {"metrics": [], "events": [], "commands": []}
            self._queued = 0
            update, self._run_update = self._run_update, {}
        return batch, update

    def _write(self, batch: dict[str, list[dict]], update: dict[str, Any]) -> None:
        if not batch and not update:
            return
        with self.db.conn:
            for table, rows in batch.items():
                self.db[table].insert_all(rows, batch_size=500)
            if update:
                update["updated"] = time.time()
                sets = ", ".join(f"{k} = ?" for k in update)
                self.db.execute(f"UPDATE runs SET {sets}", list(update.values()))

    def _writer(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self._flush_guarded()
        self._flush_guarded()

    def _flush_guarded(self) -> bool:
        """One flush; a failure is recorded for take_error() (once per run of failures), never raised."""
        try:
            self._flush_once()
        except Exception as exc:  # the writer thread must outlive any failure: the rows stay queued
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            with self._lock:
                if self.write_error is None:  # the first failure after a success: said once
                    self._unreported_failure = reason
                self.write_error = reason
            return False
        with self._lock:
            self.write_error = None
            self._dropping = False
        return True

    def _flush_once(self) -> None:
        batch, update = self._take()
        ok = False
        try:
            self._write(batch, update)
            ok = True
        except BaseException:
            # Disk full or similar: put the rows back so nothing is lost, retry on the next tick.
            with self._lock:
                for k, rows in batch.items():
                    self._pending[k][:0] = rows
                    self._queued += len(rows)
                for k, v in update.items():
                    self._run_update.setdefault(k, v)
            raise
        finally:
            with self._lock:
                self._generation += 1
                if ok:
                    self._ok_generation = self._generation
                self._flushed.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued before this call has been tried; True only when all of it is
        on disk and no row was dropped since the last flush(). A failing disk answers False after
        its next attempt, not after `timeout`."""
        if not self._thread.is_alive():
            written = self._flush_guarded()
            with self._lock:
                return self._settle(written)
        with self._lock:
            target = self._generation + 2  # one flush may already be mid-way with older rows
        self._wake.set()
        deadline = time.time() + timeout
        with self._lock:
            while self._generation < target and time.time() < deadline:
                self._wake.set()
                self._flushed.wait(0.05)
            return self._settle(self._ok_generation >= target)

    def _settle(self, written: bool) -> bool:
        """Under the lock: flush()'s answer, counting the rows dropped since it last answered."""
        dropped, self._dropped_at_flush = self.dropped_rows - self._dropped_at_flush, self.dropped_rows
        return written and dropped == 0

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.db.conn.close()


class RunReader:
    """Read-only view of a run's store, safe to poll while the engine writes."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / DB_NAME
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        self.conn = _connect(self.path, readonly=True)
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self.conn.close()

    def _tuples(self, sql: str, params: list) -> list[tuple]:
        """Rows as plain tuples: a console polls up to 200k of them, and sqlite3.Row -> tuple costs ~2x."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, params).fetchall()

    def run(self) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs LIMIT 1").fetchone()
        return dict(row) if row else None

    def metric_keys(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT key FROM metrics ORDER BY key")]

    def metric(self, key: str, since_id: int = 0, include_superseded: bool = False) -> list[tuple[int, int, float | None]]:
        """Rows (id, step, value) of one series, in step order within each segment."""
        sql = "SELECT id, step, value FROM metrics WHERE key = ? AND id > ?"
        if not include_superseded:
            sql += " AND superseded = 0"
        return self._tuples(sql + " ORDER BY id", [key, since_id])

    def metrics_since(self, since_id: int = 0, limit: int = 200_000) -> list[tuple[int, str, int, float | None]]:
        """New live rows (id, key, step, value) of every series after `since_id`: a console's poll."""
        return self._tuples(
            "SELECT id, key, step, value FROM metrics WHERE id > ? AND superseded = 0 ORDER BY id LIMIT ?",
            [since_id, limit])

    def latest(self, keys: Iterable[str] | None = None) -> dict[str, tuple[int, float | None]]:
        """The newest (step, value) of every series (or of `keys`)."""
        rows = self.conn.execute(
            "SELECT key, step, value FROM metrics WHERE id IN (SELECT max(id) FROM metrics WHERE superseded = 0 GROUP BY key)"
        )
        out = {r[0]: (r[1], r[2]) for r in rows}
        if keys is not None:
            out = {k: out[k] for k in keys if k in out}
        return out

    def events(self, since_id: int = 0, kinds: Iterable[str] | None = None, limit: int = 10_000) -> list[dict]:
        sql = "SELECT * FROM events WHERE id > ?"
        params: list[Any] = [since_id]
        if kinds:
            kinds = list(kinds)
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        rows = self.conn.execute(sql + " ORDER BY id LIMIT ?", params + [limit])
        out = []
        for r in rows:
            d = dict(r)
            d["data"] = json.loads(d["data"]) if d["data"] else None
            out.append(d)
        return out

    def commands(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM commands ORDER BY id")]
