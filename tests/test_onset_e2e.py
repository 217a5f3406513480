"""End to end: a daemon on a tiny run raises an onset alert that arrives through --on-alert and
appears in `grokwatch export --table alerts`; a restart never sends it again."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grokwatch.tinymodels import build_tiny_model, save_tiny_checkpoint, tiny_olmoe_config

PROBE = {
    "arith": ["1 + 2 = 3", "4 + 4 = 8", "7 - 2 = 5", "9 - 3 = 6", "2 * 3 = 6", "8 / 2 = 4"],
    "words": ["the cat sat", "a dog ran far", "birds can fly", "fish swim", "sun is hot", "rain"],
}
# A short detector window so 14 checkpoints suffice; the defaults need ~20 (docs/detector.md).
CONFIG = """max_tokens = 32
device = "cpu"
threads = 1
[detector]
window = 6
ac_window = 0
ac_prior = 0.0
alpha = 0.01
"""


def _write_run(run: Path, n_checkpoints: int = 14) -> None:
    """Checkpoints whose routers sharpen step by step: pathways consolidate, loss stays flat."""
    model = build_tiny_model(tiny_olmoe_config(num_layers=4, hidden_size=32, num_experts=8), 3)
    gates = {n: p.detach().clone() for n, p in model.named_parameters() if "mlp.gate" in n}
    for k in range(n_checkpoints):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in gates:
                    param.copy_(gates[name] * (1.0 + 0.5 * k))
        save_tiny_checkpoint(run / f"step_{(k + 1) * 10}", model=model)
    with (run / "grokwatch-probe.jsonl").open("w") as f:
        for group, texts in PROBE.items():
            for text in texts:
                f.write(json.dumps({"text": text, "group": group}) + "\n")
    (run / "grokwatch.toml").write_text(CONFIG)


def _grokwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grokwatch", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.mark.slow
def test_onset_alert_reaches_the_hook_and_the_export_once(tmp_path, webhook):
    run, db, received = tmp_path / "run", tmp_path / "s.db", tmp_path / "alerts.txt"
    run.mkdir()
    _write_run(run)
    hook = (
        f'echo "$GROKWATCH_ALERT_KIND|$GROKWATCH_ALERT_GROUP|$GROKWATCH_ALERT_STEP" >> {received}'
    )
    port, posted = webhook
    env = {"GROKWATCH_NOTIFY_URLS": f"json://127.0.0.1:{port}/hook?token=s3cret-token"}

    first = _grokwatch(str(run), "--once", "--db", str(db), "--on-alert", hook, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = received.read_text().splitlines()
    onsets = [line for line in lines if line.startswith("onset|")]
    assert onsets, (lines, first.stdout)
    # The same alerts went to the webhook through apprise; the URL is in no output or store.
    assert len(posted) == len(lines)
    assert any("grokking onset" in json.dumps(p) for p in posted)
    assert "s3cret-token" not in first.stdout + first.stderr
    assert b"s3cret-token" not in db.read_bytes()

    exported = _grokwatch("export", "--db", str(db), "--table", "alerts")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(rows[0]) == ["id", "step", "kind", "group", "message", "evidence", "created_at"]
    onset_rows = [r for r in rows if r["kind"] == "onset"]
    assert len(onset_rows) == len(onsets)
    evidence = json.loads(onset_rows[0]["evidence"])
    assert evidence, "the onset alert carries its evidence"
    assert f"{onset_rows[0]['kind']}|{onset_rows[0]['group']}|{onset_rows[0]['step']}" in onsets

    # Metrics carry the state the alert announced.
    metrics = list(csv.DictReader(io.StringIO(_grokwatch("export", "--db", str(db)).stdout)))
    group, step = onset_rows[0]["group"], onset_rows[0]["step"]
    state = next(m["state"] for m in metrics if m["group"] == group and m["step"] == step)
    assert state == "grokking"

    # A restart recomputes nothing and never re-sends an alert.
    again = _grokwatch(str(run), "--once", "--db", str(db), "--on-alert", hook, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert received.read_text().splitlines() == lines
    assert len(posted) == len(lines)
    rows_after = list(
        csv.DictReader(
            io.StringIO(_grokwatch("export", "--db", str(db), "--table", "alerts").stdout)
        )
    )
    assert len(rows_after) == len(rows)
