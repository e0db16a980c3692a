"""Settings: defaults < qtsw.toml < QTSW_* environment < flags; invalid values name key, value, rule."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from pipeline_core.settings import SettingsError, load_settings, settings_args


def test_defaults_hold_the_instrument_table_and_sessions(root: Path) -> None:
    s = load_settings(root=root, env={})
    assert s.instrument("ES").tick == 0.25 and s.instrument("ES").target == 10
    assert s.instrument("NG").tick == 0.001 and s.instrument("NG").target == 0.05
    assert s.instrument("RTY").tick == 0.10
    # micros use the base symbol's tick and target
    mnq = s.instrument("MNQ")
    assert (mnq.tick, mnq.target, mnq.base) == (0.25, 50, "NQ")
    assert s.instrument("M2K").base == "RTY"
    assert [x.name for x in s.sessions] == ["S1", "S2"]
    assert s.sessions[0].range_start == time(2, 0)
    assert s.sessions[1].slots == (time(9, 30), time(10), time(10, 30), time(11))
    assert s.trade_days == frozenset(range(5))
    assert s.entry_cutoff == time(16, 0)
    assert s.raw_policy == "archive"
    assert s.timeouts["translator"] == 3600 and s.timeouts["merger"] == 1800
    assert s.schedule_minutes == (0, 15, 30, 45)


def test_paths_live_under_the_root(root: Path) -> None:
    s = load_settings(root=root, env={})
    assert s.processed_dir == root / "data" / "processed"
    assert s.lock_file == root / "logs" / "qtsw.lock"
    assert s.runs_index == root / "logs" / "runs.jsonl"
    assert s.catalog_path == root / "data" / "catalog.sqlite"
    s.ensure_dirs()
    for d in (s.raw_logs_dir, s.analyzer_temp_dir, s.events_dir, s.reports_dir):
        assert d.is_dir()


def test_root_from_environment(tmp_path: Path) -> None:
    s = load_settings(env={"QTSW_ROOT": str(tmp_path)})
    assert s.root == tmp_path.resolve()


def test_precedence_file_then_env_then_flags(root: Path) -> None:
    (root / "qtsw.toml").write_text(
        '[engine]\nworkers = 3\n[analysis]\nentry_cutoff = "15:30"\n[input]\nraw_policy = "keep"\n'
    )
    s = load_settings(root=root, env={})
    assert (s.workers, s.entry_cutoff, s.raw_policy) == (3, time(15, 30), "keep")
    s = load_settings(root=root, env={"QTSW_ENGINE_WORKERS": "5"})
    assert s.workers == 5 and s.raw_policy == "keep"
    s = load_settings(root=root, env={"QTSW_ENGINE_WORKERS": "5"}, overrides={"engine.workers": 1})
    assert s.workers == 1


def test_instrument_table_is_data(root: Path) -> None:
    (root / "qtsw.toml").write_text(
        '[instruments]\nES = {tick = 0.25, target = 12}\nZB = {tick = 0.03125, target = 1}\n'
    )
    s = load_settings(root=root, env={})
    assert sorted(s.instruments) == ["ES", "ZB"]
    assert s.instrument("ES").target == 12


def test_point_values_are_data_and_a_micro_has_its_own(root: Path) -> None:
    s = load_settings(root=root, env={})
    expected = {"ES": 50, "NQ": 20, "YM": 5, "CL": 1000, "NG": 10000, "GC": 100, "RTY": 50,
                "MES": 5, "MNQ": 2, "MYM": 0.5, "MCL": 100, "MNG": 1000, "MGC": 10, "M2K": 5}
    assert {sym: i.point_value for sym, i in s.instruments.items()} == expected
    assert s.instrument("MES").tick == s.instrument("ES").tick  # prices from the base, not dollars

    (root / "qtsw.toml").write_text(
        "[instruments]\nES = {tick = 0.25, target = 10, point_value = 55}\n"
        'MES = {base = "ES"}\nZB = {tick = 0.03125, target = 1, point_value = 1000}\n'
        "ZN = {tick = 0.015625, target = 1}\n"
    )
    s = load_settings(root=root, env={})
    assert s.instrument("ES").point_value == 55
    assert s.instrument("MES").point_value == 5  # the built-in micro's, never its base's
    assert s.instrument("ZB").point_value == 1000
    assert s.instrument("ZN").point_value is None  # not said: results show points only


def test_a_change_of_point_value_does_not_change_the_analysis_hash(root: Path) -> None:
    before = load_settings(root=root, env={})
    (root / "qtsw.toml").write_text(
        "[instruments]\n"
        + "".join(
            f"{sym} = {{tick = {i.tick}, target = {i.target}, point_value = {i.point_value * 3}}}\n"
            if sym == i.base
            else f'{sym} = {{base = "{i.base}", point_value = {i.point_value * 7}}}\n'
            for sym, i in before.instruments.items()
        )
    )
    after = load_settings(root=root, env={})
    assert after.instrument("ES").point_value == 150 and after.instrument("MES").point_value == 35
    assert after.analysis_hash == before.analysis_hash
    assert after.analysis_dict() == before.analysis_dict()
    for sym in before.instruments:
        assert after.analysis_dict_for(sym) == before.analysis_dict_for(sym)
        assert after.analysis_hash_for(sym) == before.analysis_hash_for(sym)


def test_analysis_hash_changes_with_analysis_settings_only(root: Path) -> None:
    a = load_settings(root=root, env={})
    b = load_settings(root=root, env={"QTSW_ENGINE_WORKERS": "7"})
    c = load_settings(root=root, env={"QTSW_ANALYSIS_BREAK_EVEN_FRACTION": "0.5"})
    assert a.analysis_hash == b.analysis_hash
    assert a.analysis_hash != c.analysis_hash


@pytest.mark.parametrize(
    ("toml", "key", "allowed"),
    [
        ('[input]\nraw_policy = "shred"\n', "input.raw_policy", "archive, delete, keep"),
        ('[analysis]\nentry_cutoff = "25:00"\n', "analysis.entry_cutoff", "HH:MM"),
        ('[analysis]\ntrade_days = ["Mon", "Sat"]\n', "analysis.trade_days", "Mon to Fri"),
        ("[engine]\nworkers = -1\n", "engine.workers", "whole number"),
        ('[engine]\nwarm_start = "sometimes"\n', "engine.warm_start", "true or false"),
        ('[input]\ndefault_timezone = "Mars/Olympus"\n', "input.default_timezone", "IANA"),
        ("[instruments]\nES = {tick = 0, target = 10}\n", "instruments.ES.tick", "number"),
        ("[instruments]\nES = {tick = 0.25, target = 10, point_value = 0}\n", "instruments.ES.point_value",
         "a positive number"),
        ('[instruments]\nES = {tick = 0.25, target = 10, point_value = "fifty"}\n',
         "instruments.ES.point_value", "a positive number"),
        ('[instruments]\nES = {tick = 0.25, target = 10}\nMES = {base = "ES", point_value = -5}\n',
         "instruments.MES.point_value", "a positive number"),
        ('[sessions]\nS1 = {range_start = "08:00", slots = ["07:30"]}\n', "sessions.S1.slots", "later"),
        ("[nonsense]\nx = 1\n", "nonsense", "known setting"),
    ],
)
def test_invalid_value_names_key_value_and_rule(root: Path, toml: str, key: str, allowed: str) -> None:
    (root / "qtsw.toml").write_text(toml)
    with pytest.raises(SettingsError) as err:
        load_settings(root=root, env={})
    assert err.value.key == key
    assert allowed in str(err.value)
    assert key in str(err.value)


def test_warm_start_is_on_by_default_and_can_be_turned_off(root: Path) -> None:
    assert load_settings(root=root, env={}).warm_start is True
    assert load_settings(root=root, env={"QTSW_ENGINE_WARM_START": "false"}).warm_start is False
    (root / "qtsw.toml").write_text("[engine]\nwarm_start = false\n")
    assert load_settings(root=root, env={}).warm_start is False
    assert load_settings(root=root, env={"QTSW_ENGINE_WARM_START": "1"}).warm_start is True


def test_invalid_environment_value(root: Path) -> None:
    with pytest.raises(SettingsError, match="engine.workers = 'many'"):
        load_settings(root=root, env={"QTSW_ENGINE_WORKERS": "many"})


def test_bad_toml_is_reported(root: Path) -> None:
    (root / "qtsw.toml").write_text("[engine\nworkers=")
    with pytest.raises(SettingsError, match="valid TOML"):
        load_settings(root=root, env={})


def test_input_timezone_patterns(root: Path) -> None:
    (root / "qtsw.toml").write_text(
        '[input]\ntimezones = [{pattern = "GC*.csv", timezone = "America/Chicago"}]\n'
    )
    s = load_settings(root=root, env={})
    assert str(s.timezone_for("GC.csv")) == "America/Chicago"
    assert str(s.timezone_for("ES.csv")) == "UTC"


def test_settings_args_reproduce_the_settings_in_a_stage(root: Path) -> None:
    cfg = root / "other.toml"
    cfg.write_text("[engine]\nworkers = 2\n")
    s = load_settings(root=root, config=cfg, env={})
    assert settings_args(s) == ["--root", str(root), "--config", str(cfg)]
