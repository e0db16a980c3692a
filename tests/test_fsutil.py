"""Atomic writes: the destination is old or new, never partial; no temp file is left behind."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_core.fsutil import (
    append_jsonl,
    atomic_path,
    read_json,
    read_jsonl,
    remove_stale_temp_files,
    write_json_atomic,
    write_parquet_atomic,
)


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "a.json"
    write_json_atomic(dest, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("crash")
    assert read_json(dest) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_parquet_write_replaces_whole(tmp_path: Path) -> None:
    dest = tmp_path / "x" / "t.parquet"
    write_parquet_atomic(dest, pa.table({"a": [1, 2]}))
    write_parquet_atomic(dest, pa.table({"a": [3]}))
    assert pq.read_table(dest).column("a").to_pylist() == [3]


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".t.parquet.abc.tmp").write_bytes(b"x")
    (tmp_path / "t.parquet").write_bytes(b"y")
    assert remove_stale_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_append_jsonl_starts_fresh_after_a_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    append_jsonl(path, {"a": 1})
    with open(path, "ab") as fh:
        fh.write(b'{"half": ')  # an append cut by a crash
    append_jsonl(path, {"b": 2})
    assert path.read_text().splitlines() == ['{"a":1}', '{"half": ', '{"b":2}']


def test_read_jsonl_skips_a_partial_line_and_non_objects(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, {"a": 1})
    with open(path, "a") as fh:
        fh.write("[1, 2]\n{\"cut\": ")
    assert read_jsonl(path) == [{"a": 1}]
