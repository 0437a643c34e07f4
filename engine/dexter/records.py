"""Tolerant readers of the four raw formats an assistant's records come in.

    d2_memory.json              {"conversations", "facts", "entities", "topics", "summaries"}: lists of objects
    brain.db                    SQLite: facts(id, text, subject), triples(subject, predicate, object),
                                patterns(id, trigger, steps, constraints), history(id, query, context, fact_ids)
    training_data_fast.jsonl    one UI interaction per line: instruction, ui_context, available_tools, tool_call
    art_*.json                  one tool execution each (or a list of them): task, tool, arguments, status,
                                error, retry_of

A file or record that cannot be used costs only itself: `read_raw` collects one sentence per problem, naming
the file, the record and what was wrong, and reads everything else. List fields stored as text in SQLite
(steps, constraints, fact_ids) hold JSON lists.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

D2_MEMORY = "d2_memory.json"
BRAIN_DB = "brain.db"
UI_CALLS = "training_data_fast.jsonl"
ARTIFACTS = "art_*.json"
MAX_TEXT = 2000  # characters in one text field: longer is a damaged record, not a memory
MAX_OUTPUT = 8000  # characters of a tool's output kept; outputs run long, so a longer one is cut, not refused
MAX_FILE_BYTES = 512 * 2**20


class BadRecord(ValueError):
    """What is wrong with one record, as the end of a sentence ("has no text")."""


@dataclass(frozen=True)
class Fact:
    id: str
    text: str
    subject: str = ""
    topic: str = ""


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str
    fact_ids: tuple[str, ...] = ()  # the facts this turn asked for (user) or used (assistant)


@dataclass(frozen=True)
class Conversation:
    id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Entity:
    name: str
    type: str
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topic:
    name: str
    fact_ids: tuple[str, ...]


@dataclass(frozen=True)
class Summary:
    conversation_id: str
    text: str
    goal: str = ""
    plan: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Triple:
    subject: str
    predicate: str
    object: str


@dataclass(frozen=True)
class Pattern:
    id: str
    trigger: str  # the goal the pattern answers
    steps: tuple[str, ...]
    constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistoryEntry:
    id: str
    query: str
    context: str
    fact_ids: tuple[str, ...]


@dataclass(frozen=True)
class UICall:
    line: int
    instruction: str
    context: str  # the UI context as "key: value" pairs
    tool: str
    available: tuple[str, ...]


@dataclass(frozen=True)
class Artifact:
    id: str
    session: str
    task: str
    tool: str
    available: tuple[str, ...]
    ok: bool
    error: str = ""
    retry_of: str = ""
    result: str = ""  # what the call printed; read for the vocabulary, no layout uses it yet


@dataclass
class RawRecords:
    facts: dict[str, Fact] = field(default_factory=dict)
    conversations: list[Conversation] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    topics: list[Topic] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
    triples: list[Triple] = field(default_factory=list)
    patterns: list[Pattern] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    ui_calls: list[UICall] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the files that were read (some of them may be skipped whole)
    problems: list[str] = field(default_factory=list)  # one sentence each

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in
                ("facts", "conversations", "entities", "topics", "summaries", "triples", "patterns", "history",
                 "ui_calls", "artifacts")}


# ---- field checks -------------------------------------------------------------------------------


def text(rec: dict, key: str, required: bool = True) -> str:
    value = rec.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadRecord(f"has no {key}")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # ids stored as numbers
    if not isinstance(value, str):
        raise BadRecord(f"has a {key} that is {type(value).__name__}, not text")
    if len(value) > MAX_TEXT:
        raise BadRecord(f"has a {key} of {len(value)} characters (at most {MAX_TEXT})")
    return " ".join(value.split())


def texts(rec: dict, key: str, required: bool = False) -> tuple[str, ...]:
    """A list of strings; in SQLite it is stored as a JSON list."""
    value = rec.get(key)
    if value is None or value == "":
        if required:
            raise BadRecord(f"has no {key}")
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRecord(f"has a {key} that is not a JSON list") from None
    if not isinstance(value, list):
        raise BadRecord(f"has a {key} that is {type(value).__name__}, not a list")
    out = tuple(text({key: v}, key) for v in value)
    if required and not out:
        raise BadRecord(f"has an empty {key}")
    return out


def _output(rec: dict) -> str:
    """A tool's output as text: a string, or any JSON value written out, cut to MAX_OUTPUT characters."""
    value = rec.get("result")
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    return " ".join(value[: 4 * MAX_OUTPUT].split())[:MAX_OUTPUT]


