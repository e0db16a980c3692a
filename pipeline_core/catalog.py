"""The catalogue: ``data/catalog.sqlite``, the one record of what is where (SPEC §11.1).

It holds:

* ``raw_files`` — every raw export ingested, in ingestion order (the row id): its name (as
  bytes-safe text), size, mtime, sha256, rows in/kept/dropped, instrument, first and last bar,
  archived path and the run that ingested it. A file whose sha256 is here is not ingested again.
* ``files`` — every store year file and monthly result file: path (relative to the data root),
  kind, sha256, size, rows, first and last timestamp, the run that wrote it.
* ``intents`` — a data write between its rename and its record (see below).
* ``changes`` — per instrument, the range of bar times changed and not yet analysed.
* ``analyzer`` — per instrument, the analysis-settings hash it was analysed with, the dates that
  hold provisional rows, and whether a full re-analysis was asked for (after a rebuild).
* ``merge_journal`` — which monthly groups of a retained run folder are already written.

The write protocol of a data file and its record (:func:`write_parquet_recorded`): the old
file's sha256 is checked against its record (a mismatch is damage and stops the write); the
new file is written to a temporary file and fsynced; its sha256 is recorded as an *intent*; it
is renamed over the destination; then the record and the intent's removal commit in one
transaction. A crash after the rename leaves an intent whose hash matches the file:
:func:`reconcile` records it at the next start and says so.

The database is SQLite in WAL mode with ``synchronous=FULL`` and a busy timeout; transactions
are short (``BEGIN IMMEDIATE``), so the analyzer's concurrent processes share it safely. Nothing
else opens the database file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pipeline_core import clock
from pipeline_core.fsutil import (
    atomic_path,
    fsync_dir,
    fsync_file,
    read_json,
    replace_durably,
    temp_beside,
)
from pipeline_core.osfiles import fail_point
from pipeline_core.settings import CHICAGO, Settings, describe_analysis_change

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000
STORE = "store"
MONTHLY = "monthly"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_files (
    id INTEGER PRIMARY KEY,            -- ingestion order
    name TEXT NOT NULL,                -- bytes-safe: invalid UTF-8 kept as surrogate escapes
    size INTEGER NOT NULL,
    mtime_ns INTEGER,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL,              -- ingested | already_ingested | recovered
    form TEXT,
    instrument TEXT,
    rows_in INTEGER,
    rows_kept INTEGER,
    dropped TEXT,                      -- JSON: rows dropped by rule
    duplicates INTEGER,
    first_bar TEXT,
    last_bar TEXT,
    changed_first TEXT,
    changed_last TEXT,
    archived_path TEXT,                -- relative to the data root; NULL when deleted or kept
    ingested_at TEXT NOT NULL,
    run_id TEXT
);
CREATE INDEX IF NOT EXISTS raw_files_sha ON raw_files(sha256);
CREATE INDEX IF NOT EXISTS raw_files_inst ON raw_files(instrument, id);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,             -- relative to the data root
    kind TEXT NOT NULL,                -- store | monthly
    subject TEXT,                      -- instrument (store) or stream (monthly)
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    rows INTEGER,
    first TEXT,
    last TEXT,
    run_id TEXT,
    written_at TEXT NOT NULL,
    analysis_hash TEXT                 -- monthly files: the analysis settings of their rows
);
CREATE TABLE IF NOT EXISTS intents (
    path TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    rows INTEGER,
    first TEXT,
    last TEXT,
    run_id TEXT,
    created TEXT NOT NULL,
    analysis_hash TEXT
);
CREATE TABLE IF NOT EXISTS changes (
    instrument TEXT PRIMARY KEY,
    first TEXT NOT NULL,
    last TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS analyzer (
    instrument TEXT PRIMARY KEY,
    analysis_hash TEXT,
    analysis_settings TEXT,            -- JSON: the settings the results were computed with
    engine_version TEXT,
    provisional_dates TEXT NOT NULL DEFAULT '[]',
    full_requested TEXT,               -- why a full re-analysis is due, or NULL
    last_run_id TEXT,
    updated TEXT
);
CREATE TABLE IF NOT EXISTS merge_journal (
    journal_key TEXT PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    done TEXT NOT NULL                 -- JSON list of group ids already written
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
"""


class CatalogError(Exception):
    """The catalogue cannot be opened or read: names the file and what failed."""


class DamageError(Exception):
    """A data file that does not match its catalogue record or fails its checksums.

    ``path`` is the file, ``what`` says what failed; ``str()`` names both and the repair.
    """

    def __init__(self, path: Path, what: str, repair: str = "") -> None:
        self.path = Path(path)
        self.what = what
        self.repair = repair
        super().__init__(f"{path}: {what}" + (f"; {repair}" if repair else ""))


