"""The bar store: per-year Parquet files, upsert, range reads (SPEC §3)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline_core import store
from pipeline_core.settings import CHICAGO, Settings, load_settings

UTC_MS = pa.timestamp("ms", tz="UTC")


def bars(ts_ms: list[int] | np.ndarray, base: float = 100.0) -> pa.Table:
    """A bars table at the given epoch-ms moments; prices derived from ``base`` and the index."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    n = len(ts)
    close = base + np.arange(n) * 0.25
    return pa.table(
        {
            "timestamp": pa.array(ts, UTC_MS),
            "open": close - 0.25,
            "high": close + 0.5,
            "low": close - 0.5,
            "close": close,
            "volume": np.arange(n, dtype=np.float64) + 1,
        }
    )


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def chi(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHICAGO)


def test_bars_go_to_the_file_of_their_chicago_year(settings: Settings) -> None:
    # 2024-12-31 23:30 Chicago is already 2025 in UTC: it belongs to the 2024 file.
    moments = [chi(2024, 12, 31, 23, 30), chi(2025, 1, 1, 0, 0), chi(2025, 6, 1, 12, 0)]
    changed = store.upsert_bars(settings, "ES", bars([ms(d) for d in moments]))
    assert changed == (moments[0], moments[-1])
    assert store.store_years(settings, "ES") == [2024, 2025]
    assert store.store_path(settings, "ES", 2024) == settings.processed_dir / "ES" / "ES_2024.parquet"
    t24 = pq.read_table(store.store_path(settings, "ES", 2024))
    assert t24.schema.equals(store.SCHEMA)
    assert t24.column("timestamp").to_pylist() == [moments[0]]
    assert t24.column("instrument").to_pylist() == ["ES"]
    assert store.read_bars(settings, "ES").column("timestamp").to_pylist() == moments


def test_schema_is_exact(settings: Settings) -> None:
    store.upsert_bars(settings, "NQ", bars([ms(chi(2025, 3, 3, 8, 30))]))
    schema = pq.read_schema(store.store_path(settings, "NQ", 2025))
    assert schema.field("timestamp").type == pa.timestamp("ms", tz="America/Chicago")
    for c in ("open", "high", "low", "close", "volume"):
        assert schema.field(c).type == pa.float64()
    assert schema.field("instrument").type == pa.string()
    assert schema.names == ["timestamp", "open", "high", "low", "close", "volume", "instrument"]
    assert not any(f.nullable for f in schema)  # a bar always has every value


def test_bars_with_missing_values_are_refused(settings: Settings) -> None:
    t = bars([ms(chi(2025, 3, 3, 8, 30)), ms(chi(2025, 3, 3, 8, 31))])
    t = t.set_column(4, "close", pa.array([1.0, None]))
    with pytest.raises(ValueError, match="missing values in close"):
        store.upsert_bars(settings, "ES", t)
    assert store.store_years(settings, "ES") == []


def test_newer_bars_win_and_only_changed_bars_count(settings: Settings) -> None:
    t0 = ms(chi(2025, 3, 3, 8, 0))
    minute = 60_000
    store.upsert_bars(settings, "ES", bars([t0 + i * minute for i in range(10)]))
    # bars 3..5 again: 3 identical, 4 changed, 5 identical; and one new bar 20
    again = bars([t0 + i * minute for i in range(10)]).slice(3, 3)
    close = again.column("close").to_pylist()
    close[1] += 0.25
    again = again.set_column(4, "close", pa.array(close)).set_column(
        2, "high", pa.array([h + 0.25 for h in again.column("high").to_pylist()])
    )
    extra = bars([t0 + 20 * minute], base=200.0)
    changed = store.upsert_bars(settings, "ES", pa.concat_tables([again, extra]))
    # bar 3 and 5 changed too (their high moved); bar 4 changed close and high; bar 20 is new
    assert changed == (datetime.fromtimestamp((t0 + 3 * minute) / 1000, CHICAGO), datetime.fromtimestamp((t0 + 20 * minute) / 1000, CHICAGO))
    got = store.read_bars(settings, "ES")
    assert got.num_rows == 11
    assert got.column("close").to_pylist()[4] == close[1]
    assert got.column("close").to_pylist()[-1] == 200.0


