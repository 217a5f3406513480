"""`grokwatch status` and `grokwatch export` through click's CliRunner, on real stores.

The main store is written by two real `--once` runs (the second with another tau, so the
store holds two runs); the NaN store is written through the Store API so that it certainly
holds NaN values. Column names are spelled out here, copied from design.md, on purpose:
renaming one in export.py must fail this test.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from grokwatch.cli import main
from grokwatch.packing import pack_samples
from grokwatch.store import Store
from tests.helpers import (
    build_templates,
    run_once,
    save_tokenizer,
    write_checkpoint,
    write_probe,
)

# design.md, "Exported columns": a contract users script against.
CONTRACT = {
    "metrics": "step, group, n_samples, n_flagged, n_memorized, loss, trainer_loss,"
    " pathway_distance, pathway_distance_expert, pathway_distance_norm, layer_distances,"
    " consistency, complexity, raw_cosine, state, tau, definition",
    "samples": "step, sample, group, loss, pathway, consistency, raw_cosine, memorized_since",
    "checkpoints": "step, path, status, reason, seen_at, done_at, load_s, forward_s, distance_s,"
    " total_s, peak_mem_bytes",
    "alerts": "id, step, kind, group, message, evidence, created_at",
}
COLUMNS = {table: text.split(", ") for table, text in CONTRACT.items()}
ALERT_KINDS = {"memorized", "onset", "reversal", "overdue", "checkpoint_failed", "worker_down"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with two runs (tau 0.7 then 0.5) over two good checkpoints and a garbage one."""
    tmp = tmp_path_factory.mktemp("cli")
    templates = build_templates(tmp / "templates", seeds=(0, 1))
    run = tmp / "run"
    run.mkdir()
    save_tokenizer(run)
    write_checkpoint(templates[0], run / "step_100", pause_s=0.0)
    write_checkpoint(templates[1], run / "step_200", pause_s=0.0)
    write_checkpoint(templates[0], run / "step_300", pause_s=0.0, corrupt="garbage")
    probe = write_probe(tmp / "probe.jsonl")
    db = tmp / "s.db"
    for tau in ("0.7", "0.5"):
        done = run_once(run, db, probe, "--tau", tau, tmp=tmp)
        assert done.returncode == 0, done.stderr
    return db


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose one checkpoint holds NaN in metrics, layer distances and samples."""
    db = tmp_path_factory.mktemp("nan") / "s.db"
    store = Store(db)
    run = store.ensure_run("/r", "h", "test", '{"text": "a b"}\n{"text": "c d"}\n', 2, 0.7, 32, 512)
    store.record_checkpoint(run, "/r/step_5", 5, "f", "pending")
    row = store.claim_next(run)
    assert row is not None
    metric = {
        "grp": "__all__",
        "n_samples": 2,
        "n_flagged": 1,
        "loss": float("nan"),
        "consistency": float("nan"),
        "layer_distances": "[1.5, NaN]",
        "tau": 0.7,
        "definition": "test",
    }
    payload = pack_samples(
        [0, 1],
        [float("nan"), 2.0],
        [float("nan"), 0.5],
        [0.1, float("nan")],
        [[(1, 2), (3,)], [(0,), (2, 3)]],
        [-1, 5],
        np.full((2, 4), 0.25),
    )
    store.write_result(row.id, [metric], payload, 2, {"load_s": float("nan"), "total_s": 1.0})
    store.close()
    return db


def invoke(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def export(db: Path, table: str, fmt: str, *extra: str) -> str:
    """Export one table; fail on a non-zero exit."""
    code, out, err = invoke("export", "--db", str(db), "--table", table, "--format", fmt, *extra)
    assert code == 0, err
    return out


# status --------------------------------------------------------------------------------------


def test_status_text(store: Path) -> None:
    code, out, err = invoke("status", "--db", str(store))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"store   {store}"
    assert lines[1].startswith("daemon  stopped: pid ")
    assert lines[2].startswith("run     #2 ") and "tau 0.5" in lines[2]
    assert lines[3] == "queue   done 2, failed 1"
    assert lines[4].startswith("last    step 200 done ")
    table = [line.split() for line in lines[6:9]]
    assert [row[0] for row in table] == ["alpha", "beta", "__all__"]
    assert [row[1] for row in table] == ["4", "4", "8"]
    assert "alerts" in lines
    assert any("checkpoint_failed" in line and "step 300" in line for line in lines)


def test_status_json_and_run_selection(store: Path) -> None:
    code, out, _ = invoke("status", "--db", str(store), "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"store", "daemon", "run", "queue", "last_checkpoint", "groups", "alerts"}
    assert data["daemon"]["alive"] is False and data["daemon"]["stopped_at"] is not None
    assert (data["run"]["id"], data["run"]["tau"]) == (2, 0.5)
    assert data["queue"] == {"done": 2, "failed": 1}
    assert data["last_checkpoint"]["step"] == 200
    assert [g["group"] for g in data["groups"]] == ["alpha", "beta", "__all__"]
    assert {a["kind"] for a in data["alerts"]} <= ALERT_KINDS
    code, out, _ = invoke("status", "--db", str(store), "--json", "--run", "1")
    assert code == 0
    assert json.loads(out)["run"]["tau"] == 0.7
    # An unknown run is an error, as in export, not an empty "run none yet".
    code, out, err = invoke("status", "--db", str(store), "--run", "99")
    assert (code, out) == (2, "")
    assert err.strip() == f"grokwatch: error: {store}: no run 99; runs in this store: 1, 2"


# export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(CONTRACT))
def test_export_csv_and_jsonl_have_exactly_the_contract_columns(store: Path, table: str) -> None:
    rows_csv = list(csv.reader(io.StringIO(export(store, table, "csv"))))
    assert rows_csv[0] == COLUMNS[table]
    lines = export(store, table, "jsonl").splitlines()
    records = [json.loads(line) for line in lines]
    assert all(list(r) == COLUMNS[table] for r in records)
    assert len(records) == len(rows_csv) - 1 > 0
    # The same values in both formats (CSV is text; lists and dicts are JSON text there).
    for record, row in zip(records, rows_csv[1:], strict=True):
        for value, text in zip(record.values(), row, strict=True):
            if value is None:
                assert text == ""
            elif isinstance(value, (list, dict)):
                assert json.loads(text) == value
            else:
                assert text == str(value)


def test_export_table_contents(store: Path) -> None:
    metrics = [json.loads(x) for x in export(store, "metrics", "jsonl").splitlines()]
    assert [(m["step"], m["group"]) for m in metrics] == [
        (s, g) for s in (100, 200) for g in ("__all__", "alpha", "beta")
    ]
    assert {m["tau"] for m in metrics} == {0.5}
    assert all(
        isinstance(m["layer_distances"], list) and len(m["layer_distances"]) == 2 for m in metrics
    )
    assert [m["n_samples"] for m in metrics if m["group"] == "__all__"] == [8, 8]
    samples = [json.loads(x) for x in export(store, "samples", "jsonl").splitlines()]
    assert len(samples) == 2 * 8
    assert {s["group"] for s in samples} == {"alpha", "beta"}
    assert all(len(s["pathway"].split("-")) == 2 for s in samples)  # two MoE layers
    ckpts = [json.loads(x) for x in export(store, "checkpoints", "jsonl").splitlines()]
    assert [(c["step"], c["status"]) for c in ckpts] == [
        (100, "done"),
        (200, "done"),
        (300, "failed"),
    ]
    assert ckpts[2]["reason"].startswith("corrupt: ")
    alerts = [json.loads(x) for x in export(store, "alerts", "jsonl").splitlines()]
    failed = [a for a in alerts if a["kind"] == "checkpoint_failed"]
    assert [(a["step"], a["group"]) for a in failed] == [(300, "")]
    assert failed[0]["evidence"]["path"].endswith("step_300")


def test_export_run_selection_and_output_file(store: Path, tmp_path: Path) -> None:
    taus = {
        json.loads(x)["tau"] for x in export(store, "metrics", "jsonl", "--run", "1").splitlines()
    }
    assert taus == {0.7}
    target = tmp_path / "out.csv"
    code, out, _ = invoke("export", "--db", str(store), "--table", "checkpoints", "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text() == export(store, "checkpoints", "csv")
    code, _, err = invoke("export", "--db", str(store), "--run", "99")
    assert code == 2
    assert err.strip() == f"grokwatch: error: {store}: no run 99; runs in this store: 1, 2"


def test_export_defaults_are_metrics_csv_latest_run(store: Path) -> None:
    code, out, _ = invoke("export", "--db", str(store))
    assert code == 0
    assert out == export(store, "metrics", "csv", "--run", "2")


def test_nan_is_empty_in_csv_and_null_in_jsonl(nan_store: Path) -> None:
    metric = json.loads(export(nan_store, "metrics", "jsonl"))
    assert metric["loss"] is None and metric["consistency"] is None
    assert metric["layer_distances"] == [1.5, None]
    row = next(csv.DictReader(io.StringIO(export(nan_store, "metrics", "csv"))))
    assert row["loss"] == "" and row["consistency"] == ""
    assert json.loads(row["layer_distances"]) == [1.5, None]
    samples = [json.loads(x) for x in export(nan_store, "samples", "jsonl").splitlines()]
    assert [(s["loss"], s["consistency"], s["raw_cosine"]) for s in samples] == [
        (None, None, pytest.approx(0.1)),
        (2.0, 0.5, None),
    ]
    assert [s["memorized_since"] for s in samples] == [None, 5]
    text = export(nan_store, "samples", "csv")
    assert "nan" not in text.lower()
    first = next(csv.DictReader(io.StringIO(text)))
    assert (first["loss"], first["consistency"], first["memorized_since"]) == ("", "", "")
    ckpt = json.loads(export(nan_store, "checkpoints", "jsonl"))
    assert ckpt["load_s"] is None and ckpt["total_s"] == 1.0


# Errors and help -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "export", "ui"])
def test_missing_store_exits_2_with_one_line(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    missing = tmp_path / "none.db"
    code, out, err = invoke(command, "--db", str(missing))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"grokwatch: error: {missing}: no grokwatch")
    # A run directory resolves to its default store the same way.
    run = tmp_path / "run"
    run.mkdir()
    code, _, err = invoke(command, str(run))
    assert code == 2
    assert str(tmp_path / "state" / "grokwatch") in err and len(err.strip().splitlines()) == 1


def test_bad_option_values_exit_2(store: Path) -> None:
    assert invoke("export", "--db", str(store), "--table", "nope")[0] == 2
    assert invoke("export", "--db", str(store), "--format", "xml")[0] == 2
    assert invoke("status", "--db", str(store), "--run", "x")[0] == 2


@pytest.mark.parametrize(
    "command",
    [[], ["watch"], ["ui"], ["status"], ["export"], ["demo"], ["probe"], ["probe", "make"]],
)
def test_help_for_every_subcommand(command: list[str]) -> None:
    code, out, _ = invoke(*command, "--help")
    assert code == 0
    assert out.startswith("Usage: ")
    assert "--help" in out


def test_watch_help_lists_every_contract_option() -> None:
    _, out, _ = invoke("watch", "--help")
    for option in (
        "--probe",
        "--db",
        "--device",
        "--headless",
        "--once",
        "--poll",
        "--ready-marker",
        "--tau",
        "--max-tokens",
        "--pair-bound",
        "--batch-size",
        "--threads",
        "--on-alert",
        "--trust-remote-code",
        "--config",
        "--debug",
    ):
        assert option in out, option


def test_status_and_export_on_a_file_that_is_not_a_store_exit_2(tmp_path):
    from click.testing import CliRunner

    from grokwatch.cli import main

    bogus = tmp_path / "notes.db"
    bogus.write_text("these are my notes, not SQLite\n")
    for args in (["status", str(bogus)], ["export", str(bogus)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "not a grokwatch store" in result.output
        assert "Traceback" not in result.output
