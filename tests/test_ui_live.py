"""Live behaviour: a writer thread commits through the real Store while the app runs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

from grokwatch.seeding import add_pending, complete_running, finish_next, seed_store
from grokwatch.store import Store
from grokwatch.ui.app import GrokwatchApp, create_app
from grokwatch.ui.tables import CheckpointTable
from grokwatch.ui.widgets import StatusLines
from tests.test_ui_support import (  # noqa: F401  (fixture)
    isolated_config,
    loaded,
    run_async,
    screen_text,
    wait_until,
)


class Writer:
    """A thread that owns a Store and runs the writes the test hands it, in order."""

    def __init__(self, path: Path) -> None:
        self.jobs: queue.Queue[Callable[[Store], object] | None] = queue.Queue()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self.thread.start()

    def _run(self, path: Path) -> None:
        store = Store(path)
        try:
            while (job := self.jobs.get()) is not None:
                try:
                    job(store)
                except BaseException as exc:  # surfaced by the test, not swallowed
                    self.errors.append(exc)
        finally:
            store.close()

    def do(self, job: Callable[[Store], object]) -> None:
        """Queue one write."""
        self.jobs.put(job)

    def stop(self) -> None:
        """Finish queued writes and close the store."""
        self.jobs.put(None)
        self.thread.join(timeout=30)


def _status(app: GrokwatchApp, step: int) -> str | None:
    table = app.query_one(CheckpointTable)
    return next((v.status for v in table.views.values() if v.step == step), None)


def test_committed_checkpoint_and_status_changes_show_up_live(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "live.db", "normal")
    assert info.run_id is not None
    run_id, groups = info.run_id, info.groups
    onset = {
        "kind": "onset",
        "step": 12500,
        "group": "math",
        "message": "math: grokking onset, loss flat while distance keeps falling",
        "dedupe_key": "onset:math:12500",
    }
    writer = Writer(info.path)

    async def scenario() -> None:
        app = create_app(info.path, clock=info.clock(), poll_s=0.05)
        assert isinstance(app, GrokwatchApp)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await loaded(pilot)
            await pilot.press("3")
            assert _status(app, 12500) == "pending"

            writer.do(lambda s: s.claim_next(run_id))  # pending -> running
            await wait_until(pilot, lambda: _status(app, 12500) == "running", "running")

            writer.do(lambda s: complete_running(s, run_id, groups, alerts=[onset]))
            await wait_until(pilot, lambda: _status(app, 12500) == "done", "running -> done")
            row = next(v for v in app.query_one(CheckpointTable).views.values() if v.step == 12500)
            assert row.loss is not None and row.pathway_distance is not None
            await wait_until(pilot, lambda: any("onset" in t for t in app.toast_log), "a toast")
            await wait_until(pilot, lambda: bool(app.screen.query("Toast")), "the toast shown")
            assert app.snapshot is not None and app.snapshot.alerts[0].kind == "onset"
            await pilot.press("1")
            await wait_until(
                pilot, lambda: "latest step  12500" in screen_text(app), "the new latest step"
            )
            # The toast may cover the line on screen; read the widget itself.
            status = str(app.query_one(StatusLines).content)
            assert "newest alert  onset @12500 math: grokking onset" in status

            writer.do(lambda s: add_pending(s, run_id, 13000))
            await wait_until(pilot, lambda: _status(app, 13000) == "pending", "a new pending row")
            writer.do(lambda s: finish_next(s, run_id, groups))
            await wait_until(pilot, lambda: _status(app, 13000) == "done", "pending -> done")
            assert app.snapshot is not None and app.snapshot.overall.steps[-1] == 13000
            assert "26 done" in screen_text(app).splitlines()[0]
            assert len(app.toast_log) == 1  # one alert, one toast

    try:
        run_async(scenario())
    finally:
        writer.stop()
    assert writer.errors == []
