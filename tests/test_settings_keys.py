"""Key remaps, QTSW_* variables and the source of a wrong value, checked when settings load."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_core import keys as keytable
from pipeline_core.settings import SettingsError, load_settings


def load_with_keys(root: Path, keys_toml: str):
    (root / "qtsw.toml").write_text("[keys]\n" + keys_toml)
    return load_settings(root=root, env={})


def test_a_remap_is_stored_as_the_console_matches_it(root: Path) -> None:
    s = load_with_keys(root, 'help = "?"\nrun_now = "R, f6"\nresults = "shift+ctrl+s"\nhistory.reload = "r"\n')
    assert s.keys == {"help": "question_mark", "run_now": "R,f6", "results": "ctrl+shift+s",
                      "history.reload": "r"}  # a screen's own key may reuse an app key


@pytest.mark.parametrize(
    ("toml", "key", "needle"),
    [
        ('results = "ctrl+shift+banana"\n', "keys.results", "a letter, digit, punctuation character or key name"),
        ('run_now = "hyperdrive+r"\n', "keys.run_now", "ctrl+"),
        ('run_now = ""\n', "keys.run_now", "ctrl+"),
        ('run_now = 5\n', "keys.run_now", "ctrl+"),
        ('run_now = "r,,x"\n', "keys.run_now", "ctrl+"),
        ('run_now = "é"\n', "keys.run_now", "ctrl+"),
        ('run_now = "q"\n', "keys.run_now", "(q is quit's)"),
        ('quit = "h,x"\n', "keys.quit", "(h is history's)"),
        ('"events.verbose" = "r"\n', "keys.events.verbose", "(r is run_now's)"),
        ('"history.reload" = "escape"\n', "keys.history.reload", "history screen"),
        ('"confirm.yes" = "n"\n', "keys.confirm.yes", "confirm dialog"),
        ('runnow = "x"\n', "keys.runnow", "a binding id: alerts, alerts.acknowledge"),
    ],
)
def test_a_bad_remap_stops_start_up_naming_key_value_and_rule(root: Path, toml: str, key: str, needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_with_keys(root, toml)
    assert err.value.key == key
    text = str(err.value)
    assert needle in text and key in text and str(root / "qtsw.toml") in text  # the file that said it


def test_remapping_both_sides_of_a_swap_is_fine(root: Path) -> None:
    s = load_with_keys(root, 'run_now = "q"\nquit = "x"\n')
    assert s.keys == {"run_now": "q", "quit": "x"}


def test_an_unknown_qtsw_variable_is_an_error(root: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(root=root, env={"QTSW_ENGINE_WORKER": "2"})
    assert err.value.key == "QTSW_ENGINE_WORKER"
    assert "QTSW_ENGINE_WORKERS" in str(err.value) and "environment" in str(err.value)
    # the variables the engine gives its stages are not settings, and are allowed
    load_settings(root=root, env={"QTSW_RUN_ID": "x", "QTSW_PROC_TOKEN": "y", "QTSW_STAGE": "merger"})


def test_a_wrong_value_says_where_it_came_from(root: Path) -> None:
    (root / "qtsw.toml").write_text("[engine]\nworkers = -1\n")
    with pytest.raises(SettingsError, match=r"engine.workers = -1 \(from .*qtsw.toml\)"):
        load_settings(root=root, env={})
    (root / "qtsw.toml").write_text("[engine]\nworkers = 2\n")
    with pytest.raises(SettingsError, match=r"engine.workers = 'many' \(from environment variable QTSW_ENGINE_WORKERS\)"):
        load_settings(root=root, env={"QTSW_ENGINE_WORKERS": "many"})
    with pytest.raises(SettingsError, match=r"engine.workers = 'x' \(from the command line\)"):
        load_settings(root=root, env={}, overrides={"engine.workers": "x"})
    (root / "qtsw.toml").write_text('[sessions]\nS1 = {range_start = "08:00", slots = ["07:30"]}\n')
    with pytest.raises(SettingsError, match=r"sessions.S1.slots .*\(from .*qtsw.toml\)"):
        load_settings(root=root, env={})


@pytest.mark.parametrize("args", [["--no-ui", "--run-now"], ["status"]])
def test_every_mode_refuses_a_bad_remap(root: Path, args: list[str]) -> None:
    (root / "qtsw.toml").write_text('[keys]\nrun_now = "q"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    got = subprocess.run([sys.executable, "-m", "qtsw_tui", "--root", str(root), *args], capture_output=True,
                         text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert got.returncode == 4
    [line] = got.stderr.splitlines()
    assert "keys.run_now = 'q'" in line and "quit" in line


def test_the_key_table_matches_the_console() -> None:
    """pipeline_core.keys (no Textual) lists exactly the console's bindings and default keys,
    and names keys as Textual does."""
    from textual.binding import Binding
    from textual.keys import Keys, _character_to_key

    from qtsw_tui import app as console
    from qtsw_tui.screens.results import ResultsScreen  # imported by the console when first opened

    classes = (console.QtswApp, console.EventsPanel, console.EventTable, console.StagePane,
               console.ConfirmScreen, console.HelpScreen, console.HistoryScreen, ResultsScreen,
               console.RunDetailScreen, console.EventDetailScreen, console.QuarantineScreen,
               console.AlertsScreen)
    declared = {b.id: b.key for cls in classes for b in cls.BINDINGS if isinstance(b, Binding) and b.id}
    assert declared == keytable.DEFAULT_KEYS
    assert console.binding_ids() == set(keytable.DEFAULT_KEYS)
    for ch in string.punctuation:
        assert keytable.PUNCTUATION[ch] == _character_to_key(ch)
    textual_names = {k.value.split("+")[-1] for k in Keys}
    assert keytable.NAMED_KEYS <= textual_names
