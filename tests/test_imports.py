"""The engine and the headless path live apart from the console: checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


def fresh(code: str, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_all_of_pipeline_core_imports_without_textual_or_rich(tmp_path: Path) -> None:
    got = fresh(
        """
        import json, pkgutil, importlib, sys
        import pipeline_core
        names = [m.name for m in pkgutil.walk_packages(pipeline_core.__path__, "pipeline_core.")
                 if not m.name.endswith("__main__")]
        for name in names:
            importlib.import_module(name)
        print(json.dumps({"names": names, "textual": "textual" in sys.modules,
                          "rich": "rich" in sys.modules}))
        """,
        tmp_path,
    )
    assert {"pipeline_core.engine", "pipeline_core.proc", "pipeline_core.schedule",
            "pipeline_core.lock", "pipeline_core.history"} <= set(got["names"])
    assert got["textual"] is False
    assert got["rich"] is False


def test_headless_modules_import_without_textual(tmp_path: Path) -> None:
    got = fresh(
        """
        import json, sys
        import qtsw_tui.cli, qtsw_tui.headless, qtsw_tui.resultscmd
        print(json.dumps({"textual": sorted(m for m in sys.modules if m.split(".")[0] == "textual")}))
        """,
        tmp_path,
    )
    assert got["textual"] == []


def test_a_headless_run_never_imports_textual(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    got = fresh(
        f"""
        import contextlib, io, json, sys
        from qtsw_tui.cli import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["--root", {str(root)!r}, "--run-now", "--no-ui"])
        print(json.dumps({{"code": code, "textual": "textual" in sys.modules, "out": buf.getvalue()}}))
        """,
        tmp_path,
    )
    assert got["code"] == 0, got["out"]
    assert "pipeline" in got["out"] and "success" in got["out"]
    assert got["textual"] is False
