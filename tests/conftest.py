"""Shared fixtures: a temporary data root with its settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline_core.settings import Settings, load_settings


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty data root (its folders created as on first start)."""
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def settings(root: Path) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    s = load_settings(root=root, env=env)
    s.ensure_dirs()
    return s