@dataclass(frozen=True)
class FileRecord:
    """The catalogue's record of one data file."""

    path: str
    kind: str
    subject: str | None
    sha256: str
    size: int
    rows: int | None
    first: str | None
    last: str | None
    run_id: str | None
    written_at: str
    analysis_hash: str | None = None


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    """The sha256 of a file, hex; never follows a symlink."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def repair_hint(kind: str, subject: str | None) -> str:
    """What an operator runs to repair a damaged file of ``kind`` for ``subject``."""
    if not subject:
        return "run `qtsw verify` for the details"
    inst = subject if kind == STORE else subject[:-1]
    return f"repair with `qtsw rebuild --instrument {inst}`"


# --- the connection -----------------------------------------------------------------------------


class Catalog:
    """One process's connection to ``data/catalog.sqlite`` (thread-safe: one lock per catalogue).

    ``seconds`` accumulates the time spent in the catalogue (hashing included), so a stage can
    report what the catalogue cost it.
    """

    def __init__(self, settings: Settings, *, readonly: bool = False) -> None:
        self.settings = settings
        self.path = settings.catalog_path
        self.readonly = readonly
        self.seconds = 0.0
        self._lock = threading.RLock()
        self.migrated: list[str] = []
        self.inode: tuple[int, int] | None = None
        self._checked: set[tuple[str, int, int, int]] = set()
        t0 = time.perf_counter()
        try:
            if readonly:
                self.conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                    check_same_thread=False, isolation_level=None,
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                    isolation_level=None,
                )
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self._ensure_schema()
            else:
                self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CatalogError(
                f"{self.path}: the catalogue cannot be opened ({exc}); restore it from a backup "
                f"or move it aside and run `qtsw verify` to see what the folders hold"
            ) from None
        except OSError as exc:
            raise CatalogError(f"{self.path}: the catalogue cannot be created ({exc})") from None
        finally:
            self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back on error)."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    fail_point(self.path)
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise CatalogError(f"{self.path}: {exc}") from None
            finally:
                self.seconds += time.perf_counter() - t0

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            t0 = time.perf_counter()
            try:
                return self.conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise CatalogError(f"{self.path}: {exc}") from None
            finally:
                self.seconds += time.perf_counter() - t0

    def _ensure_schema(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path}: catalogue version {version} is newer than this engine's "
                f"({SCHEMA_VERSION}); use the newer qtsw"
            )
        with self._lock:
            self.conn.executescript(_SCHEMA)  # IF NOT EXISTS: safe when another process races
        with self.tx() as c:
            # another process may have migrated it meanwhile
            if c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
            self.migrated = _migrate_json_state(self.settings, c)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # --- raw files ---------------------------------------------------------------------------

    def ingested(self, sha256: str) -> dict[str, Any] | None:
        """The first ingestion record of a file with this sha256, or None."""
        rows = self.query(
            "SELECT * FROM raw_files WHERE sha256=? AND status IN ('ingested','recovered') "
            "ORDER BY id LIMIT 1",
            (sha256,),
        )
        return dict(rows[0]) if rows else None

    def ingested_sizes(self) -> set[int]:
        return {r[0] for r in self.query("SELECT DISTINCT size FROM raw_files")}

    def ingested_keys(self) -> set[tuple[str, int, int]]:
        """(name, size, mtime_ns) of every raw file recorded (raw_policy ``keep``)."""
        return {
            (r[0], r[1], r[2])
            for r in self.query("SELECT name, size, mtime_ns FROM raw_files WHERE mtime_ns IS NOT NULL")
        }

    def add_raw(self, record: dict[str, Any], commit: list[Path] = ()) -> int:  # type: ignore[assignment]
        """Record one raw file; returns its ingestion order. The intents of ``commit`` (data files
        written from it) become records in the same transaction."""
        cols = [c for c in _RAW_COLUMNS if c in record]
        values = [
            json.dumps(record[c], sort_keys=True) if c == "dropped" else record[c] for c in cols
        ]
        with self.tx() as c:
            for p in commit:
                _commit_intent(c, self.rel(p))
            cur = c.execute(
                f"INSERT INTO raw_files ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                values,
            )
            return int(cur.lastrowid or 0)

    def set_archived(self, raw_id: int, archived: Path | None) -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE raw_files SET archived_path=? WHERE id=?",
                (self.rel(archived) if archived else None, raw_id),
            )

    def raw_files(self, instrument: str | None = None) -> list[dict[str, Any]]:
        """Raw files recorded (of one instrument), in ingestion order."""
        if instrument is None:
            rows = self.query("SELECT * FROM raw_files ORDER BY id")
        else:
            rows = self.query("SELECT * FROM raw_files WHERE instrument=? ORDER BY id", (instrument,))
        return [dict(r) for r in rows]

    # --- data files ----------------------------------------------------------------------------

    def rel(self, path: Path) -> str:
        """``path`` relative to the data root (as stored in the catalogue)."""
        p = Path(path)
        try:
            return str(p.relative_to(self.settings.root))
        except ValueError:
            return str(p)

    def abs(self, rel: str) -> Path:
        return self.settings.root / rel

    def record(self, path: Path) -> FileRecord | None:
        rows = self.query("SELECT * FROM files WHERE path=?", (self.rel(path),))
        return FileRecord(**dict(rows[0])) if rows else None

    def records(self, kind: str | None = None) -> list[FileRecord]:
        if kind is None:
            rows = self.query("SELECT * FROM files ORDER BY path")
        else:
            rows = self.query("SELECT * FROM files WHERE kind=? ORDER BY path", (kind,))
        return [FileRecord(**dict(r)) for r in rows]

    def check(self, path: Path, kind: str, subject: str | None) -> None:
        """Check an existing data file against its record before it is read for a rewrite.

        Raises :class:`DamageError` when its sha256 differs from the record (or it has a record
        and is gone). A file with no record (written before the catalogue existed) passes.
        """
        rec = self.record(path)
        t0 = time.perf_counter()
        try:
            if rec is None:
                if self.query("SELECT 1 FROM intents WHERE path=?", (self.rel(path),)):
                    self._complete_intent(path, sha256_file(path))
                return
            try:
                digest = sha256_file(path)
            except FileNotFoundError:
                if self._complete_intent(path, DELETED):
                    return  # a removal that died before its record went
                raise DamageError(
                    path, "missing: the catalogue records it", repair_hint(kind, subject)
                ) from None
            if digest != rec.sha256 and not self._complete_intent(path, digest):
                raise DamageError(
                    path,
                    f"sha256 {digest[:12]}… does not match the catalogue's {rec.sha256[:12]}… "
                    "(the file changed outside qtsw: damaged)",
                    repair_hint(kind, subject),
                )
        finally:
            self.seconds += time.perf_counter() - t0

    def _complete_intent(self, path: Path, digest: str) -> bool:
        """A write whose rename happened but whose record did not (the writer died): when the
        file's hash is its intent's, record it now. Returns whether it was."""
        rel = self.rel(path)
        with self.tx() as c:
            row = c.execute("SELECT sha256 FROM intents WHERE path=?", (rel,)).fetchone()
            if row is None or row[0] != digest:
                return False
            _commit_intent(c, rel)
        return True

    def check_once(self, path: Path, kind: str, subject: str | None) -> None:
        """:meth:`check`, once per process for a file that has not changed since (by size,
        mtime and inode): a stage reading the same year file many times hashes it once."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        sig = (self.rel(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if sig in self._checked:
            return
        self.check(path, kind, subject)
        self._checked.add(sig)

    def put_intent(self, path: Path, kind: str, subject: str | None, sha: str, size: int,
                   rows: int | None, first: str | None, last: str | None, run_id: str | None,
                   analysis_hash: str | None = None,
                   also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Record the intent to rename a written file onto ``path`` (``also`` adds its own
        statements to the same transaction)."""
        with self.tx() as c:
            if also is not None:
                also(c)
            c.execute(
                "INSERT OR REPLACE INTO intents VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (self.rel(path), kind, subject, sha, size, rows, first, last, run_id, clock.iso_now(),
                 analysis_hash),
            )

    def commit_intents(self, paths: list[Path], forget: list[Path] = ()) -> None:  # type: ignore[assignment]
        """Turn the intents of ``paths`` into records and drop the records of ``forget``, in one
        transaction."""
        with self.tx() as c:
            for p in forget:
                c.execute("DELETE FROM files WHERE path=?", (self.rel(p),))
            for p in paths:
                _commit_intent(c, self.rel(p))

    def forget(self, path: Path) -> None:
        """Drop the record of a data file that was removed (with its intent, if any)."""
        with self.tx() as c:
            c.execute("DELETE FROM files WHERE path=?", (self.rel(path),))
            c.execute("DELETE FROM intents WHERE path=?", (self.rel(path),))

    def add_record(self, path: Path, kind: str, subject: str | None, run_id: str | None = None,
                   rows: int | None = None, first: str | None = None, last: str | None = None) -> None:
        """Record an existing file as it is (hashing it)."""
        t0 = time.perf_counter()
        digest = sha256_file(path)
        size = os.stat(path).st_size
        self.seconds += time.perf_counter() - t0
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (self.rel(path), kind, subject, digest, size, rows, first, last, run_id,
                 clock.iso_now(), None),
            )

    # --- pending changes -------------------------------------------------------------------------

    def record_changes(self, instrument: str, first: datetime, last: datetime) -> None:
        """Widen the instrument's changed range to include [first, last]."""
        with self.tx() as c:
            widen_changes(c, instrument, first, last)

    def read_changes(self) -> dict[str, tuple[datetime, datetime]]:
        """Per instrument, the (first, last) bar time changed and not yet analysed (Chicago)."""
        return {
            r[0]: (
                datetime.fromisoformat(r[1]).astimezone(CHICAGO),
                datetime.fromisoformat(r[2]).astimezone(CHICAGO),
            )
            for r in self.query("SELECT instrument, first, last FROM changes")
        }

    # --- analyzer state --------------------------------------------------------------------------

    def analyzer_state(self, instrument: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM analyzer WHERE instrument=?", (instrument,))
        if not rows:
            return None
        st = dict(rows[0])
        st["provisional_dates"] = json.loads(st["provisional_dates"] or "[]")
        return st

    def analyzer_states(self) -> dict[str, dict[str, Any]]:
        return {r["instrument"]: dict(r) for r in self.query("SELECT * FROM analyzer")}

    def save_analysis(self, instrument: str, state: dict[str, Any],
                      consumed: tuple[datetime, datetime] | None) -> None:
        """The instrument's new analyzer state and the consumed change range, in one transaction:
        the range is cleared only if it is still the one consumed (the translator may have
        widened it meanwhile). A full re-analysis asked for is done with this."""
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO analyzer (instrument, analysis_hash, analysis_settings, "
                "engine_version, provisional_dates, full_requested, last_run_id, updated) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (
                    instrument,
                    state.get("analysis_hash"),
                    json.dumps(state["analysis_settings"], sort_keys=True)
                    if state.get("analysis_settings") is not None else None,
                    state.get("engine_version"),
                    json.dumps(state.get("provisional_dates", [])),
                    None if state.get("full_done") else state.get("full_requested"),
                    state.get("last_run_id"),
                    state.get("updated"),
                ),
            )
            if consumed is not None:
                row = c.execute("SELECT first, last FROM changes WHERE instrument=?", (instrument,)).fetchone()
                if row and (datetime.fromisoformat(row[0]) >= consumed[0]
                            and datetime.fromisoformat(row[1]) <= consumed[1]):
                    c.execute("DELETE FROM changes WHERE instrument=?", (instrument,))

    def request_full(self, instrument: str, why: str) -> None:
        """Ask for a full re-analysis of ``instrument`` at its next analyzer run."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO analyzer (instrument, full_requested) VALUES (?, ?) "
                "ON CONFLICT(instrument) DO UPDATE SET full_requested=excluded.full_requested",
                (instrument, why),
            )

    # --- merge journal ---------------------------------------------------------------------------

    def journal(self) -> dict[str, dict[str, Any]]:
        return {
            r[0]: {"created_ns": r[1], "done": json.loads(r[2])}
            for r in self.query("SELECT journal_key, created_ns, done FROM merge_journal")
        }

    def set_journal(self, files: dict[str, dict[str, Any]]) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM merge_journal")
            for key, v in files.items():
                c.execute(
                    "INSERT INTO merge_journal VALUES (?,?,?)",
                    (key, int(v["created_ns"]), json.dumps(sorted(v.get("done", [])))),
                )

    # --- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str | None) -> None:
        with self.tx() as c:
            if value is None:
                c.execute("DELETE FROM meta WHERE key=?", (key,))
            else:
                c.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))


_RAW_COLUMNS = (
    "name", "size", "mtime_ns", "sha256", "status", "form", "instrument", "rows_in", "rows_kept",
    "dropped", "duplicates", "first_bar", "last_bar", "changed_first", "changed_last",
    "archived_path", "ingested_at", "run_id",
)


def widen_changes(c: sqlite3.Connection, instrument: str, first: datetime, last: datetime) -> None:
    """Within a transaction: widen the instrument's changed range to include [first, last]."""
    row = c.execute("SELECT first, last FROM changes WHERE instrument=?", (instrument,)).fetchone()
    if row:
        first = min(first, datetime.fromisoformat(row[0]))
        last = max(last, datetime.fromisoformat(row[1]))
    c.execute(
        "INSERT OR REPLACE INTO changes VALUES (?,?,?)",
        (instrument, first.astimezone(CHICAGO).isoformat(), last.astimezone(CHICAGO).isoformat()),
    )


def _commit_intent(c: sqlite3.Connection, rel: str) -> None:
    row = c.execute("SELECT * FROM intents WHERE path=?", (rel,)).fetchone()
    if row is None:
        return
    if row["sha256"] == DELETED:
        c.execute("DELETE FROM files WHERE path=?", (rel,))
        c.execute("DELETE FROM intents WHERE path=?", (rel,))
        return
    c.execute(
        "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (row["path"], row["kind"], row["subject"], row["sha256"], row["size"], row["rows"],
         row["first"], row["last"], row["run_id"], clock.iso_now(), row["analysis_hash"]),
    )
    c.execute("DELETE FROM intents WHERE path=?", (rel,))