def test_upserting_the_same_bars_changes_nothing_and_rewrites_nothing(settings: Settings) -> None:
    b = bars([ms(chi(2025, 3, 3, 8, 0)) + i * 60_000 for i in range(100)])
    store.upsert_bars(settings, "ES", b)
    path = store.store_path(settings, "ES", 2025)
    before = path.stat().st_mtime_ns, path.read_bytes()
    calls: list[tuple[datetime, datetime]] = []
    assert store.upsert_bars(settings, "ES", b.slice(10, 20), before_write=lambda first, last: calls.append((first, last))) is None
    assert calls == []
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_before_write_sees_the_range_before_any_file_changes(settings: Settings) -> None:
    b = bars([ms(chi(2025, 12, 31, 22, 0)), ms(chi(2026, 1, 2, 9, 0))])
    seen = []

    def hook(first: datetime, last: datetime) -> None:
        seen.append((first, last, store.store_years(settings, "GC")))

    store.upsert_bars(settings, "GC", b, before_write=hook)
    assert seen == [(chi(2025, 12, 31, 22, 0), chi(2026, 1, 2, 9, 0), [])]
    assert store.store_years(settings, "GC") == [2025, 2026]


def test_unsorted_input_with_equal_timestamps_keeps_the_last_row(settings: Settings) -> None:
    t = ms(chi(2025, 5, 5, 9, 0))
    b = bars([t + 120_000, t, t + 60_000, t])  # the second `t` (close 100.75) wins
    store.upsert_bars(settings, "CL", b)
    got = store.read_bars(settings, "CL")
    assert got.column("timestamp").to_pylist() == [datetime.fromtimestamp((t + k * 60_000) / 1000, CHICAGO) for k in range(3)]
    assert got.column("close").to_pylist() == [100.75, 100.5, 100.0]


def test_negative_and_zero_prices_are_stored(settings: Settings) -> None:
    b = bars([ms(chi(2020, 4, 20, 13, 0))], base=-37.63)
    store.upsert_bars(settings, "CL", b)
    assert store.read_bars(settings, "CL").column("close").to_pylist() == [-37.63]


def test_read_bars_range_across_years_and_dst(settings: Settings) -> None:
    # one bar every 30 minutes from mid-December 2024 to mid-March 2025
    start = ms(chi(2024, 12, 15))
    ts = np.arange(start, ms(chi(2025, 3, 15)), 30 * 60_000)
    store.upsert_bars(settings, "ES", bars(ts))
    lo, hi = chi(2024, 12, 31, 20, 0), chi(2025, 1, 1, 2, 0)
    got = store.read_bars(settings, "ES", lo, hi).column("timestamp").to_pylist()
    assert got[0] == lo and got[-1] == hi - timedelta(minutes=30) and len(got) == 12
    # the spring-forward night: 00:00 to 04:00 Chicago on 2025-03-09 is three real hours
    dst = store.read_bars(settings, "ES", chi(2025, 3, 9, 0, 0), chi(2025, 3, 9, 4, 0))
    assert dst.num_rows == 6
    assert dst.column("timestamp").to_pylist()[-1] == chi(2025, 3, 9, 3, 30)
    assert store.read_bars(settings, "ES", start=chi(2025, 3, 14, 23, 0)).num_rows == 2
    assert store.read_bars(settings, "ES", end=chi(2024, 12, 15, 1, 0)).num_rows == 2
    assert store.read_bars(settings, "ES", chi(2030, 1, 1), chi(2031, 1, 1)).num_rows == 0


def test_empty_store_reads_as_an_empty_table_with_the_schema(settings: Settings) -> None:
    t = store.read_bars(settings, "YM")
    assert t.num_rows == 0 and t.schema.equals(store.SCHEMA)
    assert store.store_years(settings, "YM") == []


