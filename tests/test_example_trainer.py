"""The example trainer in its short mode: Trainer-style checkpoints, probe and held-out files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grokwatch.example_trainer import HELDOUT_FILE, PROBE_FILE, main
from grokwatch.probe import load_probe

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "examples" / "modular_grokking" / "train.py"
CHECKPOINT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short run through the example script, as CI and `grokwatch demo` start it."""
    out_dir = tmp_path_factory.mktemp("example") / "run"
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), str(out_dir), "--short", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "step    15" in result.stdout
    return out_dir


def _steps(out_dir: Path) -> list[int]:
    return sorted(int(d.name.split("-")[1]) for d in out_dir.glob("checkpoint-*"))


@pytest.mark.slow
def test_short_mode_writes_trainer_style_checkpoints(short_run: Path) -> None:
    assert _steps(short_run) == [5, 10, 15]
    for step in (5, 10, 15):
        directory = short_run / f"checkpoint-{step}"
        names = {p.name for p in directory.iterdir()}
        assert names >= CHECKPOINT_FILES
        state_file = directory / "trainer_state.json"
        newest_other_ns = max(
            p.stat().st_mtime_ns for p in directory.iterdir() if p.name != "trainer_state.json"
        )
        assert state_file.stat().st_mtime_ns >= newest_other_ns
        state = json.loads(state_file.read_text())
        assert state["global_step"] == step
        assert state["best_metric"] is None
        history = state["log_history"]
        assert [entry["step"] for entry in history] == list(range(5, step + 1, 5))
        assert all(entry["loss"] > 0 for entry in history)


@pytest.mark.slow
def test_checkpoints_load_and_answer_the_probe(short_run: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    probe = load_probe(short_run / PROBE_FILE)
    assert probe.groups == ["add", "sub"]
    assert sum(s.group == "add" for s in probe.samples) == 64
    tokenizer = AutoTokenizer.from_pretrained(short_run / "checkpoint-15")
    for sample in probe.samples:
        assert sample.completion_only
        prompt_ids = tokenizer(sample.prompt)["input_ids"]
        full_ids = tokenizer(sample.text)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        assert len(full_ids) == len(prompt_ids) + 1  # the answer is one token
        assert tokenizer.unk_token_id not in full_ids

    model, info = AutoModelForCausalLM.from_pretrained(
        short_run / "checkpoint-15", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.model_type == "olmoe"
    assert model.config.num_hidden_layers >= 4
    assert model.config.num_experts_per_tok == 2
    batch = tokenizer([s.text for s in probe.samples[:8]], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_router_logits=True)
    assert torch.isfinite(out.logits).all()
    assert len(out.router_logits) == model.config.num_hidden_layers

    first = AutoModelForCausalLM.from_pretrained(short_run / "checkpoint-5")
    assert any(
        not torch.equal(a, b) for a, b in zip(first.parameters(), model.parameters(), strict=True)
    )


@pytest.mark.slow
def test_heldout_lines_parse(short_run: Path) -> None:
    lines = (short_run / HELDOUT_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["step"], r["group"]) for r in records] == [
        (step, group) for step in (5, 10, 15) for group in ("add", "sub")
    ]
    for r in records:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["train_accuracy"] <= 1.0
        assert r["n_heldout"] > 0


@pytest.mark.slow
def test_save_total_limit_rotates_old_checkpoints(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    argv = [str(out_dir), "--steps", "20", "--save-every", "5", "--threads", "1"]
    assert main([*argv, "--save-total-limit", "2", "--quiet"]) == 0
    assert _steps(out_dir) == [15, 20]
    assert len((out_dir / HELDOUT_FILE).read_text().splitlines()) == 4 * 2


def test_refuses_to_mix_runs_and_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    (out_dir / "checkpoint-5").mkdir(parents=True)
    assert main([str(out_dir), "--short"]) == 2
    err = capsys.readouterr().err
    assert str(out_dir) in err and "--overwrite" in err
    assert main([str(tmp_path / "other"), "--steps", "0"]) == 2


@pytest.mark.slow
def test_sigint_stops_the_trainer_cleanly(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), str(out_dir), "--steps", "100000", "--save-every", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (out_dir / "checkpoint-2" / "trainer_state.json").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "stopped" in err and "Traceback" not in err