# --- one catalogue per process and data root ------------------------------------------------------

_open: dict[tuple[int, Path], Catalog] = {}
_open_lock = threading.Lock()


def open_catalog(settings: Settings) -> Catalog:
    """This process's catalogue for the data root (created, and old JSON state migrated, on
    first use). Raises :class:`CatalogError` naming the file when it cannot be opened."""
    key = (os.getpid(), settings.catalog_path)
    with _open_lock:
        cat = _open.get(key)
        if cat is not None and not _same_file(cat):
            # the database file was replaced or removed under us: never write to an old inode
            with contextlib.suppress(Exception):
                cat.close()
            cat = None
        if cat is None:
            cat = Catalog(settings)
            cat.inode = _inode(cat.path)
            _open[key] = cat
        cat.settings = settings
        return cat


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _same_file(cat: Catalog) -> bool:
    return cat.inode is not None and _inode(cat.path) == cat.inode


def open_readonly(settings: Settings) -> Catalog | None:
    """A read-only view of the catalogue, or None when there is none yet (nothing is created)."""
    if not settings.catalog_path.exists():
        return None
    return Catalog(settings, readonly=True)


def close_all() -> None:
    """Close this process's catalogues (tests; a forked child starts with none of its own)."""
    with _open_lock:
        for cat in _open.values():
            with contextlib.suppress(Exception):
                cat.close()
        _open.clear()