def test_leftover_temp_files_are_not_years(settings: Settings) -> None:
    store.upsert_bars(settings, "ES", bars([ms(chi(2025, 1, 2, 9, 0))]))
    (settings.processed_dir / "ES" / ".ES_2024.parquet.abc123.tmp").write_bytes(b"partial")
    (settings.processed_dir / "ES" / "NQ_2023.parquet").write_bytes(b"x")
    assert store.store_years(settings, "ES") == [2025]


def test_naive_bounds_are_chicago_wall_time(settings: Settings) -> None:
    store.upsert_bars(settings, "ES", bars([ms(chi(2025, 7, 1, 8, 0)), ms(chi(2025, 7, 1, 9, 0))]))
    got = store.read_bars(settings, "ES", datetime(2025, 7, 1, 8, 30), datetime(2025, 7, 1, 9, 30))
    assert got.column("timestamp").to_pylist() == [chi(2025, 7, 1, 9, 0)]


def test_a_naive_timestamp_column_is_refused(settings: Settings) -> None:
    t = bars([0]).set_column(0, "timestamp", pa.array([0], pa.timestamp("ms")))
    with pytest.raises(TypeError, match="time-zone aware"):
        store.upsert_bars(settings, "ES", t)


# A model of the store: upserts in any order equal a dict where the last write wins.
_MINUTES = st.integers(min_value=0, max_value=2 * 366 * 24 * 60)  # two years of minutes
_BATCH = st.lists(st.tuples(_MINUTES, st.integers(0, 1000)), min_size=1, max_size=40)


@hsettings(max_examples=40, deadline=None)
@given(batches=st.lists(_BATCH, min_size=1, max_size=5), window=st.tuples(_MINUTES, _MINUTES))
def test_upserts_equal_a_last_write_wins_model(tmp_path_factory: pytest.TempPathFactory, batches: list, window: tuple[int, int]) -> None:
    s = load_settings(root=tmp_path_factory.mktemp("store"), env={})
    origin = ms(chi(2024, 12, 20))
    model: dict[int, float] = {}
    for batch in batches:
        ts = [origin + m * 60_000 for m, _ in batch]
        closes = [float(p) for _, p in batch]
        t = pa.table(
            {
                "timestamp": pa.array(ts, UTC_MS),
                "open": closes,
                "high": closes,
                "low": closes,
                "close": closes,
                "volume": [1.0] * len(ts),
            }
        )
        before = dict(model)
        for k, c in zip(ts, closes, strict=True):
            model[k] = c
        changed_keys = sorted(k for k in model if before.get(k) != model[k])
        changed = store.upsert_bars(s, "ES", t)
        if changed_keys:
            assert changed == (
                datetime.fromtimestamp(changed_keys[0] / 1000, CHICAGO),
                datetime.fromtimestamp(changed_keys[-1] / 1000, CHICAGO),
            )
        else:
            assert changed is None
    got = store.read_bars(s, "ES")
    keys = sorted(model)
    assert got.column("timestamp").cast(pa.int64()).to_pylist() == keys
    assert got.column("close").to_pylist() == [model[k] for k in keys]
    lo, hi = sorted(origin + m * 60_000 for m in window)
    part = store.read_bars(s, "ES", datetime.fromtimestamp(lo / 1000, CHICAGO), datetime.fromtimestamp(hi / 1000, CHICAGO))
    assert part.column("timestamp").cast(pa.int64()).to_pylist() == [k for k in keys if lo <= k < hi]


def test_a_naive_bound_is_chicago_time_whatever_the_machine_zone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.upsert_bars(settings, "ES", bars([ms(chi(2024, 12, 31, 23, 30)), ms(chi(2025, 1, 2, 9, 0))]))
    monkeypatch.setenv("TZ", "Pacific/Honolulu")  # 23:00 Chicago is already 2025 nowhere west of it
    time.tzset()
    try:
        got = store.read_bars(settings, "ES", datetime(2024, 12, 31, 23, 0))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert got.num_rows == 2
