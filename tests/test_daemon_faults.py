"""The daemon under faults: SIGKILL of the daemon or the worker, clean stops, a second daemon.

A fresh worker's first checkpoint takes seconds (torch and the model classes load), which is
the window the "mid-evaluation" kills aim at; each test checks afterwards that the row really
was `running` (or was claimed twice), so a kill that came too late cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    DaemonProcess,
    alerts,
    all_final,
    checkpoints,
    daemon_env,
    heartbeat,
    ignores_signal,
    pid_alive,
    query,
    run_daemon_until_final,
    run_once,
    start_daemon,
    statuses,
    wait_for,
    write_checkpoint,
)

STOP_DEADLINE_S = 20.0  # "within a few seconds": a deadline on a loaded machine, not a timing


def _done_rows(db: Path) -> dict[int, tuple]:
    """Step -> (id, done_at, attempts, load_s) of done rows: what must never change again."""
    return {
        r["step"]: (r["id"], r["done_at"], r["attempts"], r["load_s"])
        for r in checkpoints(db)
        if r["status"] == "done"
    }


def _one_done_row_per_step(db: Path, steps: list[int]) -> None:
    assert statuses(db) == {s: ["done"] for s in steps}
    metrics = query(db, "SELECT step, grp FROM metrics ORDER BY step, grp")
    assert [(m["step"], m["grp"]) for m in metrics] == [
        (s, g) for s in steps for g in ("__all__", "alpha", "beta")
    ]
    assert len(query(db, "SELECT checkpoint_id FROM sample_values")) == len(steps)


def _running(db: Path, step: int) -> bool:
    return statuses(db).get(step) == ["running"]


@pytest.mark.parametrize("victims", ["daemon", "daemon_and_worker"])
def test_sigkill_mid_evaluation_then_restart_loses_and_recomputes_nothing(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path], victims: str
) -> None:
    db = tmp_path / "s.db"
    for step, template in ((100, 0), (200, 1)):
        write_checkpoint(templates[template], run_dir / f"step_{step}", pause_s=0.0)
    run_daemon_until_final(run_dir, db, probe, [100, 200], tmp=tmp_path, what="100 and 200 done")
    committed = _done_rows(db)
    assert set(committed) == {100, 200}

    for step, template in ((300, 2), (400, 0)):
        write_checkpoint(templates[template], run_dir / f"step_{step}", pause_s=0.0)
    second = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        worker = second.wait_ready()
        wait_for(lambda: _running(db, 300), what="step 300 running")
        if victims == "daemon":
            second.signal(signal.SIGKILL)
        else:  # the whole process group at once, like the OOM killer or kill -9 -PGID
            os.killpg(second.pid, signal.SIGKILL)
        second.wait()
        # The worker never outlives its daemon.
        wait_for(lambda: not pid_alive(worker), what="the orphaned worker to exit")
    finally:
        second.kill_group()
    after_kill = _done_rows(db)
    assert {s: after_kill[s] for s in committed} == committed
    if victims == "daemon_and_worker":
        assert _running(db, 300)  # the kill really came mid-evaluation
        assert after_kill == committed
    else:
        # SIGTERM from the parent-death signal lets the worker finish (and commit) its
        # current checkpoint before it exits; it never claims another.
        assert statuses(db)[300] in (["running"], ["done"])
        assert statuses(db)[400] == ["pending"]

    third = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        third.wait_ready()
        wait_for(lambda: all_final(db, [100, 200, 300, 400]), what="every step final")
    finally:
        third.signal(signal.SIGTERM)
        assert third.wait() == 0
    _one_done_row_per_step(db, [100, 200, 300, 400])
    after = _done_rows(db)
    assert {s: after[s] for s in after_kill} == after_kill  # nothing done was recomputed
    assert after[400][2] == 1
    if victims == "daemon_and_worker":
        assert after[300][2] == 2  # the interrupted checkpoint was evaluated again
        assert "1 interrupted checkpoint(s) queued again" in third.output()


def test_worker_killed_idle_and_mid_evaluation_is_restarted_with_worker_down(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    db = tmp_path / "s.db"
    write_checkpoint(templates[0], run_dir / "step_100", pause_s=0.0)
    daemon = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        worker = daemon.wait_ready()
        wait_for(lambda: all_final(db, [100]), what="step 100 done")
        committed = _done_rows(db)
        # Idle: the daemon notices, says so, and starts a fresh worker.
        os.kill(worker, signal.SIGKILL)
        second = wait_for(
            lambda: (p := daemon.worker_pid()) not in (None, worker) and p,
            what="a new worker pid in the heartbeat",
        )
        wait_for(lambda: len(alerts(db, "worker_down")) == 1, what="a worker_down alert")
        # Mid-evaluation: the fresh worker's first load is slow; kill it inside.
        write_checkpoint(templates[1], run_dir / "step_200")
        wait_for(lambda: _running(db, 200), what="step 200 running")
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: len(alerts(db, "worker_down")) == 2, what="a second worker_down alert")
        wait_for(lambda: all_final(db, [100, 200]), what="step 200 re-evaluated")
        assert daemon.worker_pid() not in (None, worker, second)
        assert daemon.proc.poll() is None  # the monitor itself never went down
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.output()
    _one_done_row_per_step(db, [100, 200])
    after = _done_rows(db)
    assert after[100] == committed[100]
    assert after[200][2] == 2
    down = alerts(db, "worker_down")
    assert all(a["message"].startswith("worker process down: worker process exited") for a in down)
    assert "-9" in down[0]["message"]
    assert daemon.output().count("; restarting it") == 2


def test_checkpoint_that_kills_the_worker_twice_fails_with_an_alert(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    db = tmp_path / "s.db"
    daemon = start_daemon(run_dir, db, probe, tmp=tmp_path)

    def claimed(attempts: int) -> bool:
        rows = [r for r in checkpoints(db) if r["step"] == 100]
        return [(r["status"], r["attempts"]) for r in rows] == [("running", attempts)]

    try:
        daemon.wait_ready()
        write_checkpoint(templates[0], run_dir / "step_100")
        for attempt in (1, 2):  # each fresh worker's first load is slow: kill it inside
            wait_for(lambda attempt=attempt: claimed(attempt), what=f"claim {attempt}")
            victim = daemon.worker_pid()
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            wait_for(
                lambda victim=victim: daemon.worker_pid() not in (None, victim), what="restart"
            )
        wait_for(lambda: statuses(db) == {100: ["failed"]}, what="step 100 failed")
        wait_for(lambda: alerts(db, "checkpoint_failed"), what="its checkpoint_failed alert")
        # The monitor goes on with the next checkpoint.
        write_checkpoint(templates[1], run_dir / "step_200")
        wait_for(lambda: all_final(db, [100, 200]), what="step 200 final")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.output()
    assert statuses(db) == {100: ["failed"], 200: ["done"]}
    reason = checkpoints(db)[0]["reason"]
    assert reason == "worker crashed 2 times on it (worker process exited with code -9)"
    (alert,) = alerts(db, "checkpoint_failed")
    assert alert["step"] == 100 and reason in alert["message"]
    assert len(alerts(db, "worker_down")) == 2


def test_checkpoint_rotated_away_while_the_daemon_was_down_is_vanished(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path]
) -> None:
    db = tmp_path / "s.db"
    first = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        os.kill(first.wait_ready(), signal.SIGSTOP)  # nothing gets evaluated
        write_checkpoint(templates[0], run_dir / "step_100")
        wait_for(lambda: statuses(db) == {100: ["pending"]}, what="step 100 queued")
    finally:
        first.kill_group()  # a crash with a queued checkpoint (SIGKILL works on stopped ones)
    # Overnight, training rotates it away and writes the next one.
    write_checkpoint(templates[1], run_dir / "step_200")
    shutil.rmtree(run_dir / "step_100")
    run_daemon_until_final(run_dir, db, probe, [100, 200], tmp=tmp_path, what="both final")
    assert statuses(db) == {100: ["vanished"], 200: ["done"]}


@pytest.mark.parametrize("how", ["sigterm", "sigint_to_group"])
def test_sigterm_and_ctrl_c_stop_cleanly_mid_evaluation(
    tmp_path: Path, run_dir: Path, probe: Path, templates: list[Path], how: str
) -> None:
    db = tmp_path / "s.db"
    write_checkpoint(templates[0], run_dir / "step_100", pause_s=0.0)
    daemon = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        worker = daemon.wait_ready()
        wait_for(lambda: _running(db, 100), what="step 100 running")
        if how == "sigterm":
            daemon.signal(signal.SIGTERM)
        else:  # Ctrl+C in a terminal signals the whole foreground group, worker included
            os.killpg(daemon.pid, signal.SIGINT)
        code = daemon.wait(STOP_DEADLINE_S)
    finally:
        daemon.kill_group()
    assert code == 0, daemon.output()
    assert "Traceback" not in daemon.output()
    assert not pid_alive(worker)
    hb = heartbeat(db)
    assert hb is not None and hb["stopped_at"] is not None and hb["pid"] == daemon.pid
    # Interrupted work is back in the queue (or finished), never left running.
    assert statuses(db)[100] in (["pending"], ["done"])
    # The lock is free: a new daemon starts on the same store and finishes the work.
    done = run_once(run_dir, db, probe, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    _one_done_row_per_step(db, [100])


def test_ctrl_c_while_the_worker_boots_stops_without_a_traceback(
    tmp_path: Path, run_dir: Path, probe: Path
) -> None:
    daemon = start_daemon(run_dir, tmp_path / "s.db", probe, tmp=tmp_path)
    try:
        worker = daemon.wait_ready()  # spawned; it imports torch for seconds after this
        # Ignored from its first instant, not only once worker_main runs.
        assert ignores_signal(worker, signal.SIGINT)
        os.killpg(daemon.pid, signal.SIGINT)
        code = daemon.wait(STOP_DEADLINE_S)
    finally:
        daemon.kill_group()
    assert code == 0
    assert "Traceback" not in daemon.output() and "KeyboardInterrupt" not in daemon.output()
    assert not pid_alive(worker)


def test_second_daemon_on_the_same_store_exits_1_naming_the_holder(
    tmp_path: Path, run_dir: Path, probe: Path
) -> None:
    db = tmp_path / "s.db"
    first = start_daemon(run_dir, db, probe, tmp=tmp_path)
    try:
        first.wait_ready()
        second = DaemonProcess(list(first.proc.args), db, daemon_env(tmp_path), tmp_path / "logs")
        assert second.wait() == 1
        lines = second.err_path.read_text().strip().splitlines()
        assert len(lines) == 1, lines
        assert f"already watched by pid {first.pid}" in lines[0]
        assert str(db) in lines[0]
        assert first.proc.poll() is None  # the holder is untouched
        assert heartbeat(db)["pid"] == first.pid
    finally:
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
