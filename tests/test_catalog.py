"""Pending work in the catalogue: concurrent processes recording changes lose nothing."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

from pipeline_core import catalog
from pipeline_core.settings import CHICAGO, Settings

_WRITER = """
import sys
from datetime import datetime, timedelta
from pipeline_core import catalog
from pipeline_core.settings import CHICAGO, load_settings
s = load_settings(root=sys.argv[1], env={})
base = datetime(2025, 6, 2, 8, 0, tzinfo=CHICAGO)
for i in range(40):
    inst = f"I{sys.argv[2]}_{i % 4}"
    catalog.open_catalog(s).record_changes(inst, base + timedelta(minutes=i), base + timedelta(minutes=i + 1))
"""


def test_concurrent_processes_lose_no_update(settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(settings.root), str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(e[-2000:] for e in errors if e)
    changes = catalog.open_catalog(settings).read_changes()
    assert sorted(changes) == sorted(f"I{n}_{k}" for n in range(6) for k in range(4))
    first, last = changes["I0_0"]
    assert (first.hour, first.minute, last.hour, last.minute) == (8, 0, 8, 37)


def test_clear_keeps_a_range_widened_after_it_was_consumed(settings: Settings) -> None:
    a = datetime(2025, 6, 2, 8, 0, tzinfo=CHICAGO)
    b = datetime(2025, 6, 2, 9, 0, tzinfo=CHICAGO)
    catalog.open_catalog(settings).record_changes("ES", a, b)
    consumed = catalog.open_catalog(settings).read_changes()["ES"]
    catalog.open_catalog(settings).record_changes("ES", a, datetime(2025, 6, 3, 9, 0, tzinfo=CHICAGO))
    cat = catalog.open_catalog(settings)
    cat.save_analysis("ES", {"analysis_hash": "h"}, consumed)  # newer bars arrived meanwhile
    assert "ES" in cat.read_changes()
    cat.save_analysis("ES", {"analysis_hash": "h"}, cat.read_changes()["ES"])
    assert catalog.open_catalog(settings).read_changes() == {}
