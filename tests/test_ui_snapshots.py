"""Snapshot tests of the first screen at 80x24 (pytest-textual-snapshot, frozen clock).

Regenerate after an intended change with `pytest tests/test_ui_snapshots.py --snapshot-update`
and look at the pictures in the report before committing them.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.test_ui_support)

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot

from grokwatch.seeding import SeedInfo
from grokwatch.ui.app import create_app
from tests.test_ui_support import isolated_config, loaded, seeded_stores  # noqa: F401

Seeds = Callable[[str], SeedInfo]
SIZE = (80, 24)


def _compare(
    snap_compare: Callable[..., bool], info: SeedInfo, press: tuple[str, ...] = ()
) -> bool:
    app = create_app(info.path, clock=info.clock(), poll_s=0.05)

    async def ready(pilot: Pilot) -> None:
        await loaded(pilot)

    return snap_compare(app, press=press, terminal_size=SIZE, run_before=ready)


def test_snapshot_empty_store(snap_compare: Callable[..., bool], seeded_stores: Seeds) -> None:
    """A store with no run yet: the header says so, panels say nothing was evaluated, and the
    key hints are still there; nothing crashes on a store without rows."""
    assert _compare(snap_compare, seeded_stores("empty"))


def test_snapshot_normal_run(snap_compare: Callable[..., bool], seeded_stores: Seeds) -> None:
    """A healthy run at 80x24: header (run, daemon alive, device, queue, age, done count),
    three global sparklines each with latest value, change, step range and the good direction,
    the latest step, "newest alert none", and key hints, all without overlap or cut words."""
    assert _compare(snap_compare, seeded_stores("normal"))


def test_snapshot_alerting_run(snap_compare: Callable[..., bool], seeded_stores: Seeds) -> None:
    """A run with alerts: the newest alert (a reversal, drawn in the error colour) sits under
    the sparklines and the Alerts tab counts three."""
    assert _compare(snap_compare, seeded_stores("alerting"))


def test_snapshot_failed_checkpoint(
    snap_compare: Callable[..., bool], seeded_stores: Seeds
) -> None:
    """A failed checkpoint on the Checkpoints tab: newest first, status `failed` in the error
    colour, and the full one-line reason under the table for the highlighted row."""
    assert _compare(snap_compare, seeded_stores("failed"), press=("3", "j"))
