"""Pending-work state: concurrent processes updating changes.json lose nothing."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

from pipeline_core import state
from pipeline_core.settings import CHICAGO, Settings

_WRITER = """
import sys
from datetime import datetime, timedelta
from pipeline_core import state
from pipeline_core.settings import CHICAGO, load_settings
s = load_settings(root=sys.argv[1], env={})
base = datetime(2025, 6, 2, 8, 0, tzinfo=CHICAGO)
for i in range(40):
    inst = f"I{sys.argv[2]}_{i % 4}"
    state.record_changes(s, inst, base + timedelta(minutes=i), base + timedelta(minutes=i + 1))
"""


def test_concurrent_processes_lose_no_update(settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(settings.root), str(n)]) for n in range(6)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    changes = state.read_changes(settings)
    assert sorted(changes) == sorted(f"I{n}_{k}" for n in range(6) for k in range(4))
    first, last = changes["I0_0"]
    assert (first.hour, first.minute, last.hour, last.minute) == (8, 0, 8, 37)


def test_clear_keeps_a_range_widened_after_it_was_consumed(settings: Settings) -> None:
    a = datetime(2025, 6, 2, 8, 0, tzinfo=CHICAGO)
    b = datetime(2025, 6, 2, 9, 0, tzinfo=CHICAGO)
    state.record_changes(settings, "ES", a, b)
    consumed = state.read_changes(settings)["ES"]
    state.record_changes(settings, "ES", a, datetime(2025, 6, 3, 9, 0, tzinfo=CHICAGO))
    state.clear_changes(settings, "ES", consumed)  # newer bars arrived meanwhile: still pending
    assert "ES" in state.read_changes(settings)
    state.clear_changes(settings, "ES", state.read_changes(settings)["ES"])
    assert state.read_changes(settings) == {}