# --- writing a data file with its record ---------------------------------------------------------


def write_recorded(
    settings: Settings,
    dest: Path,
    kind: str,
    subject: str | None,
    write: Callable[[Path], None] | bytes | memoryview,
    *,
    rows: int | None = None,
    first: str | None = None,
    last: str | None = None,
    run_id: str | None = None,
    checked: bool = False,
    analysis_hash: str | None = None,
    also: Callable[[sqlite3.Connection], None] | None = None,
    commit: bool = True,
) -> None:
    """Write a data file and its catalogue record by the protocol (module docstring).

    ``write`` is the new content (bytes: hashed as they are, not read back), or a function
    ``write(tmp)`` that writes it to ``tmp``. Unless ``checked`` (the caller already checked
    the old file), an existing ``dest`` is checked against its record first and a mismatch
    raises :class:`DamageError` without writing anything. ``also`` adds its statements to the
    intent's transaction (durable before the rename). With ``commit=False`` the record is left
    as an intent that the caller commits (:meth:`Catalog.commit_intents`, or
    :meth:`Catalog.add_raw`); a crash before that is finished like any other (``reconcile``).
    """
    cat = open_catalog(settings)
    if not checked and dest.exists():
        cat.check(dest, kind, subject)
    with atomic_path(dest) as tmp:
        if callable(write):
            write(tmp)
            t0 = time.perf_counter()
            digest = sha256_file(tmp)
            size = os.stat(tmp).st_size
        else:
            data = memoryview(write)
            with open(tmp, "wb") as fh:
                fh.write(data)
            t0 = time.perf_counter()
            digest = hashlib.sha256(data).hexdigest()
            size = data.nbytes
        cat.seconds += time.perf_counter() - t0
        cat.put_intent(dest, kind, subject, digest, size, rows, first, last, run_id, analysis_hash, also)
    if commit:
        cat.commit_intents([dest])


