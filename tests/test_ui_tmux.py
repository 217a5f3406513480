"""A real terminal: `python -m grokwatch.ui.app STORE` inside tmux at 80x24, `?` then `q`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import grokwatch
from grokwatch.seeding import seed_store

TMUX = shutil.which("tmux")
REPO = Path(grokwatch.__file__).resolve().parent.parent
DEADLINE_S = 30.0

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


def _wait(condition: Callable[[], bool], what: str, screen: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; screen:\n{screen()}")
        time.sleep(0.1)


def test_ui_in_tmux_shows_first_screen_help_and_quits_with_0(tmp_path: Path) -> None:
    assert TMUX is not None
    info = seed_store(tmp_path / "run.db", "alerting")
    status = tmp_path / "status"
    socket = f"grokwatch-test-{os.getpid()}"
    tmux = [TMUX, "-L", socket, "-f", os.devnull]
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "TERM": "xterm-256color"}
    env.pop("TMUX", None)
    command = (
        f"{shlex.quote(sys.executable)} -m grokwatch.ui.app {shlex.quote(str(info.path))};"
        f" echo $? > {shlex.quote(str(status))}"
    )

    def screen() -> str:
        result = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "gw"], capture_output=True, text=True
        )
        return result.stdout

    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "80", "-y", "24", "-s", "gw", "-c", str(REPO), command],
        check=True,
        env=env,
    )
    try:
        _wait(
            lambda: "loss ↓ good" in screen() and "? help" in screen(), "the first screen", screen
        )
        _wait(lambda: "olmoe-tiny" in screen(), "the header", screen)
        lines = screen().splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        text = "\n".join(lines)
        for label in ("pathway distance ↓ good", "complexity ↓ good", "latest step  12000"):
            assert label in text
        assert "newest alert  reversal" in text
        subprocess.run([*tmux, "send-keys", "-t", "gw", "-l", "?"], check=True)
        _wait(lambda: "grokwatch keys" in screen(), "the help screen", screen)
        assert "command palette" in screen()
        subprocess.run([*tmux, "send-keys", "-t", "gw", "-l", "q"], check=True)
        _wait(status.exists, "the app to exit", screen)
        _wait(lambda: status.read_text().strip() != "", "the exit status", screen)
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