def _label(rec: Any, index: int, key: str = "id") -> str:
    """How a sentence names a record: its id when it has a usable one, else its place in the list."""
    if isinstance(rec, dict) and isinstance(rec.get(key), (str, int)) and str(rec.get(key)).strip():
        return f"record {index} ({key} {str(rec[key])[:40]!r})"
    return f"record {index}"


# ---- the readers ---------------------------------------------------------------------------------


def _load_json(path: Path, out: RawRecords) -> Any:
    """The parsed file, or None (and one problem) when it cannot be read as JSON."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            out.problems.append(f"{path}: the file is over {MAX_FILE_BYTES >> 20} MiB; it was skipped.")
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        out.problems.append(f"{path}: the file is not UTF-8 text; it was skipped.")
    except json.JSONDecodeError as exc:
        out.problems.append(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
                            "the file was skipped.")
    except OSError as exc:
        out.problems.append(f"{path}: could not be read ({exc.strerror or exc}); it was skipped.")
    return None


def _each(path: Path, section: str, items: Any, out: RawRecords, parse, key: str = "id") -> None:
    """parse(record) for every record of a list section; a bad record costs only itself."""
    if items is None:
        return
    if not isinstance(items, list):
        out.problems.append(f"{path}: {section} is {type(items).__name__}, not a list of records; it was skipped.")
        return
    for i, rec in enumerate(items):
        try:
            if not isinstance(rec, dict):
                raise BadRecord(f"is {type(rec).__name__}, not an object")
            parse(rec)
        except BadRecord as exc:
            out.problems.append(f"{path}: {section} {_label(rec, i, key)} {exc}; it was skipped.")


def read_d2_memory(path: Path, out: RawRecords) -> None:
    data = _load_json(path, out)
    if data is None:
        return
    if not isinstance(data, dict):
        out.problems.append(f"{path}: the file holds a {type(data).__name__}, not an object with conversations, "
                            "facts, entities, topics and summaries; it was skipped.")
        return

    def fact(rec):
        f = Fact(text(rec, "id"), text(rec, "text"), text(rec, "subject", False), text(rec, "topic", False))
        out.facts.setdefault(f.id, f)

    def conversation(rec):
        turns = rec.get("turns")
        if not isinstance(turns, list) or not turns:
            raise BadRecord("has no list of turns")
        parsed = []
        for j, t in enumerate(turns):
            if not isinstance(t, dict):
                raise BadRecord(f"has turn {j} that is {type(t).__name__}, not an object")
            role = text(t, "role")
            if role not in ("user", "assistant"):
                raise BadRecord(f"has turn {j} with role {role!r} (user or assistant)")
            try:
                parsed.append(Turn(role, text(t, "text"), texts(t, "fact_ids")))
            except BadRecord as exc:
                raise BadRecord(f"has turn {j} that {exc}") from None
        out.conversations.append(Conversation(text(rec, "id"), tuple(parsed)))

    def entity(rec):
        attributes = rec.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise BadRecord("has attributes that are not an object")
        pairs = tuple((str(k), text(attributes, k)) for k in sorted(attributes))
        out.entities.append(Entity(text(rec, "name"), text(rec, "type", False), pairs))

    def topic(rec):
        out.topics.append(Topic(text(rec, "name"), texts(rec, "fact_ids", required=True)))

    def summary(rec):
        out.summaries.append(Summary(text(rec, "conversation_id", False), text(rec, "text"), text(rec, "goal", False),
                                     texts(rec, "plan"), texts(rec, "constraints")))

    _each(path, "facts", data.get("facts"), out, fact)
    _each(path, "conversations", data.get("conversations"), out, conversation)
    _each(path, "entities", data.get("entities"), out, entity, key="name")
    _each(path, "topics", data.get("topics"), out, topic, key="name")
    _each(path, "summaries", data.get("summaries"), out, summary, key="conversation_id")


BRAIN_TABLES = {
    "facts": ("id", "text"),
    "triples": ("subject", "predicate", "object"),
    "patterns": ("trigger", "steps"),
    "history": ("query", "fact_ids"),
}


def read_brain_db(path: Path, out: RawRecords) -> None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        out.problems.append(f"{path}: could not be opened as SQLite ({exc}); it was skipped.")
        return
    db.row_factory = sqlite3.Row
    try:
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            out.problems.append(f"{path}: not a readable SQLite database ({exc}); it was skipped.")
            return
        for table, needed in BRAIN_TABLES.items():
            if table not in tables:
                out.problems.append(f"{path}: there is no table {table}; its records were not read.")
                continue
            try:
                rows = [dict(r) for r in db.execute(f"SELECT * FROM {table}")]  # noqa: S608 (a fixed table name)
            except sqlite3.DatabaseError as exc:
                out.problems.append(f"{path}: table {table} could not be read ({exc}); its records were not read.")
                continue
            missing = [c for c in needed if rows and c not in rows[0]]
            if missing:
                out.problems.append(f"{path}: table {table} has no column {', '.join(missing)}; "
                                    "its records were not read.")
                continue
            _each(path, f"table {table}", rows, out, _BRAIN_PARSERS[table](out), key="id")
    finally:
        db.close()


def _brain_facts(out):
    def parse(rec):
        f = Fact(text(rec, "id"), text(rec, "text"), text(rec, "subject", False), text(rec, "topic", False))
        out.facts.setdefault(f.id, f)
    return parse


def _brain_triples(out):
    return lambda rec: out.triples.append(Triple(text(rec, "subject"), text(rec, "predicate"), text(rec, "object")))


def _brain_patterns(out):
    return lambda rec: out.patterns.append(Pattern(text(rec, "id", False), text(rec, "trigger"),
                                                   texts(rec, "steps", required=True), texts(rec, "constraints")))


def _brain_history(out):
    return lambda rec: out.history.append(HistoryEntry(text(rec, "id", False), text(rec, "query"),
                                                       text(rec, "context", False),
                                                       texts(rec, "fact_ids", required=True)))


_BRAIN_PARSERS = {"facts": _brain_facts, "triples": _brain_triples, "patterns": _brain_patterns,
                  "history": _brain_history}


def _ui_context(rec: dict) -> str:
    ctx = rec.get("ui_context") or {}
    if isinstance(ctx, str):
        return text(rec, "ui_context")
    if not isinstance(ctx, dict):
        raise BadRecord("has a ui_context that is neither an object nor text")
    return " ".join(f"{k}: {text(ctx, k)}" for k in sorted(ctx) if ctx[k] not in (None, ""))


def _tool_name(rec: dict) -> str:
    call = rec.get("tool_call")
    if not isinstance(call, dict):
        raise BadRecord("has no tool_call object")
    return text(call, "name")


def read_ui_calls(path: Path, out: RawRecords) -> None:
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        out.problems.append(f"{path}: could not be read ({exc.strerror or exc}); it was skipped.")
        return
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRecord("is not UTF-8 text") from None
            except json.JSONDecodeError as exc:
                raise BadRecord(f"is not valid JSON ({exc.msg} at column {exc.colno}; a truncated line?)") from None
            if not isinstance(rec, dict):
                raise BadRecord(f"is {type(rec).__name__}, not an object")
            out.ui_calls.append(UICall(n, text(rec, "instruction"), _ui_context(rec), _tool_name(rec),
                                       texts(rec, "available_tools")))
        except BadRecord as exc:
            out.problems.append(f"{path}: line {n} {exc}; it was skipped.")


def read_artifact(path: Path, out: RawRecords) -> None:
    data = _load_json(path, out)
    if data is None:
        return
    items = data if isinstance(data, list) else [data]

    def artifact(rec):
        status = text(rec, "status")
        if status not in ("success", "error"):
            raise BadRecord(f"has status {status!r} (success or error)")
        error = text(rec, "error", required=status == "error")
        out.artifacts.append(Artifact(text(rec, "id"), text(rec, "session", False), text(rec, "task"),
                                      text(rec, "tool"), texts(rec, "available_tools"), status == "success",
                                      error, text(rec, "retry_of", False), _output(rec)))

    if not all(isinstance(r, dict) for r in items):
        out.problems.append(f"{path}: the file holds a {type(data).__name__} that is not an artifact object or a list "
                            "of them; it was skipped.")
        return
    _each(path, "artifacts", items, out, artifact)


def read_raw(raw_dir: str | Path) -> RawRecords:
    """Every record of the four formats found in `raw_dir`, and one sentence per problem met."""
    raw_dir = Path(raw_dir)
    out = RawRecords()
    readers = [(raw_dir / D2_MEMORY, read_d2_memory), (raw_dir / BRAIN_DB, read_brain_db),
               (raw_dir / UI_CALLS, read_ui_calls)]
    readers += [(p, read_artifact) for p in sorted(raw_dir.glob(ARTIFACTS))]
    for path, reader in readers:
        if path.is_file():
            out.files.append(path.name)
            reader(path, out)
    return out