@dataclass
class RecordedWrite:
    """One data file for :func:`write_recorded_many`: its new content and record; ``error`` is
    set when its own write or rename failed (it is then left as it was)."""

    dest: Path
    kind: str
    subject: str | None
    data: bytes | memoryview
    rows: int | None = None
    first: str | None = None
    last: str | None = None
    run_id: str | None = None
    analysis_hash: str | None = None
    error: OSError | None = None


def write_recorded_many(settings: Settings, writes: list[RecordedWrite]) -> None:
    """Write several data files and their records by the protocol (module docstring), with two
    catalogue commits in all rather than two per file.

    Each new content goes to a temporary file beside its destination and is fsynced (hashed in
    memory); the intents of all of them commit in one transaction; each is renamed into place;
    the folders are fsynced; the records commit in one transaction. The old files must have been
    checked by the caller. A file whose own write or rename fails (a full disk, a permission)
    gets its ``error`` and stays as it was; the others go on. A catalogue failure raises
    :class:`CatalogError`; a crash at any point is finished by :func:`reconcile` as for one file.
    """
    cat = open_catalog(settings)
    tmps: dict[int, Path] = {}
    digests: dict[int, tuple[str, int]] = {}
    try:
        for i, w in enumerate(writes):
            try:
                tmp = tmps[i] = temp_beside(w.dest)
                data = memoryview(w.data)
                with open(tmp, "wb") as fh:
                    fh.write(data)
                fsync_file(tmp)
                t0 = time.perf_counter()
                digests[i] = (hashlib.sha256(data).hexdigest(), data.nbytes)
                cat.seconds += time.perf_counter() - t0
            except OSError as exc:
                w.error = exc
        ready = [i for i in range(len(writes)) if writes[i].error is None]
        if not ready:
            return
        with cat.tx() as c:
            for i in ready:
                w = writes[i]
                c.execute(
                    "INSERT OR REPLACE INTO intents VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (cat.rel(w.dest), w.kind, w.subject, digests[i][0], digests[i][1], w.rows, w.first,
                     w.last, w.run_id, clock.iso_now(), w.analysis_hash),
                )
        renamed: list[Path] = []
        for i in ready:
            try:
                replace_durably(tmps[i], writes[i].dest, sync_dir=False)
                renamed.append(writes[i].dest)
            except OSError as exc:
                writes[i].error = exc
        for folder in sorted({p.parent for p in renamed}):
            fsync_dir(folder)
        cat.commit_intents(renamed)
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


