"""A headless engine whose runs write many events: ``python tests/flood_engine.py ROOT EVENTS GATE``.

The real :class:`Engine` and :class:`ControlServer` in a process of their own, holding the data
root's lock, as ``qtsw --no-ui`` runs them; only the stage is a stand-in: its translator reports
EVENTS metric messages, and halfway waits until the file GATE exists, so a test can attach a
client mid-run at a moment it chooses. SIGTERM stops the engine.
"""

from __future__ import annotations

import signal
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

STAGE = r'''
import json, os, sys, time
n, gate = int(sys.argv[1]), sys.argv[2]
marker = "\x02qtsw:"
for i in range(n):
    if i == n // 2:
        sys.stdout.flush()
        while not os.path.exists(gate):  # the test opens the gate once its client is attached
            time.sleep(0.02)
    sys.stdout.write(marker + json.dumps({"type": "metric", "msg": f"metric {i}", "data": {"i": i}}) + "\n")
sys.stdout.write(marker + json.dumps({"type": "result", "status": "success", "msg": "done", "counts": {"n": n}}) + "\n")
'''


def main(root: str, events: int, gate: str) -> None:
    import anyio

    from pipeline_core import clock
    from pipeline_core.control import ControlServer
    from pipeline_core.engine import Engine
    from pipeline_core.lock import EngineLock
    from pipeline_core.settings import load_settings

    settings = load_settings(root=Path(root), env={})
    script = Path(root).parent / "flood_stage.py"
    script.write_text(STAGE)
    with EngineLock.for_settings(settings):
        engine = Engine(settings, stage_command=lambda stage, inst: [sys.executable, str(script), str(events), gate])
        server = ControlServer(engine, settings)
        server.open()

        async def serve() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                with anyio.open_signal_receiver(signal.SIGTERM) as sigs:
                    # the schedule runs, its first mark an hour away: only the test's runs happen
                    later = clock.now() + timedelta(hours=1)
                    tg.start_soon(partial(engine.serve, not_before=later))
                    async for _ in sigs:
                        engine.stop()
                        break
                tg.cancel_scope.cancel()

        anyio.run(serve)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
