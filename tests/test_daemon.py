"""The daemon as a real subprocess on a live run directory: exactly once, in order, bad shards fail.

Each test starts `python -m grokwatch RUN --headless` (or `--once`) on a temp run directory that
a writer fills file by file, and checks the store the daemon leaves behind. Synchronisation is
by polling the store with deadlines (tests/helpers.py); kills and restarts are in
test_daemon_faults.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grokwatch.export import COLUMNS
from grokwatch.store import Store
from tests.helpers import (
    REPO_ROOT,
    alerts,
    all_final,
    checkpoints,
    daemon_args,
    daemon_env,
    query,
    rotate,
    run_once,
    start_daemon,
    statuses,
    wait_for,
    write_checkpoint,
    write_probe,
)

GROUP_ROWS = {"alpha", "beta", "__all__"}


def _export(db: Path, table: str, *extra: str) -> list[dict]:
    """`grokwatch export --format jsonl` of one table, parsed."""
    args = ["export", "--db", str(db), "--table", table, "--format", "jsonl", *extra]
    out = subprocess.run(
        [sys.executable, "-m", "grokwatch", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def _metric_groups(db: Path, run_id: int | None = None) -> dict[int, list[str]]:
    """Step -> group names of its metrics rows, from the export."""
    rows = _export(db, "metrics", *(["--run", str(run_id)] if run_id else []))
    out: dict[int, list[str]] = {}
    for r in rows:
        out.setdefault(r["step"], []).append(r["group"])
    return out


# Store unit test ----------------------------------------------------------------------------


def test_seen_then_pending_with_another_fingerprint_is_one_row(tmp_path: Path) -> None:
    # The watcher refreshes a seen entry while its files change; the fingerprint it hands over
    # with `pending` differs from the first `seen`. That is one checkpoint, not a rewrite.
    store = Store(tmp_path / "s.db")
    run = store.ensure_run("/r", "h", "bundled", '{"text": "x"}\n', 1, 0.7, 2048, 512)
    path = "/r/checkpoint-10"
    first = store.record_checkpoint(run, path, 10, "F1", "seen", "incomplete: config.json missing")
    assert (
        store.record_checkpoint(run, path, 10, "F2", "seen", "incomplete: still writing") == first
    )
    store.close()
    store = Store(tmp_path / "s.db")  # a daemon restart in between changes nothing
    assert store.record_checkpoint(run, path, 10, "F3", "pending", "complete") == first
    rows = store.checkpoint_by_path(run, path)
    assert [(r.status, r.fingerprint) for r in rows] == [("pending", "F3")]
    assert store.queue_counts(run) == {"pending": 1}


# Live watching --------------------------------------------------------------------------------


def test_live_writer_every_checkpoint_once_in_step_order_bad_shards_fail(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    db = tmp_path / "s.db"
    daemon = start_daemon(run_dir, db, probe, tmp=tmp_path)
    # (directory name, template, corruption); the Trainer-style one brings trainer_state.json.
    plan = [
        ("step_100", 0, None),
        ("step_200", 1, "truncated"),
        ("step_300", 2, "garbage"),
        ("step_400", 0, "wrong_tensors"),
        ("step_500", 1, None),
        ("checkpoint-600", 2, None),
    ]
    finished_at: dict[int, float] = {}

    def writer() -> None:
        for name, template, corrupt in plan:
            step = int(name.split("_")[-1].split("-")[-1])
            trainer_step = step if name.startswith("checkpoint-") else None
            finished_at[step] = write_checkpoint(
                templates[template], run_dir / name, corrupt=corrupt, trainer_step=trainer_step
            )

    try:
        daemon.wait_ready()
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
        steps = [100, 200, 300, 400, 500, 600]
        wait_for(lambda: all_final(db, steps), what="every checkpoint final")
        status_text = subprocess.run(
            [sys.executable, "-m", "grokwatch", "status", "--db", str(db)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "daemon  alive" in status_text
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.output()

    rows = {r["step"]: r for r in checkpoints(db)}
    assert statuses(db) == {
        100: ["done"],
        200: ["failed"],
        300: ["failed"],
        400: ["failed"],
        500: ["done"],
        600: ["done"],
    }
    # Never looked at before the writer finished the checkpoint's last file.
    for step in (100, 500, 600):
        assert rows[step]["pending_at"] >= finished_at[step]
        assert rows[step]["attempts"] == 1
    # Evaluated in step order.
    done = sorted((r for r in rows.values() if r["status"] == "done"), key=lambda r: r["step"])
    assert [r["started_at"] for r in done] == sorted(r["started_at"] for r in done)
    # Failures: a one-line reason each, never a result, one checkpoint_failed alert each.
    assert rows[200]["reason"].startswith("incomplete: model.safetensors is")
    assert rows[300]["reason"].startswith("corrupt: model.safetensors header does not parse")
    assert rows[400]["reason"].endswith("the checkpoint is incomplete or for another model")
    for step in (200, 300, 400):
        assert "\n" not in rows[step]["reason"]
    failed_alerts = alerts(db, "checkpoint_failed")
    assert sorted(a["step"] for a in failed_alerts) == [200, 300, 400]
    assert all(rows[a["step"]]["reason"] in a["message"] for a in failed_alerts)
    # Metrics: one row per (step, group) of done checkpoints only, `__all__` included.
    groups = _metric_groups(db)
    assert set(groups) == {100, 500, 600}
    assert all(sorted(g) == sorted(GROUP_ROWS) for g in groups.values())
    totals = [r for r in _export(db, "metrics") if r["group"] == "__all__"]
    assert [r["n_samples"] for r in totals] == [8, 8, 8]
    # The Trainer directory's logged loss is the free trainer_loss signal.
    assert [r["trainer_loss"] for r in totals] == [None, None, pytest.approx(1 + 1 / 600)]
    exported = _export(db, "checkpoints")
    assert [r["step"] for r in exported] == steps
    assert list(exported[0]) == list(COLUMNS["checkpoints"])
    assert "step 200: failed: incomplete" in daemon.output()


def test_rotation_before_and_during_evaluation_is_vanished_and_listed(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    import os

    db = tmp_path / "s.db"
    daemon = start_daemon(run_dir, db, probe, tmp=tmp_path)
    worker = daemon.wait_ready()
    # A frozen worker is a slow one: the queue fills while nothing is evaluated.
    os.kill(worker, signal.SIGSTOP)
    try:
        write_checkpoint(templates[0], run_dir / "step_100")
        write_checkpoint(templates[1], run_dir / "step_200")
        wait_for(lambda: statuses(db) == {100: ["pending"], 200: ["pending"]}, what="two queued")
        write_checkpoint(templates[2], run_dir / "step_300")
        assert [p.name for p in rotate(run_dir, keep=2)] == ["step_100"]
        wait_for(lambda: statuses(db).get(100) == ["vanished"], what="step 100 vanished")
        # Let the worker claim step 200, freeze it inside its (slow, first) load, rotate it away.
        os.kill(worker, signal.SIGCONT)
        wait_for(lambda: statuses(db).get(200) == ["running"], what="step 200 running")
        os.kill(worker, signal.SIGSTOP)
        write_checkpoint(templates[0], run_dir / "step_400")
        assert [p.name for p in rotate(run_dir, keep=2)] == ["step_200"]
        os.kill(worker, signal.SIGCONT)
        wait_for(lambda: all_final(db, [100, 200, 300, 400]), what="steps up to 400 final")
        # Free-running rotation of checkpoints already done leaves their results alone.
        for step, template in ((500, 1), (600, 2)):
            write_checkpoint(templates[template], run_dir / f"step_{step}")
            rotate(run_dir, keep=2)
        wait_for(lambda: all_final(db, [500, 600]), what="steps 500 and 600 final")
    finally:
        os.kill(worker, signal.SIGCONT)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.output()

    assert statuses(db) == {
        100: ["vanished"],
        200: ["vanished"],
        300: ["done"],
        400: ["done"],
        500: ["done"],
        600: ["done"],
    }
    rows = {r["step"]: r for r in checkpoints(db)}
    assert rows[100]["reason"] == "vanished: directory is gone"
    assert rows[100]["started_at"] is None  # never claimed
    assert "vanished during evaluation" in rows[200]["reason"]
    assert alerts(db, "checkpoint_failed") == []
    assert [r["step"] for r in _export(db, "checkpoints")] == [100, 200, 300, 400, 500, 600]
    assert set(_metric_groups(db)) == {300, 400, 500, 600}


def test_checkpoint_rotated_away_within_the_debounce_is_still_listed(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    import shutil

    db = tmp_path / "s.db"
    daemon = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        daemon.wait_ready()
        write_checkpoint(templates[0], run_dir / "step_100", pause_s=0.0)
        shutil.rmtree(run_dir / "step_100")
        write_checkpoint(templates[1], run_dir / "step_200")
        wait_for(lambda: all_final(db, [200]), what="step 200 final")
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.wait()
    assert statuses(db) == {100: ["vanished"], 200: ["done"]}


def test_checkpoint_failing_again_after_a_rewrite_raises_a_second_alert(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    db = tmp_path / "s.db"
    daemon = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        daemon.wait_ready()
        ckpt = run_dir / "step_100"
        write_checkpoint(templates[0], ckpt, corrupt="truncated")
        wait_for(lambda: statuses(db) == {100: ["failed"]}, what="the first failure")
        # The writer comes back, appends a little, and dies again.
        with open(ckpt / "model.safetensors", "ab") as handle:
            handle.write(b"\0" * 1000)
        wait_for(lambda: statuses(db) == {100: ["superseded", "failed"]}, what="the second failure")
        wait_for(lambda: len(alerts(db, "checkpoint_failed")) == 2, what="a second alert")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.output()


# --once ----------------------------------------------------------------------------------------


def test_once_processes_present_checkpoints_in_step_order_and_exits_0_with_failures(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    # Names whose text order differs from their step order.
    for step, template in ((900, 0), (1000, 1), (50, 2)):
        write_checkpoint(templates[template], run_dir / f"step_{step}", pause_s=0.0)
    write_checkpoint(templates[0], run_dir / "step_300", pause_s=0.0, corrupt="garbage")
    write_checkpoint(templates[1], run_dir / "step_700", pause_s=0.0, corrupt="truncated")
    db = tmp_path / "s.db"
    done = run_once(run_dir, db, probe, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert statuses(db) == {
        50: ["done"],
        300: ["failed"],
        700: ["failed"],
        900: ["done"],
        1000: ["done"],
    }
    by_start = sorted((r for r in checkpoints(db) if r["status"] == "done"), key=lambda r: r["id"])
    by_start.sort(key=lambda r: r["started_at"])
    assert [r["step"] for r in by_start] == [50, 900, 1000]
    # A stalled truncated file fails after one settle period (GROKWATCH_SETTLE_S=1) at most.
    reason_700 = next(r["reason"] for r in checkpoints(db) if r["step"] == 700)
    assert reason_700.startswith("incomplete: model.safetensors is")
    assert "step 300: failed: corrupt" in done.stdout
    hb = query(db, "SELECT stopped_at FROM heartbeat")[0]
    assert hb["stopped_at"] is not None
    # A second --once finds everything final: nothing is evaluated again.
    before = checkpoints(db)
    again = run_once(run_dir, db, probe, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert checkpoints(db) == before


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--max-tokens", "lots"], "'lots' is not a valid integer"),
        (["--tau", "5"], "tau = 5.0: must be between 0 and 1"),
        (["--device"], "requires an argument"),
    ],
)
def test_once_usage_errors_exit_2(
    tmp_path: Path, run_dir: Path, extra: list[str], needle: str
) -> None:
    done = run_once(run_dir, tmp_path / "s.db", None, *extra, tmp=tmp_path)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
def test_once_with_an_unusable_device_exits_2_and_fails_no_checkpoint(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path], device: str
) -> None:
    write_checkpoint(templates[0], run_dir / "step_100", pause_s=0.0)
    db = tmp_path / "s.db"
    done = run_once(run_dir, db, probe, "--device", device, tmp=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("grokwatch: error:")]
    assert len(errors) == 1 and f"--device {device}" in errors[0].replace("'", "")
    assert "Traceback" not in done.stderr
    # Nothing was marked failed: the same store works once the device is right.
    assert statuses(db) == {100: ["pending"]}
    assert alerts(db) == []
    again = run_once(run_dir, db, probe, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert statuses(db) == {100: ["done"]}


def test_once_missing_run_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = run_once(missing, tmp_path / "s.db", None, tmp=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "not a directory" in lines[0]


def test_once_unreadable_probe_exits_1_naming_the_file(tmp_path: Path, run_dir: Path) -> None:
    bad = tmp_path / "probe.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage\x80\n")
    done = run_once(run_dir, tmp_path / "s.db", bad, tmp=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("grokwatch: error: ") and str(bad) in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("bad", ["not_a_database", "under_a_file"])
def test_once_with_an_unusable_store_exits_1_naming_it(
    tmp_path: Path, run_dir: Path, probe: Path, bad: str
) -> None:
    if bad == "not_a_database":
        db = tmp_path / "s.db"
        db.write_bytes(b"definitely not SQLite" * 300)
    else:
        db = probe / "s.db"  # the probe is a file: nothing can be created under it
    done = run_once(run_dir, db, probe, tmp=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"grokwatch: error: {db}")


# Runs in one store ------------------------------------------------------------------------------


def test_other_probe_or_tau_starts_a_new_run_and_the_stored_probe_is_reused(
    tmp_path: Path, run_dir: Path, templates: list[Path]
) -> None:
    for step, template in ((100, 0), (200, 1)):
        write_checkpoint(templates[template], run_dir / f"step_{step}", pause_s=0.0)
    db = tmp_path / "s.db"
    probe_a = write_probe(tmp_path / "a.jsonl")
    probe_b = write_probe(tmp_path / "b.jsonl", groups=("gamma", "delta"))

    def once(*extra: str) -> subprocess.CompletedProcess[str]:
        done = run_once(run_dir, db, None, *extra, tmp=tmp_path)
        assert done.returncode == 0, done.stderr
        return done

    once("--probe", str(probe_a))
    once("--probe", str(probe_b))
    runs = query(db, "SELECT id, probe_hash, tau FROM runs ORDER BY id")
    assert [r["id"] for r in runs] == [1, 2]
    assert runs[0]["probe_hash"] != runs[1]["probe_hash"]
    # Each run has its own rows; export picks the latest unless --run says otherwise.
    assert {s: sorted(g) for s, g in _metric_groups(db).items()} == {
        100: ["__all__", "delta", "gamma"],
        200: ["__all__", "delta", "gamma"],
    }
    assert {s: sorted(g) for s, g in _metric_groups(db, 1).items()} == {
        100: ["__all__", "alpha", "beta"],
        200: ["__all__", "alpha", "beta"],
    }
    # No --probe: the latest run's stored probe is reused, and nothing is recomputed.
    done_before = query(db, "SELECT id, done_at, attempts FROM checkpoints ORDER BY id")
    reused = once()
    assert "probe: stored with the run" in reused.stdout
    assert len(query(db, "SELECT id FROM runs")) == 2
    assert query(db, "SELECT id, done_at, attempts FROM checkpoints ORDER BY id") == done_before
    # Another tau with the stored probe: a third run, same probe.
    once("--tau", "0.5")
    runs = query(db, "SELECT id, probe_hash, tau FROM runs ORDER BY id")
    assert [(r["id"], r["tau"]) for r in runs] == [(1, 0.7), (2, 0.7), (3, 0.5)]
    assert runs[2]["probe_hash"] == runs[1]["probe_hash"]
    assert [r["tau"] for r in _export(db, "metrics")] == [0.5] * 6
    assert {r["run_id"] for r in query(db, "SELECT run_id FROM checkpoints")} == {1, 2, 3}


def test_headless_daemon_uses_settle_from_run_dir_config(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    # grokwatch.toml in the run directory is the other way to set settle_s.
    (run_dir / "grokwatch.toml").write_text("settle_s = 1\n")
    write_checkpoint(templates[0], run_dir / "step_100", pause_s=0.0, corrupt="truncated")
    env = daemon_env(tmp_path)
    del env["GROKWATCH_SETTLE_S"]
    done = subprocess.run(
        daemon_args(run_dir, tmp_path / "s.db", probe, "--once"),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert statuses(tmp_path / "s.db") == {100: ["failed"]}
    assert "unchanged for 1 s" in checkpoints(tmp_path / "s.db")[0]["reason"]