DELETED = "-"  # the sha256 of an intent to delete a file


def remove_recorded(settings: Settings, path: Path) -> None:
    """Remove a data file and its record by the same protocol as a write: an intent to delete,
    the unlink, then the record's removal (a crash in between is finished by :func:`reconcile`
    or the next :meth:`Catalog.check`)."""
    cat = open_catalog(settings)
    if cat.record(path) is None:
        path.unlink(missing_ok=True)
        return
    cat.put_intent(path, "-", None, DELETED, 0, None, None, None, None)
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
    cat.forget(path)


# --- reconcile at start --------------------------------------------------------------------------


def reconcile(settings: Settings) -> list[str]:
    """Finish what a crash interrupted: every intent whose file now has its hash is recorded;
    the others (the rename never happened) are dropped. Returns one line per change."""
    cat = open_catalog(settings)
    notes: list[str] = []
    for row in cat.query("SELECT * FROM intents"):
        path = cat.abs(row["path"])
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            digest = None
        with cat.tx() as c:
            if row["sha256"] == DELETED:
                if digest is None:
                    _commit_intent(c, row["path"])
                    notes.append(f"{row['path']}: removed but still recorded when qtsw stopped; record removed")
                else:
                    c.execute("DELETE FROM intents WHERE path=?", (row["path"],))
            elif digest == row["sha256"]:
                _commit_intent(c, row["path"])
                notes.append(f"{row['path']}: written but not recorded when qtsw stopped; recorded now")
            else:
                c.execute("DELETE FROM intents WHERE path=?", (row["path"],))
    return notes


# --- migration from the JSON state of earlier versions ----------------------------------------


