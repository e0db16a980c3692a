"""``qtsw verify`` and ``qtsw rebuild``: check the data against the catalogue, and repair a bar
store from the raw archive (SPEC §11.1).

``verify`` reads every store, monthly and archived raw file the catalogue records (readable with
Parquet page checksums, sha256, rows) and walks the folders for files it does not know. It
changes nothing.

``rebuild`` replays an instrument's archived exports in their ingestion order into a new store
folder beside the old one, swaps the folders only when the new store is complete (recording the
new files by the catalogue's write protocol), sets damaged monthly files of its streams aside in
``data/damaged/``, and asks for a full re-analysis of the instrument, which the next run (or the
rebuild itself, when no engine is running) does and merges.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline_core import catalog, clock, store
from pipeline_core.catalog import MONTHLY, STORE, Catalog, FileRecord, sha256_file
from pipeline_core.fsutil import fsync_dir
from pipeline_core.safetext import safe
from pipeline_core.settings import Settings


@dataclass
class Problem:
    """One thing ``verify`` found wrong."""

    problem: str  # missing | damaged | unreadable | rows | unknown | catalogue
    path: str  # relative to the data root
    detail: str
    repair: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _check_parquet(path: Path) -> tuple[int | None, str | None]:
    """(rows, None) when the file reads whole with its page checksums, else (None, why)."""
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        rows = 0
        for i in range(pf.metadata.num_row_groups):
            rows += pf.read_row_group(i).num_rows
        return rows, None
    except Exception as exc:  # any failure to read is what verify reports
        return None, f"{type(exc).__name__}: {exc}"


def verify(settings: Settings) -> list[Problem]:
    """Every problem with the data files, the archive and the catalogue (empty: all is well)."""
    problems: list[Problem] = []
    try:
        cat = catalog.open_readonly(settings)
    except catalog.CatalogError as exc:
        return [Problem("catalogue", str(settings.catalog_path), str(exc), "restore it from a backup")]
    records: list[FileRecord] = cat.records() if cat else []
    raws = cat.raw_files() if cat else []
    if cat is not None:
        cat.close()
    known: set[str] = set()
    for rec in records:
        known.add(rec.path)
        path = settings.root / rec.path
        fix = catalog.repair_hint(rec.kind, rec.subject)
        if not path.is_file():
            problems.append(Problem("missing", rec.path, "recorded in the catalogue, not on disk", fix))
            continue
        digest = sha256_file(path)
        if digest != rec.sha256:
            problems.append(Problem(
                "damaged", rec.path,
                f"sha256 {digest[:12]}… differs from the catalogue's {rec.sha256[:12]}…", fix,
            ))
            continue
        rows, why = _check_parquet(path)
        if why is not None:
            problems.append(Problem("unreadable", rec.path, why, fix))
        elif rec.rows is not None and rows != rec.rows:
            problems.append(Problem("rows", rec.path, f"{rows} rows, the catalogue says {rec.rows}", fix))
    archived: set[str] = set()
    for raw in raws:
        if not raw.get("archived_path"):
            continue
        archived.add(raw["archived_path"])
        path = settings.root / raw["archived_path"]
        name = safe(raw["archived_path"])
        fix = "restore the file from a backup (it is the source a rebuild replays)"
        if not path.is_file():
            problems.append(Problem("missing", name, "archived raw file recorded, not on disk", fix))
        elif sha256_file(path) != raw["sha256"]:
            problems.append(Problem("damaged", name, "archived raw file differs from its recorded sha256", fix))
    for base in (settings.processed_dir, settings.analyzer_runs_dir):
        for path in sorted(_files(base, ".parquet")):
            rel = str(path.relative_to(settings.root))
            if rel not in known:
                problems.append(Problem(
                    "unknown", safe(rel), "not in the catalogue",
                    "move it away if qtsw did not write it; `qtsw rebuild` rewrites the store",
                ))
    ingested = {raw["sha256"] for raw in raws}
    for path in sorted(_files(settings.archive_dir)):
        rel = str(path.relative_to(settings.root))
        if rel not in archived and path.parent.name != "logs":
            if sha256_file(path) in ingested:
                continue  # a copy of an ingested export, archived before copies were recorded
            problems.append(Problem("unknown", safe(rel), "archived file not in the catalogue", "-"))
    return problems


def _files(base: Path, suffix: str = "") -> list[Path]:
    """Regular files under ``base`` (no symlinks followed; hidden files and folders skipped)."""
    out: list[Path] = []
    if not base.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith(".") or not name.endswith(suffix) or p.is_symlink() or not p.is_file():
                continue
            out.append(p)
    return out


# --- rebuild ---------------------------------------------------------------------------------


class RebuildError(Exception):
    """A rebuild that cannot be done: says why and what to do."""


@dataclass
class RebuildOutcome:
    instrument: str
    files_replayed: int = 0
    bars: int = 0
    years: list[int] | None = None
    monthly_set_aside: list[str] | None = None
    seconds: float = 0.0
    refused: list[str] = field(default_factory=list)  # archived exports today's checks refuse


def _raw_files_of(cat: Catalog, settings: Settings, instrument: str) -> list[dict]:
    from pipeline_core.rawfiles import RawFileError, parse_instrument

    out = []
    for raw in cat.raw_files():
        if raw["status"] not in ("ingested", "recovered"):
            continue
        inst = raw.get("instrument")
        if inst is None:  # recovered from the archive at migration: its name says
            try:
                inst = parse_instrument(raw["name"], settings)
            except RawFileError:
                continue
        if inst == instrument:
            out.append(raw)
    return out


def rebuild_store(
    settings: Settings, instrument: str, say: Callable[[str], None] = lambda _t: None
) -> RebuildOutcome:
    """Rebuild ``instrument``'s bar store from the raw archive and ask for its full
    re-analysis. Each archived export goes through the translator's checks as they are today
    (the settings, the rules): one they refuse is not replayed, named through ``say`` and
    listed in ``refused``. Raises :class:`RebuildError` when an archived file is missing or
    damaged, or when today's checks refuse every one (the old store is then left as it is)."""
    from pipeline_core import translator

    if instrument not in settings.instruments:
        raise RebuildError(
            f"unknown instrument {instrument!r}; configured: {', '.join(sorted(settings.instruments))}"
        )
    t0 = time.perf_counter()
    cat = catalog.open_catalog(settings)
    out = RebuildOutcome(instrument)
    raws = _raw_files_of(cat, settings, instrument)
    for raw in raws:
        if not raw.get("archived_path"):
            raise RebuildError(
                f"{safe(raw['name'])} (ingested {raw['ingested_at']}) is not in the raw archive "
                f"(raw_policy {settings.raw_policy}); the store of {instrument} cannot be rebuilt from it"
            )
        path = cat.abs(raw["archived_path"])
        if not path.is_file():
            raise RebuildError(f"{safe(raw['archived_path'])}: archived raw file missing; restore it first")
        if sha256_file(path) != raw["sha256"]:
            raise RebuildError(f"{safe(raw['archived_path'])}: archived raw file damaged (sha256 differs); restore it first")
    final = store.store_dir(settings, instrument)
    with catalog.instrument_lock(settings, instrument):
        work = settings.processed_dir / f".rebuild-{instrument}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            for n, raw in enumerate(raws, start=1):
                path = cat.abs(raw["archived_path"])
                say(f"{instrument}: replaying {n}/{len(raws)} {safe(raw['archived_path'])}")
                result = translator.FileResult(path.name, instrument, path.stat().st_size, raw["sha256"])
                try:
                    # the translator's checks as they are today (the settings, the rules)
                    layout, pieces = translator.parse_file(path, settings, instrument=instrument)
                    years = translator.assemble(
                        path, settings, instrument, layout, pieces, result, int(time.time() * 1000)
                    )
                except translator.FileRejected as exc:
                    # ingested under other checks (an earlier max_bad_row_fraction, a rule that
                    # came later): its bars are not replayed, and the operator is told which
                    out.refused.append(str(raw["archived_path"]))
                    say(f"{instrument}: not replayed: {safe(raw['archived_path'])}: today's checks refuse "
                        f"it (rule {exc.rule}): {exc.reason}")
                    continue
                store.upsert_years(settings, instrument, list(years.items()), base=work)
                out.files_replayed += 1
                out.bars += result.rows_kept
            if raws and not out.files_replayed:
                raise RebuildError(
                    f"today's checks refuse every archived export of {instrument} ({len(raws)}, named "
                    "above): the store is left as it was")
            new_files = sorted(work.glob(f"{instrument}_*.parquet"))
            out.years = [int(p.stem.rsplit("_", 1)[1]) for p in new_files]
            # Intents first: a crash after the swap leaves files the next start records.
            for p in new_files:
                table = pq.read_table(p, columns=["timestamp"])
                ts = table.column("timestamp")
                cat.put_intent(
                    final / p.name, STORE, instrument, sha256_file(p), p.stat().st_size,
                    table.num_rows, str(ts[0]) if len(ts) else None, str(ts[-1]) if len(ts) else None,
                    "rebuild",
                )
            old = settings.processed_dir / f".old-{instrument}-{os.getpid()}"
            if final.exists():
                os.replace(final, old)
            os.replace(work, final)
            fsync_dir(settings.processed_dir)
            new_names = {p.name for p in new_files}
            gone = [settings.root / r.path for r in cat.records(STORE)
                    if r.subject == instrument and Path(r.path).name not in new_names]
            cat.commit_intents([final / name for name in sorted(new_names)], forget=gone)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out.monthly_set_aside = set_aside_damaged_monthly(settings, instrument, say)
        cat.request_full(instrument, "store rebuilt from the raw archive")
    out.seconds = time.perf_counter() - t0
    return out


def set_aside_damaged_monthly(
    settings: Settings, instrument: str, say: Callable[[str], None] = lambda _t: None
) -> list[str]:
    """Move the damaged monthly files of ``instrument``'s streams to ``data/damaged/`` (kept for
    inspection, never deleted) and drop their records, so the full re-analysis writes them anew."""
    cat = catalog.open_catalog(settings)
    moved: list[str] = []
    for rec in cat.records(MONTHLY):
        if rec.subject is None or rec.subject[:-1] != instrument:
            continue
        path = settings.root / rec.path
        ok = path.is_file() and sha256_file(path) == rec.sha256 and _check_parquet(path)[1] is None
        if ok:
            continue
        if path.is_file():
            dest = settings.data_dir / "damaged" / f"{rec.path}.{clock.now():%Y%m%d_%H%M%S}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            say(f"{rec.path}: damaged; set aside as {dest.relative_to(settings.root)}")
        cat.forget(path)
        moved.append(rec.path)
    return moved
