"""The quarantine's list and re-queue on real files (the translator's own quarantine step)."""

from __future__ import annotations

from datetime import date

import pytest

from pipeline_core.quarantine import quarantined, requeue
from pipeline_core.sample import write_samples
from pipeline_core.settings import Settings
from pipeline_core.translator import FileRejected
from pipeline_core.translator import quarantine as reject


def test_list_then_requeue_with_its_signal_files(settings: Settings) -> None:
    [raw] = write_samples(settings, days=1, instruments=["ES"], end=date(2025, 11, 26))
    signals = sorted(p.name for p in settings.raw_logs_dir.iterdir())
    assert signals  # the exporter's complete signal
    reject(settings, raw, FileRejected("12 of 100 rows broken", "too_many_bad_rows", 7), "run-1")
    assert not raw.exists() and not list(settings.raw_logs_dir.iterdir())
    [q] = quarantined(settings)
    assert (q.name, q.rule, q.line, q.run_id) == (raw.name, "too_many_bad_rows", "7", "run-1")
    assert q.reason == "12 of 100 rows broken" and q.rejected_at is not None

    back = requeue(settings, raw.name)
    assert back == raw and raw.exists()
    assert sorted(p.name for p in settings.raw_logs_dir.iterdir()) == signals
    assert quarantined(settings) == []


def test_requeue_refuses_to_overwrite_and_unknown_names(settings: Settings) -> None:
    [raw] = write_samples(settings, days=1, instruments=["ES"], end=date(2025, 11, 26))
    text = raw.read_text()
    reject(settings, raw, FileRejected("bad", "malformed", 2), None)
    raw.write_text(text)  # a new export of the same name arrived meanwhile
    with pytest.raises(FileExistsError):
        requeue(settings, raw.name)
    with pytest.raises(FileNotFoundError):
        requeue(settings, "nothing.csv")
    with pytest.raises(FileNotFoundError):
        requeue(settings, f"{raw.name}.error.txt")
    assert len(quarantined(settings)) == 1