def _migrate_json_state(settings: Settings, c: sqlite3.Connection) -> list[str]:
    """Copy ``data/state/`` (manifest, changes, analyzer states, merger journal) into a new
    catalogue and record the store and monthly files as they are. Nothing is deleted: the old
    folder is renamed ``state.migrated``. Returns lines saying what was done."""
    state = settings.data_dir / "state"
    notes: list[str] = []
    if state.is_dir():
        manifest = state / "manifest.jsonl"
        good, bad = _manifest_lines(manifest)
        for rec in good:
            if not rec.get("sha256") or not rec.get("name"):
                continue
            rec = dict(rec)
            rec.setdefault("status", "ingested")
            rec.setdefault("ingested_at", clock.iso_now())
            cols = [k for k in _RAW_COLUMNS if k in rec]
            vals = [json.dumps(rec[k]) if k == "dropped" else rec[k] for k in cols]
            c.execute(
                f"INSERT INTO raw_files ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals
            )
        n = c.execute("SELECT count(*) FROM raw_files").fetchone()[0]
        notes.append(f"migrated {n} raw file record(s) from {manifest}")
        for line in bad:
            notes.append(f"{manifest}: line {line} is not a JSON record; it was not migrated")
        for name, path in (("changes", state / "changes.json"), ("merge journal", state / "merger.json")):
            try:
                raw = read_json(path, {}) or {}
            except (ValueError, UnicodeDecodeError) as exc:
                notes.append(f"{path}: unreadable ({exc}); not migrated ({name})")
                raw = {}
            if name == "changes":
                for inst, v in raw.items() if isinstance(raw, dict) else ():
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        c.execute("INSERT OR REPLACE INTO changes VALUES (?,?,?)",
                                  (inst, str(v["first"]), str(v["last"])))
            else:
                for key, v in (raw.get("files", {}) if isinstance(raw, dict) else {}).items():
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        c.execute("INSERT OR REPLACE INTO merge_journal VALUES (?,?,?)",
                                  (key, int(v["created_ns"]), json.dumps(list(v.get("done", [])))))
        for path in sorted((state / "analyzer").glob("*.json")):
            try:
                st = read_json(path, None)
                dates = [date.fromisoformat(d).isoformat() for d in st.get("provisional_dates", [])]
                c.execute(
                    "INSERT OR REPLACE INTO analyzer (instrument, analysis_hash, engine_version, "
                    "provisional_dates, last_run_id, updated) VALUES (?,?,?,?,?,?)",
                    (path.stem, st.get("analysis_hash"), st.get("engine_version"),
                     json.dumps(dates), st.get("last_run_id"), st.get("updated")),
                )
            except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
                # A full re-analysis of that instrument rebuilds what the state said.
                c.execute("INSERT OR REPLACE INTO analyzer (instrument, full_requested) VALUES (?,?)",
                          (path.stem, f"its old state file was unreadable ({exc})"))
                notes.append(f"{path}: unreadable ({exc}); {path.stem} will be re-analysed in full")
    notes += _record_existing(settings, c)
    if state.is_dir():
        dest = settings.data_dir / f"state.migrated-{clock.now():%Y%m%d_%H%M%S}"
        os.replace(state, dest)
        notes.append(f"the old state folder is kept as {dest}")
    return notes


def _file_analysis_hash(path: Path, kind: str) -> str | None:
    """The analysis-settings hash in a monthly file's metadata (None for a store file or none)."""
    if kind != MONTHLY:
        return None
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # unreadable: verify reports it
        return None
    value = meta.get(b"analysis_hash")
    return value.decode() if value else None


