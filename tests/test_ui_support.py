"""Shared helpers for the TUI tests (no tests here): seeded stores, waiting, screen text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.app import App
from textual.pilot import Pilot

from grokwatch.seeding import SeedInfo, seed_store

SIZES = [(80, 24), (200, 60)]
DEADLINE_S = 15.0


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user's config (and so user themes) at an empty temporary directory."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("TMUX", raising=False)
    return config / "grokwatch"


@pytest.fixture(scope="session")
def seeded_stores(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], SeedInfo]:
    """Seed each scenario once per session; tests that write copy nothing and seed their own."""
    cache: dict[str, SeedInfo] = {}

    def get(scenario: str) -> SeedInfo:
        if scenario not in cache:
            folder = tmp_path_factory.mktemp(scenario)
            cache[scenario] = seed_store(folder / f"{scenario}.db", scenario)
        return cache[scenario]

    return get


async def wait_until(
    pilot: Pilot, predicate: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S
) -> None:
    """Poll a condition while the app runs; fail with `what` after a deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def loaded(pilot: Pilot) -> None:
    """Wait until the app has drawn its first snapshot."""
    await wait_until(pilot, lambda: pilot.app.snapshots_seen >= 1, "the first snapshot")
    await pilot.pause()


def screen_text(app: App) -> str:
    """The current screen as plain text, one line per terminal row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def run_async(coroutine: object) -> None:
    """Run a pilot coroutine to completion (tests here do not need pytest-asyncio)."""
    asyncio.run(coroutine)  # type: ignore[arg-type]
