"""bench/validate_signal.py on a small fixture run: a real store, a written heldout.jsonl."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from grokwatch.packing import pack_samples
from grokwatch.store import Store

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "validate_signal.py"
STEPS = list(range(10, 130, 10))  # 12 checkpoints


@pytest.fixture(scope="module")
def validate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_signal", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_signal"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _accuracy(group: str, index: int) -> float:
    # "a" rises from checkpoint 4 on, "b" from checkpoint 7 on; both start at 0.05.
    start = 4 if group == "a" else 7
    return 0.05 if index < start else min(1.0, 0.05 + 0.15 * (index - start + 1))


def _payload(n: int) -> bytes:
    return pack_samples(
        list(range(n)),
        [0.1] * n,
        [0.5] * n,
        [0.2] * n,
        [[(0, 1), (1,)] for _ in range(n)],
        [-1] * n,
        np.full((n, 8), 0.125),
    )


def _fixture(tmp_path: Path) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with (run_dir / "heldout.jsonl").open("w") as f:
        for i, step in enumerate(STEPS):
            for group in ("a", "b"):
                record = {
                    "step": step,
                    "group": group,
                    "accuracy": _accuracy(group, i),
                    "train_accuracy": 1.0,
                    "loss": 1.0,
                    "train_loss": 3.0 * 0.5**i,
                    "n_heldout": 100 if group == "a" else 300,
                }
                f.write(json.dumps(record) + "\n")
    db = tmp_path / "s.db"
    store = Store(db)
    run = store.ensure_run(str(run_dir), "h", "file", '{"text": "x"}\n', 4, 0.7, 2048, 512)
    for step in STEPS:
        store.record_checkpoint(run, f"{run_dir}/checkpoint-{step}", step, f"f{step}", "pending")
    for i, step in enumerate(STEPS):
        row = store.claim_next(run)
        assert row is not None and row.step == step
        metrics = []
        for group in ("a", "b", "__all__"):
            acc = _accuracy(group, i) if group != "__all__" else 0.0
            metrics.append(
                {
                    "grp": group,
                    "n_samples": 2,
                    "n_flagged": 0,
                    "loss": 2.0 * 0.5**i,
                    # Group "a": distance is an exact decreasing linear map of accuracy.
                    "pathway_distance": 10.0 - 4.0 * acc if group == "a" else 8.0 + (i % 3),
                    "consistency": 0.3 + 0.5 * acc,
                    "complexity": 0.7 - 0.5 * acc,
                    "raw_cosine": 0.1 + 0.01 * i,
                    "trainer_loss": 3.0 * 0.5**i if group == "__all__" else None,
                    "layer_distances": "[1.0, 2.0]",
                    "tau": 0.7,
                    "definition": "d",
                }
            )
        alerts = []
        if step == 90:
            alerts.append(
                {
                    "kind": "onset",
                    "group": "a",
                    "step": step,
                    "message": "onset",
                    "dedupe_key": f"onset:a:{step}",
                    "evidence": {"plateau_step": 60, "fired": ["pathway_distance"]},
                }
            )
        store.write_result(row.id, metrics, _payload(4), 4, {"total_s": 0.1}, alerts)
    store.close()
    return run_dir, db


def test_prints_table_with_correlations_and_onset_lag(tmp_path, capsys, validate):
    run_dir, db = _fixture(tmp_path)
    assert validate.main([str(run_dir), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "r" in out and "rho" in out and " n " in out
    assert "-0.93..-0.98" in out and "+0.92..+0.99" in out
    rows = [line.split() for line in out.splitlines()]
    by_key = {(r[0], r[1], r[3]): r for r in rows if len(r) >= 9 and r[1] in validate.WINDOWS}
    whole_a = by_key[("a", "whole", "distance")]
    assert whole_a[4] == "12"  # n
    assert whole_a[5] == "-1.000" and whole_a[7] == "-1.000"  # Pearson, Spearman
    assert by_key[("a", "whole", "consistency")][5] == "+1.000"
    assert set(by_key) >= {
        (g, w, "train_loss") for g in ("a", "b", "__all__") for w in validate.WINDOWS
    }
    # Rise of "a": first checkpoint whose accuracy stays >= 0.05 + 0.1 is index 4 (step 50).
    onset = next(r for r in rows if r[:1] == ["a"] and len(r) == 8)
    assert onset[2:5] == ["50", "90", "+40"]
    assert onset[5:7] == ["60", "pathway_distance"]
    assert next(r for r in rows if r[:1] == ["b"] and len(r) == 8)[3] == "none"


def test_rise_flat_and_global_definitions(validate):
    steps = np.array([10, 20, 30, 40, 50])
    assert validate.rise_step(steps, np.array([0.1, 0.25, 0.15, 0.3, 0.4])) == 40
    assert validate.rise_step(steps, np.array([0.1, 0.1, 0.1, 0.1, 0.1])) is None
    assert validate.flat_step(steps, np.array([1.0, 0.5, 0.2, 0.08, 0.01])) == 40
    # A one-checkpoint spike (slingshot) does not reset the flat stretch; two in a row do.
    assert validate.flat_step(steps, np.array([1.0, 0.05, 0.9, 0.08, 0.01])) == 20
    assert validate.flat_step(steps, np.array([1.0, 0.05, 0.9, 0.9, 0.01])) == 50
    heldout = {
        "a": {10: validate.HeldoutPoint(1.0, 0.0, 100)},
        "b": {10: validate.HeldoutPoint(0.0, 0.0, 300)},
    }
    assert validate.global_heldout(heldout)[10].accuracy == pytest.approx(0.25)
    constant = validate.correlate(np.ones(5), np.arange(5.0))
    assert constant.n == 5 and np.isnan(constant.pearson)


def test_missing_heldout_is_a_one_line_usage_error(tmp_path, capsys, validate):
    assert validate.main([str(tmp_path), "--db", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert "heldout.jsonl" in err and "\n" not in err


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, capsys, monkeypatch, validate):
    run_dir, db = _fixture(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    out_png = tmp_path / "v.png"
    assert validate.main([str(run_dir), "--db", str(db), "--plot", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "rho" in out and "plot skipped: matplotlib is not installed" in out
    assert not out_png.exists()


def test_plot_writes_a_png(tmp_path, capsys, validate):
    pytest.importorskip("matplotlib")
    run_dir, db = _fixture(tmp_path)
    out_png = tmp_path / "v.png"
    assert validate.main([str(run_dir), "--db", str(db), "--plot", str(out_png)]) == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {out_png}" in capsys.readouterr().out