def _manifest_lines(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON records of an old manifest and the numbers of the lines that are not one (each
    line decoded on its own: one bad byte spoils only its line)."""
    good: list[dict[str, Any]] = []
    bad: list[int] = []
    try:
        with open(path, "rb") as fh:
            for i, line in enumerate(fh, start=1):
                try:
                    rec = json.loads(line.decode("utf-8"))
                    if not isinstance(rec, dict):
                        raise ValueError
                    good.append(rec)
                except (ValueError, UnicodeDecodeError):
                    if line.strip():
                        bad.append(i)
    except FileNotFoundError:
        pass
    return good, bad


def _record_existing(settings: Settings, c: sqlite3.Connection) -> list[str]:
    """Record the store and monthly files on disk as they are (a new catalogue on old data), and
    archived raw files the manifest does not know (so a re-delivered copy is recognised)."""
    n = 0
    now = clock.iso_now()
    for kind, base in ((STORE, settings.processed_dir), (MONTHLY, settings.analyzer_runs_dir)):
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*.parquet")):
            if p.is_symlink() or p.name.startswith("."):
                continue
            subject = p.parent.name if kind == STORE else p.parent.parent.name
            c.execute(
                "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (str(p.relative_to(settings.root)), kind, subject, sha256_file(p),
                 p.stat().st_size, None, None, None, None, now, _file_analysis_hash(p, kind)),
            )
            n += 1
    notes = [f"recorded {n} existing store and monthly file(s)"] if n else []
    known = {r[0] for r in c.execute("SELECT sha256 FROM raw_files")}
    found = 0
    if settings.archive_dir.is_dir():
        for p in sorted(settings.archive_dir.rglob("*")):
            if p.is_symlink() or not p.is_file() or p.parent.name == "logs":
                continue
            digest = sha256_file(p)
            if digest in known:
                c.execute("UPDATE raw_files SET archived_path=? WHERE sha256=? AND archived_path IS NULL",
                          (str(p.relative_to(settings.root)), digest))
                continue
            known.add(digest)
            st = p.stat()
            c.execute(
                "INSERT INTO raw_files (name, size, mtime_ns, sha256, status, archived_path, "
                "ingested_at) VALUES (?,?,?,?,?,?,?)",
                (p.name, st.st_size, st.st_mtime_ns, digest, "recovered",
                 str(p.relative_to(settings.root)), now),
            )
            found += 1
    if found:
        notes.append(f"recorded {found} archived raw file(s) missing from the manifest")
    return notes


# --- pending work ------------------------------------------------------------------------------


@contextlib.contextmanager
def instrument_lock(settings: Settings, instrument: str, shared: bool = False) -> Iterator[None]:
    """Serialise changes to one instrument's store between processes: the translator and a
    rebuild take it exclusively, an analyzer shared (so a rebuild's swap never happens under
    its reads)."""
    path = settings.processed_dir / f".{instrument}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_writes(settings: Settings) -> Iterator[None]:
    """Hold the catalogue's write lock (a transaction that writes nothing): every other writer
    waits meanwhile, up to the busy timeout. An analyzer then waits at its end, where it
    records its state, so a run cannot leave the analyzer while this is held."""
    open_catalog(settings)  # created and migrated first
    conn = sqlite3.connect(settings.catalog_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def store_instruments(settings: Settings) -> list[str]:
    """Instruments that have bars in the store."""
    d = settings.processed_dir
    if not d.is_dir():
        return []
    return sorted(
        p.name for p in d.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any(p.glob(f"{p.name}_*.parquet"))
    )


def pending_analysis(settings: Settings, full: bool = False) -> dict[str, str]:
    """Instruments with analysis to do, each with the reason (empty: nothing to analyse).

    Pending: the analysis settings changed since its results were computed (a full
    re-analysis, by itself), a full re-analysis asked for (after a rebuild), bars changed since
    the last analysis, or an instrument in the store never analysed. With ``full``, every
    instrument in the store. Instruments in the store that the settings no longer name are not
    analysed. Reads the catalogue without creating it.
    """
    insts = [i for i in store_instruments(settings) if i in settings.instruments]
    if full:
        return {inst: "full re-analysis requested" for inst in insts}
    cat = open_readonly(settings)
    try:
        changes = cat.read_changes() if cat else {}
        states = cat.analyzer_states() if cat else {}
    finally:
        if cat is not None:
            cat.close()
    out: dict[str, str] = {}
    for inst in insts:
        st = states.get(inst)
        if st and st.get("analysis_hash") and st["analysis_hash"] != settings.analysis_hash_for(inst):
            old = json.loads(st["analysis_settings"]) if st.get("analysis_settings") else None
            out[inst] = (
                f"analysis settings changed: {inst}: "
                f"{describe_analysis_change(old, settings.analysis_dict_for(inst))}; full re-analysis"
            )
        elif st and st.get("full_requested"):
            out[inst] = f"full re-analysis: {st['full_requested']}"
        elif inst in changes:
            first, last = changes[inst]
            out[inst] = f"bars changed {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}"
        elif st is None or st.get("analysis_hash") is None:
            out[inst] = "never analysed"
    return out


def stale_results(settings: Settings) -> dict[str, str]:
    """Per stream whose monthly files hold results of other analysis settings (or of an
    instrument the settings no longer name), why. Empty: every stored result belongs to the
    current settings. From the catalogue alone (no file is read)."""
    cat = open_readonly(settings)
    if cat is None:
        return {}
    try:
        rows = cat.query(
            "SELECT subject, analysis_hash, count(*) FROM files WHERE kind=? GROUP BY subject, analysis_hash",
            (MONTHLY,),
        )
    finally:
        cat.close()
    out: dict[str, str] = {}
    for stream, digest, n in rows:
        inst = stream[:-1] if stream else None
        if inst not in settings.instruments:
            out[stream] = f"{n} monthly file(s) of {inst}, no longer in the settings"
        elif digest is not None and digest != settings.analysis_hash_for(inst):
            out[stream] = f"{n} monthly file(s) computed with other analysis settings ({digest})"
    return out


def removed_streams(settings: Settings) -> list[str]:
    """Streams with monthly files whose instrument the settings no longer name."""
    return sorted(s for s, why in stale_results(settings).items() if "no longer" in why)


def pending_merges(settings: Settings) -> list[Path]:
    """Analyzer run folders awaiting the merger."""
    d = settings.analyzer_temp_dir
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and any(p.glob("*.parquet")))
