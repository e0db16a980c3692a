"""No stage imports pandas (SPEC §11.2's warm launcher no longer pre-imports it, and a plain
stage would pay 0.2-0.3 s for it): each stage runs as a real subprocess on a real data root, in
the situations of a day's runs, and then says whether ``pandas`` got into ``sys.modules``.

pyarrow imports pandas behind the stages' backs (``to_numpy``, ``pa.array``, a Python value
given to a compute function, a tz-aware timestamp's ``as_py`` or Parquet statistics): these
tests are what keeps those calls out of the stages' paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

import numpy as np
import pyarrow.compute as pc

from pipeline_core import protocol, sample, store
from pipeline_core.results import monthly_files
from pipeline_core.settings import Settings

ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}, "PYTHONUNBUFFERED": "1"}
INSTRUMENTS = ["ES", "CL"]
END = date(2025, 11, 26)
NEXT_DAY = date(2025, 11, 28)  # the next trade date after END (Thanksgiving in between)
MAIN = {
    "translator": "pipeline_core.translator",
    "analyzer": "pipeline_core.analyzer.runner",
    "merger": "pipeline_core.merger",
}
CHECK = """\
import sys
from {module} import main
code = main({argv!r})
print("PANDAS-IMPORTED" if "pandas" in sys.modules else "NO-PANDAS", file=sys.stderr)
sys.exit(code)
"""


def stage(settings: Settings, name: str, *args: str, run_id: str = "run-test", check: bool = True) -> dict:
    """Run a stage as ``python -c`` (its ``main``, as ``python -m`` runs it), assert it succeeded
    (and, with ``check``, without importing pandas), and return its result."""
    argv = ["--root", str(settings.root), "--run-id", run_id, *args]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=MAIN[name], argv=argv)],
        capture_output=True, text=True, timeout=180, env=ENV, stdin=subprocess.DEVNULL,
    )
    messages = [m for m in map(protocol.parse, proc.stdout.splitlines()) if m is not None]
    results = [m.body for m in messages if m.type == "result"]
    assert proc.returncode == 0 and len(results) == 1, proc.stdout + proc.stderr
    assert results[0]["status"] == "success", results[0]
    assert "NO-PANDAS" in proc.stderr or not check, f"the {name} imported pandas ({' '.join(args)})"
    return results[0]


def export(settings: Settings, days: int, end: date, seed: int) -> None:
    sample.write_samples(settings, days=days, instruments=INSTRUMENTS, seed=seed, end=end)


def analyze_all(settings: Settings, *args: str, run_id: str, check: bool = True) -> list[dict]:
    return [stage(settings, "analyzer", "--instrument", inst, *args, run_id=run_id, check=check)
            for inst in INSTRUMENTS]


def history(settings: Settings) -> None:
    """Three weeks of bars for two instruments, translated, analysed and merged (the stages
    checked by the other tests)."""
    export(settings, days=15, end=END, seed=7)
    stage(settings, "translator", check=False)
    analyze_all(settings, run_id="r0", check=False)
    stage(settings, "merger", run_id="r0", check=False)


def reanalysed_and_merged(settings: Settings) -> dict:
    """The changed dates analysed incrementally (each instrument has some) and merged: the
    merger's counts."""
    runs = analyze_all(settings, run_id="r1")
    assert all(r["counts"]["mode"] == "incremental" and r["counts"]["dates"] for r in runs), runs
    return stage(settings, "merger", run_id="r1")["counts"]


def test_the_first_run_translates_analyses_and_merges_into_new_files(settings: Settings) -> None:
    export(settings, days=15, end=END, seed=7)
    assert stage(settings, "translator")["counts"]["translated"] == len(INSTRUMENTS)
    assert store.store_years(settings, "ES") == [2025]
    assert all(r["counts"]["rows"] for r in analyze_all(settings, run_id="r0"))
    counts = stage(settings, "merger", run_id="r0")["counts"]
    assert counts["files_written"] == counts["groups"] == sum(map(len, monthly_files(settings).values())) > 0
    assert counts["rows_added"] > 0 and counts["rows_replaced"] == 0


def test_a_new_day_appended_to_existing_year_files_analysed_and_merged(settings: Settings) -> None:
    history(settings)
    before = store.read_bars(settings, "ES").num_rows
    export(settings, days=1, end=NEXT_DAY, seed=11)
    result = stage(settings, "translator")
    assert result["counts"]["translated"] == len(INSTRUMENTS)
    bars = store.read_bars(settings, "ES")
    assert bars.num_rows > before and store.store_years(settings, "ES") == [2025]
    assert store.ms_to_datetime(int(pc.max(bars.column("timestamp").cast("int64")).as_py())).date() == NEXT_DAY
    counts = reanalysed_and_merged(settings)
    assert counts["files_written"] and counts["rows_added"], counts


def test_bars_upserted_into_the_middle_of_a_year_file_reanalysed_and_merged(settings: Settings) -> None:
    history(settings)
    last = store.read_bars(settings, "ES").num_rows
    mid = sample.trading_days(END, 8)[0]
    export(settings, days=2, end=mid, seed=99)  # other prices for two days inside the history
    assert stage(settings, "translator")["counts"]["translated"] == len(INSTRUMENTS)
    new = sample.generate_bars("ES", settings.instrument("ES").tick, sample.trading_days(mid, 2), 99)
    stored = store.read_bars(settings, "ES")
    assert stored.num_rows >= last and store.store_years(settings, "ES") == [2025]
    ts = stored.column("timestamp").cast("int64").to_numpy()
    at = np.searchsorted(ts, new.column("timestamp").cast("int64").to_numpy())
    assert at[-1] < len(ts) - 1000, "the new bars are inside the history, not after it"
    for c in ("timestamp", "open", "high", "low", "close"):
        want = new.column(c).cast(stored.column(c).type).to_numpy()
        assert (stored.column(c).to_numpy()[at] == want).all(), c
    counts = reanalysed_and_merged(settings)
    assert counts["files_written"] and counts["rows_replaced"], counts


def test_a_full_reanalysis_merged_into_existing_files(settings: Settings) -> None:
    history(settings)
    runs = analyze_all(settings, "--full", run_id="r1")
    assert all(r["counts"]["mode"] == "full" and r["counts"]["dates"] for r in runs), runs
    counts = stage(settings, "merger", run_id="r1")["counts"]
    assert counts["groups"] and not counts["groups_failed"], counts
