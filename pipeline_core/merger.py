"""Merger stage (SPEC §5): per-run analyzer output → monthly result files.

``python -m pipeline_core.merger [--root R] [--config C] [--run-id ID]``

Every run folder ``data/analyzer_temp/<run_id>/`` holds one ``<INST>.parquet`` per analysed
instrument. Its rows are upserted into
``data/analyzer_runs/<STREAM>/<YYYY>/<STREAM>_an_<YYYY>_<MM>.parquet`` on the key
(Date, Time, Session, Instrument): Direction and Result are not in the key, so a provisional row
is replaced, never duplicated. Runs are applied oldest first (``created_ns`` in each file's
metadata), so the newer run wins. A run from ``--full`` stands for every date it analysed
(``covered_dates`` in its metadata): rows of older runs on those dates that it does not hold are
dropped; rows on dates it did not analyse (their bars are no longer in the store) are kept and
counted, never deleted.

Every monthly file is checked against its catalogue record before it is rewritten; a damaged
one fails its own group (stream and month) only, is never rewritten, and the error says how to
repair it.

Each monthly file is read once and written atomically. A run folder is removed only after every
group (stream, year, month) it feeds is written. Which groups of a retained run are already
written is journalled in the catalogue (``merge_journal``), so a retry does not lay an older run over
rows a newer run wrote since; a retry without a journal entry simply re-applies the run (merging
is idempotent).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_core import catalog, clock
from pipeline_core.analyzer.strategy import RESULT_SCHEMA
from pipeline_core.arrays import empty_table, indices, scalar, to_numpy, unique_codes
from pipeline_core.catalog import CatalogError, DamageError
from pipeline_core.fsutil import fsync_dir, remove_stale_temp_files
from pipeline_core.protocol import Reporter, stage_main
from pipeline_core.results import (
    META_ANALYSIS_HASH,
    META_ANALYSIS_SETTINGS,
    META_COVERED,
    META_CREATED_NS,
    META_ENGINE_VERSION,
    META_INSTRUMENT,
    META_MODE,
    META_REPLACE,
    META_RUN_ID,
    META_UPDATED,
    ResultSchemaError,
    decode_dates,
    monthly_files,
    monthly_path,
    parse_monthly_name,
    read_result_file,
    stream_instrument,
)
from pipeline_core.settings import Settings

KEY = ("Date", "Time", "Session", "Instrument")  # the merge key: Direction and Result are not in it

GroupKey = tuple[str, int, int]  # (stream, year, month)
WRITE_BATCH = 64  # monthly files merged, then written together (bounded memory, steady progress)


class RunFileError(Exception):
    """A run file that cannot be merged: names the file and the reason."""


@dataclass
class RunFile:
    """One analyzer output file awaiting the merge."""

    path: Path
    run_dir: Path
    instrument: str
    run_id: str
    created_ns: int
    full: bool
    engine_version: str
    analysis_hash: str
    table: pa.Table
    analysis_settings: str = ""
    covered: np.ndarray | None = None  # a full run's analysed dates (date32 day numbers)

    @property
    def journal_key(self) -> str:
        return f"{self.run_dir.name}/{self.path.name}"


@dataclass
class GroupOutcome:
    """What merging one monthly file did."""

    stream: str
    year: int
    month: int
    path: Path
    rows: int = 0
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    removed: int = 0
    kept_without_bars: int = 0  # older rows a full run did not re-analyse (no bars): kept
    action: str = "unchanged"  # written | deleted | unchanged | failed
    error: str | None = None
    damaged: bool = False  # failed because its monthly file is damaged


@dataclass
class MergeSummary:
    """The outcome of one merge: per group, per run file, and the folders removed."""

    groups: list[GroupOutcome] = field(default_factory=list)
    files: list[RunFile] = field(default_factory=list)
    file_errors: list[str] = field(default_factory=list)
    folders_removed: list[str] = field(default_factory=list)
    folders_kept: list[str] = field(default_factory=list)
    streams_removed: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return self.file_errors + [g.error for g in self.groups if g.error]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, Any]:
        written = [g for g in self.groups if g.action in ("written", "deleted")]
        return {
            "run_files": len(self.files) + len(self.file_errors),
            "groups": len(self.groups),
            "files_written": sum(g.action == "written" for g in self.groups),
            "files_deleted": sum(g.action == "deleted" for g in self.groups),
            "files_unchanged": sum(g.action == "unchanged" for g in self.groups),
            "groups_failed": sum(g.action == "failed" for g in self.groups),
            "rows_added": sum(g.added for g in written),
            "rows_replaced": sum(g.replaced for g in written),
            "rows_removed": sum(g.removed for g in written),
            "rows_kept_without_bars": sum(g.kept_without_bars for g in self.groups),
            "streams_removed": len(self.streams_removed),
            "folders_removed": len(self.folders_removed),
            "folders_kept": len(self.folders_kept),
            "errors": len(self.errors),
        }


# --- the journal of groups already written for retained runs -------------------------------------


def _read_journal(settings: Settings) -> dict[str, dict[str, Any]]:
    return catalog.open_catalog(settings).journal()


def _write_journal(settings: Settings, files: dict[str, dict[str, Any]]) -> None:
    catalog.open_catalog(settings).set_journal(files)


def _group_id(key: GroupKey) -> str:
    return f"{key[0]}/{key[1]:04d}/{key[2]:02d}"


# --- loading run files -----------------------------------------------------------------------------


def run_folders(settings: Settings) -> list[Path]:
    """Run folders under ``data/analyzer_temp`` (any folder; empty ones are cleaned up)."""
    base = settings.analyzer_temp_dir
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_run_file(path: Path) -> RunFile:
    """Read and check one analyzer output file; :class:`RunFileError` says what is wrong with it."""
    try:
        table, meta = read_result_file(path)
    except ResultSchemaError as exc:
        raise RunFileError(f"{path}: schema mismatch: {exc.difference}") from None
    except Exception as exc:  # any unreadable file: corrupt, truncated, not Parquet
        raise RunFileError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    instrument = meta.get(META_INSTRUMENT) or path.stem
    try:
        created_ns = int(meta[META_CREATED_NS])
    except (KeyError, ValueError):
        # Not written by the analyzer stage: order it by its modification time.
        created_ns = path.stat().st_mtime_ns
    for name in ("Date", "Time", "Session", "Instrument", "Stream", "Result"):
        if table.column(name).null_count:
            raise RunFileError(f"{path}: column {name} has empty values")
    if table.num_rows:
        if not pc.all(pc.equal(table.column("Instrument"), scalar(instrument, pa.string()))).as_py():
            bad = pc.unique(table.column("Instrument")).to_pylist()
            raise RunFileError(
                f"{path}: rows of instrument(s) {', '.join(map(str, bad))} in the file of {instrument}"
            )
        expected_stream = pc.binary_join_element_wise(
            table.column("Instrument"), pc.utf8_slice_codeunits(table.column("Session"), 1),
            scalar("", pa.string()),
        )
        if not pc.all(pc.equal(table.column("Stream"), expected_stream)).as_py():
            raise RunFileError(f"{path}: Stream is not Instrument + session digit in some rows")
    return RunFile(
        path=path,
        run_dir=path.parent,
        instrument=instrument,
        run_id=meta.get(META_RUN_ID) or path.parent.name,
        created_ns=created_ns,
        full=meta.get(META_MODE) == "full",
        engine_version=meta.get(META_ENGINE_VERSION, ""),
        analysis_hash=meta.get(META_ANALYSIS_HASH, ""),
        table=table,
        analysis_settings=meta.get(META_ANALYSIS_SETTINGS, ""),
        covered=_covered(path, meta),
    )


def _covered(path: Path, meta: dict[str, str]) -> np.ndarray | None:
    """The dates a full run stands for; None: every date (a settings change, or an output of an
    earlier version)."""
    if meta.get(META_MODE) != "full" or META_COVERED not in meta or meta.get(META_REPLACE) == "1":
        return None
    try:
        return decode_dates(meta[META_COVERED])
    except ValueError:
        raise RunFileError(f"{path}: unreadable {META_COVERED} metadata") from None


def _split_by_month(table: pa.Table) -> dict[GroupKey, np.ndarray]:
    """Row indices of ``table`` per (stream, year, month), vectorised."""
    if table.num_rows == 0:
        return {}
    streams, stream_code = unique_codes(table.column("Stream"))
    dates = table.column("Date")
    ym = to_numpy(pc.year(dates), np.int64) * 12 + (to_numpy(pc.month(dates), np.int64) - 1)
    code = stream_code * 1_000_000 + ym
    order = np.argsort(code, kind="stable")
    uniq, starts = np.unique(code[order], return_index=True)
    out: dict[GroupKey, np.ndarray] = {}
    for u, idx in zip(uniq, np.split(order, starts[1:]), strict=True):
        s, m = divmod(int(u), 1_000_000)
        out[(str(streams[s]), m // 12, m % 12 + 1)] = idx
    return out


# --- merging one monthly file ----------------------------------------------------------------------


@dataclass
class _Source:
    rank: int  # 1 = oldest run in this merge
    run: RunFile
    rows: np.ndarray  # indices into run.table


def _key_codes(table: pa.Table) -> list[np.ndarray]:
    """Sortable integer codes of the key columns (:data:`KEY`: Date, Time, Session, Instrument)."""
    codes = [to_numpy(table.column(KEY[0]).cast(pa.int32()), np.int32)]
    for name in KEY[1:]:
        codes.append(unique_codes(table.column(name))[1])
    return codes


def _rows_equal(a: pa.Table, b: pa.Table) -> np.ndarray:
    """Per row pair, whether every column of ``a`` equals ``b`` (nulls equal nulls)."""
    same = np.ones(a.num_rows, dtype=bool)
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        eq = pc.fill_null(pc.equal(x, y), scalar(False, pa.bool_()))
        both_null = pc.and_(pc.is_null(x), pc.is_null(y))
        same &= to_numpy(pc.or_(eq, both_null), bool)
    return same


def merge_group(
    existing: pa.Table | None, sources: list[_Source]
) -> tuple[pa.Table, dict[str, int]]:
    """Upsert ``sources`` (oldest first) into the ``existing`` monthly rows.

    Returns the new monthly rows (sorted by Date, Time, Session, Instrument) and the counts
    added / replaced / unchanged / removed. A full run drops every older row it does not hold.
    """
    parts = []
    ranks = []
    if existing is not None and existing.num_rows:
        parts.append(existing)
        ranks.append(np.zeros(existing.num_rows, dtype=np.int64))
    for s in sources:
        if len(s.rows):
            parts.append(s.run.table.take(indices(s.rows)))
            ranks.append(np.full(len(s.rows), s.rank, dtype=np.int64))
    cut = max((s.rank for s in sources if s.run.full), default=0)
    covered = next((s.run.covered for s in sources if s.run.full and s.rank == cut), None)
    counts = {"added": 0, "replaced": 0, "unchanged": 0, "removed": 0, "kept_without_bars": 0}
    if not parts:
        return empty_table(RESULT_SCHEMA), counts
    combined = pa.concat_tables(parts)
    rank = np.concatenate(ranks)
    date, tcode, scode, icode = _key_codes(combined)
    # lexsort: last key is the primary one; stable, so equal ranks keep file order (last wins).
    order = np.lexsort((rank, icode, scode, tcode, date))
    k = np.stack([date[order], tcode[order], scode[order], icode[order]])
    boundary = np.any(k[:, 1:] != k[:, :-1], axis=0)
    starts = np.flatnonzero(np.concatenate(([True], boundary)))
    ends = np.flatnonzero(np.concatenate((boundary, [True])))
    first_rank = rank[order[starts]]
    last_rank = rank[order[ends]]
    existed = first_rank == 0
    has_winner = last_rank >= cut  # rows older than a full run are dropped ...
    if covered is not None:
        # ... but only on dates it analysed: the others have no bars left to recompute them
        uncovered = ~np.isin(date[order[starts]], covered) & ~has_winner
        counts["kept_without_bars"] = int(np.sum(uncovered & existed))
        has_winner |= uncovered
    if existing is None or existing.num_rows == 0:
        existed[:] = False
    counts["added"] = int(np.sum(has_winner & ~existed))
    counts["removed"] = int(np.sum(existed & ~has_winner))
    touched = existed & has_winner & (last_rank > 0)
    if touched.any():
        old = combined.take(indices(order[starts[touched]]))
        new = combined.take(indices(order[ends[touched]]))
        same = _rows_equal(old, new)
        counts["unchanged"] = int(same.sum())
        counts["replaced"] = int((~same).sum())
    result = combined.take(indices(order[ends[has_winner]]))
    return result, counts


# --- the merge -------------------------------------------------------------------------------------


def merge(settings: Settings, reporter: Reporter | None = None) -> MergeSummary:
    """Merge every run folder in ``data/analyzer_temp`` into the monthly files.

    Never raises for a bad file or a failed write: those are in ``summary.errors`` and the run
    folders concerned stay for the next merge.
    """
    summary = MergeSummary()
    remove_stale_temp_files(settings.analyzer_runs_dir)
    folders = run_folders(settings)
    bad_dirs: set[Path] = set()
    for folder in folders:
        for path in sorted(folder.glob("*.parquet")):
            try:
                summary.files.append(load_run_file(path))
            except RunFileError as exc:
                summary.file_errors.append(str(exc))
                bad_dirs.add(folder)
                if reporter:
                    reporter.warning(str(exc), file=str(path))
    summary.files.sort(key=lambda f: (f.created_ns, f.run_dir.name, f.path.name))

    journal = _read_journal(settings)
    done: dict[str, set[str]] = {}
    for f in summary.files:
        entry = journal.get(f.journal_key)
        ok = entry and entry.get("created_ns") == f.created_ns
        done[f.journal_key] = set(entry.get("done", [])) if ok else set()

    splits = [_split_by_month(f.table) for f in summary.files]
    every_key = {key for split in splits for key in split}
    if any(f.full for f in summary.files):
        for paths in monthly_files(settings).values():
            every_key.update(k for k in map(parse_monthly_name, (p.name for p in paths)) if k)
    for f, split in zip(summary.files, splits, strict=True):
        if f.full:
            # A full run speaks for its instrument's whole history: the months where it holds no
            # rows are emptied of older rows too (existing ones and those of older runs here).
            for key in every_key:
                if stream_instrument(key[0]) == f.instrument:
                    split.setdefault(key, np.empty(0, dtype=np.int64))
    groups: dict[GroupKey, list[_Source]] = defaultdict(list)
    file_groups: dict[str, set[GroupKey]] = defaultdict(set)
    for rank, (f, split) in enumerate(zip(summary.files, splits, strict=True), start=1):
        for key, rows in split.items():
            file_groups[f.journal_key].add(key)
            if _group_id(key) in done[f.journal_key]:
                continue  # already in the monthly file from an earlier, interrupted merge
            groups[key].append(_Source(rank, f, rows))

    total = len(groups)
    last_report = 0.0
    last_n, step = 0, max(1, total // 25)
    if reporter:
        reporter.progress(0, total, "merging monthly files")
    keys = sorted(groups)
    n = 0
    for b in range(0, total, WRITE_BATCH):
        # Merged a batch at a time and written together: two catalogue commits per batch, not
        # two per monthly file.
        batch = [(key, *_merge_one(settings, key, groups[key])) for key in keys[b : b + WRITE_BATCH]]
        _write_groups(settings, [(outcome, w) for _, outcome, w in batch if w is not None])
        for key, outcome, _ in batch:
            n += 1
            summary.groups.append(outcome)
            if outcome.error is None:
                for s in groups[key]:
                    done[s.run.journal_key].add(_group_id(key))
            if reporter:
                _report_group(reporter, settings, outcome)
                now = time.monotonic()
                # every few percent of the files or every half second, and the last one
                if n == total or n - last_n >= step or now - last_report >= 0.5:
                    reporter.progress(n, total, "monthly files merged", stream=key[0])
                    last_report, last_n = now, n

    # Which folders are complete: every file loaded and every group of every file written.
    complete = [
        folder
        for folder in folders
        if folder not in bad_dirs
        and all(
            {_group_id(k) for k in file_groups[f.journal_key]} <= done[f.journal_key]
            for f in summary.files
            if f.run_dir == folder
        )
    ]

    def journal_of(files: Iterable[RunFile]) -> dict[str, dict[str, Any]]:
        return {
            f.journal_key: {"created_ns": f.created_ns, "done": sorted(done[f.journal_key])}
            for f in files
            if done[f.journal_key]
        }

    kept_files = [f for f in summary.files if f.run_dir not in complete]
    journalled = bool(len(complete) > 1 or kept_files or journal)
    if journalled:
        # Journal before removing: a crash in between must not let a retry lay a run's rows
        # over rows a newer run wrote in this merge.
        _write_journal(settings, journal_of(summary.files))
    for folder in complete:
        shutil.rmtree(folder)
        summary.folders_removed.append(folder.name)
    if complete:
        fsync_dir(settings.analyzer_temp_dir)
        if journalled:
            _write_journal(settings, journal_of(kept_files))
    summary.folders_kept = [f.name for f in folders if f not in complete]
    _remove_streams_of_removed_instruments(settings, summary, reporter)
    return summary


def _remove_streams_of_removed_instruments(
    settings: Settings, summary: MergeSummary, reporter: Reporter | None
) -> None:
    """Monthly files of instruments the settings no longer name hold results the settings would
    not produce: they go (each file counted; its rows in ``rows_removed``)."""
    removed = catalog.removed_streams(settings)
    files = monthly_files(settings) if removed else {}
    for stream in removed:
        for path in files.get(stream, []):
            try:
                rows = pq.read_metadata(path).num_rows
            except Exception:  # unreadable: it goes all the same, counted without rows
                rows = 0
            catalog.remove_recorded(settings, path)
            key = parse_monthly_name(path.name)
            g = GroupOutcome(stream, key[1] if key else 0, key[2] if key else 0, path,
                             removed=rows, action="deleted")
            summary.groups.append(g)
            if reporter:
                _report_group(reporter, settings, g)
        summary.streams_removed.append(stream)
        if reporter:
            reporter.warning(
                f"{stream}: results removed: {stream_instrument(stream)} is no longer in the settings",
                stream=stream,
            )


def _write_groups(settings: Settings, todo: list[tuple[GroupOutcome, catalog.RecordedWrite]]) -> None:
    """Write the monthly files of a batch of merged groups (one catalogue commit for their
    intents, one for their records); a group whose file could not be written fails alone."""
    if not todo:
        return
    try:
        catalog.write_recorded_many(settings, [w for _, w in todo])
    except CatalogError as exc:
        for outcome, _ in todo:
            outcome.action, outcome.damaged, outcome.error = "failed", True, str(exc)
        return
    except OSError as exc:  # the folders' fsync: the files may be new, their records not yet
        for outcome, _ in todo:
            outcome.action = "failed"
            outcome.error = f"{outcome.path}: {type(exc).__name__}: {exc}"
        return
    for outcome, w in todo:
        if w.error is not None:
            outcome.action = "failed"
            outcome.error = f"{outcome.path}: {type(w.error).__name__}: {w.error}"
        else:
            outcome.action = "written"


def _merge_one(
    settings: Settings, key: GroupKey, sources: list[_Source]
) -> tuple[GroupOutcome, catalog.RecordedWrite | None]:
    """Merge one group (stream, year, month): its outcome, and the monthly file to write (None
    when there is nothing to write, the file was removed, or the group failed)."""
    stream, year, month = key
    path = monthly_path(settings, stream, year, month)
    outcome = GroupOutcome(stream, year, month, path)
    write = None
    try:
        if path.exists():
            catalog.open_catalog(settings).check(path, catalog.MONTHLY, stream)
            try:
                existing, old_meta = read_result_file(path)
            except Exception as exc:  # corrupt, truncated, not Parquet: damage, named
                raise DamageError(
                    path, f"unreadable ({exc})", catalog.repair_hint(catalog.MONTHLY, stream)
                ) from None
        else:
            existing, old_meta = None, {}
        result, counts = merge_group(existing, sources)
        outcome.rows = result.num_rows
        outcome.added, outcome.replaced = counts["added"], counts["replaced"]
        outcome.unchanged, outcome.removed = counts["unchanged"], counts["removed"]
        outcome.kept_without_bars = counts["kept_without_bars"]
        newest = sources[-1].run
        meta = {
            META_ENGINE_VERSION: newest.engine_version,
            META_ANALYSIS_HASH: newest.analysis_hash,
            META_ANALYSIS_SETTINGS: newest.analysis_settings,
            META_RUN_ID: newest.run_id,
        }
        changed = outcome.added or outcome.replaced or outcome.removed
        # Same rows from the same engine and settings: nothing to write (the run id may differ).
        same_meta = all(old_meta.get(k) == meta[k] for k in (META_ENGINE_VERSION, META_ANALYSIS_HASH))
        if result.num_rows == 0:
            if existing is not None:
                catalog.remove_recorded(settings, path)
                fsync_dir(path.parent)
                outcome.action = "deleted"
            return outcome, None
        if existing is not None and not changed and same_meta:
            return outcome, None
        meta[META_UPDATED] = clock.iso_now()
        table = result.replace_schema_metadata({k.encode(): str(v).encode() for k, v in meta.items()})
        dates = table.column("Date")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, write_page_checksum=True)
        write = catalog.RecordedWrite(
            path, catalog.MONTHLY, stream, sink.getvalue(),
            rows=table.num_rows,
            first=str(pc.min(dates).as_py()) if table.num_rows else None,
            last=str(pc.max(dates).as_py()) if table.num_rows else None,
            run_id=newest.run_id,
            analysis_hash=newest.analysis_hash,
        )
    except (DamageError, CatalogError) as exc:  # named, with the repair; blocks this group only
        outcome.action = "failed"
        outcome.damaged = True
        outcome.error = str(exc)
    except Exception as exc:  # a failed group keeps its run folders for the next merge
        outcome.action = "failed"
        outcome.error = f"{path}: {type(exc).__name__}: {exc}"
    return outcome, write


def _report_group(rep: Reporter, settings: Settings, g: GroupOutcome) -> None:
    rel = g.path.relative_to(settings.root) if g.path.is_relative_to(settings.root) else g.path
    if g.action == "failed":
        rep.warning(f"merge failed for {rel}: {g.error}", file=str(rel), error=g.error)
    elif g.action in ("written", "deleted"):
        rep.metric(
            f"{g.path.name}: {g.added} added, {g.replaced} replaced"
            + (f", {g.removed} removed" if g.removed else "")
            + (" (file removed: no rows left)" if g.action == "deleted" else ""),
            file=str(rel),
            stream=g.stream,
            year=g.year,
            month=g.month,
            rows=g.rows,
            added=g.added,
            replaced=g.replaced,
            unchanged=g.unchanged,
            removed=g.removed,
            action=g.action,
        )


# --- the stage -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, settings: Settings, rep: Reporter) -> str:
    """The merger stage: merge every pending run folder, report per file, and the result."""
    settings.ensure_dirs()
    started = time.monotonic()
    folders = run_folders(settings)
    if not folders and not catalog.removed_streams(settings):
        rep.say("nothing to merge: data/analyzer_temp holds no run folders")
        rep.result("success", "nothing to merge", counts=MergeSummary().counts())
        return "success"
    if folders:
        rep.say(f"merging {len(folders)} run folder(s): {', '.join(f.name for f in folders)}")
    summary = merge(settings, rep)
    counts = summary.counts()
    counts["seconds"] = round(time.monotonic() - started, 3)
    counts["catalog_seconds"] = round(catalog.open_catalog(settings).seconds, 4)
    rep.metric("merge totals", **counts)
    if counts["rows_kept_without_bars"]:
        rep.warning(
            f"{counts['rows_kept_without_bars']} monthly row(s) kept on dates a full re-analysis "
            "did not cover: their bars are no longer in the store",
            rows=counts["rows_kept_without_bars"],
        )
    if summary.ok:
        msg = (
            f"merged {len(summary.files)} run file(s) into {counts['groups']} monthly file(s): "
            f"{counts['rows_added']} rows added, {counts['rows_replaced']} replaced"
            + (f", {counts['rows_kept_without_bars']} kept without bars"
               if counts["rows_kept_without_bars"] else "")
        )
        rep.say(msg)
        rep.result("success", msg, counts=counts)
        return "success"
    first = summary.errors[0]
    more = f" (and {len(summary.errors) - 1} more)" if len(summary.errors) > 1 else ""
    for e in summary.errors:
        rep.say(f"ERROR {e}")
    msg = f"merge failed: {first}{more}; kept run folder(s) {', '.join(summary.folders_kept)}"
    # A damaged monthly file blocks its own stream and month; the other groups were written.
    only_damage = not summary.file_errors and all(g.damaged for g in summary.groups if g.error)
    status = "partial" if only_damage else "failure"
    rep.result(status, msg, counts=counts, error=first)
    return status


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m pipeline_core.merger``; returns the exit code."""
    return stage_main("merger", lambda p: None, run, list(argv) if argv is not None else None)


if __name__ == "__main__":
    sys.exit(main())
