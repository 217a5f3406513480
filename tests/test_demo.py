"""`grokwatch demo --short --headless`: trains the example, watches it, exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grokwatch.reader import Reader


def _demo(directory) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grokwatch", "demo", str(directory), "--short", "--headless"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_short_demo_headless_trains_watches_and_exits_0(tmp_path):
    result = _demo(tmp_path / "demo")
    assert result.returncode == 0, result.stderr[-3000:]
    step_lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(step_lines) >= 3, result.stdout
    reader = Reader(tmp_path / "demo" / "grokwatch.db")
    run_id = reader.latest_run_id()
    statuses = [c["status"] for c in reader.checkpoints(run_id)]
    assert statuses and set(statuses) == {"done"}
    assert reader.groups(run_id) == ["add", "sub", "__all__"]
    # The trainer's own loss, a free signal, rides along with the probe metrics.
    assert any(m["trainer_loss"] is not None for m in reader.metrics(run_id, group="__all__"))
    reader.close()

    # Running it again replaces the earlier demo instead of mixing two runs.
    again = _demo(tmp_path / "demo")
    assert again.returncode == 0, again.stderr[-3000:]
    reader = Reader(tmp_path / "demo" / "grokwatch.db")
    assert len(reader.runs()) == 1
    assert len(reader.checkpoints(reader.latest_run_id())) == len(statuses)


def test_demo_refuses_a_directory_that_is_not_a_demo(tmp_path):
    run = tmp_path / "demo" / "run"
    run.mkdir(parents=True)
    (run / "precious.txt").write_text("keep me")
    result = _demo(tmp_path / "demo")
    assert result.returncode == 1
    assert "not a grokwatch demo run" in result.stderr
    assert (run / "precious.txt").read_text() == "keep me"
