"""The store: queue transitions, one transaction per result, dedupe, lock, readers, migrations."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import numpy as np
import pytest

from grokwatch.errors import StoreError
from grokwatch.packing import pack_samples, unpack_samples
from grokwatch.reader import Reader
from grokwatch.schema import MIGRATIONS, connect, migrate
from grokwatch.store import DaemonLock, Store


def _run(store: Store, probe_hash: str = "h", tau: float = 0.7) -> int:
    return store.ensure_run("/runs/a", probe_hash, "bundled", '{"text": "x"}\n', 1, tau, 2048, 512)


def _payload() -> bytes:
    return pack_samples(
        [0, 1],
        [1.0, 2.0],
        [0.5, float("nan")],
        [0.1, 0.2],
        [[(1, 2), (3,)], [(0,), (4, 5)]],
        [-1, 10],
        np.full((2, 8), 0.125),
    )


def _metric(group: str = "a") -> dict:
    return {
        "grp": group,
        "n_samples": 2,
        "n_flagged": 1,
        "loss": 1.5,
        "layer_distances": "[1.0, 2.0]",
        "tau": 0.7,
        "definition": "d",
    }


def test_same_probe_reuses_run_and_other_probe_or_tau_starts_new(tmp_path):
    store = Store(tmp_path / "s.db")
    first = _run(store)
    assert _run(store) == first
    assert _run(store, probe_hash="other") != first
    assert _run(store, probe_hash="other", tau=0.5) not in (first,)


def test_queue_lifecycle_claims_lowest_step_first(tmp_path):
    store = Store(tmp_path / "s.db")
    run = _run(store)
    store.record_checkpoint(run, "/runs/a/checkpoint-20", 20, "f20", "pending")
    store.record_checkpoint(run, "/runs/a/checkpoint-10", 10, "f10", "seen")
    store.record_checkpoint(run, "/runs/a/checkpoint-10", 10, "f10", "pending")
    claimed = store.claim_next(run)
    assert (claimed.step, claimed.status, claimed.attempts) == (10, "running", 1)
    assert store.claim_next(run).step == 20
    assert store.claim_next(run) is None
    assert store.requeue_running(run) == 2
    assert store.queue_counts(run) == {"pending": 2}


def test_result_is_one_transaction_and_retry_is_harmless(tmp_path):
    store = Store(tmp_path / "s.db")
    run = _run(store)
    store.record_checkpoint(run, "/runs/a/checkpoint-10", 10, "f", "pending")
    row = store.claim_next(run)
    alert = {"kind": "onset", "group": "a", "message": "m", "dedupe_key": "onset:a:10", "step": 10}
    assert store.write_result(row.id, [_metric()], _payload(), 2, {"total_s": 1.0}, [alert]) == [1]
    reader = Reader(tmp_path / "s.db")
    assert [m["grp"] for m in reader.metrics(run)] == ["a"]
    assert len(reader.alerts(run)) == 1
    # A done row is no longer running: a late duplicate result is dropped, nothing doubles.
    assert store.write_result(row.id, [_metric()], _payload(), 2, {}, [alert]) is None
    assert len(reader.metrics(run)) == 1 and len(reader.alerts(run)) == 1


def test_failed_write_leaves_nothing_half_written(tmp_path):
    store = Store(tmp_path / "s.db")
    run = _run(store)
    store.record_checkpoint(run, "/runs/a/checkpoint-10", 10, "f", "pending")
    row = store.claim_next(run)
    bad = {**_metric("b"), "no_such_column": 1}
    with pytest.raises(sqlite3.OperationalError):
        store.write_result(row.id, [_metric(), bad], _payload(), 2, {})
    reader = Reader(tmp_path / "s.db")
    assert reader.metrics(run) == []
    assert reader.checkpoints(run)[0]["status"] == "running"


def test_rewritten_checkpoint_supersedes_and_result_for_old_content_is_dropped(tmp_path):
    store = Store(tmp_path / "s.db")
    run = _run(store)
    store.record_checkpoint(run, "/runs/a/checkpoint-10", 10, "old", "pending")
    row = store.claim_next(run)
    store.record_checkpoint(run, "/runs/a/checkpoint-10", 10, "new", "pending")
    assert store.write_result(row.id, [_metric()], _payload(), 2, {}) is None
    statuses = [c["status"] for c in Reader(tmp_path / "s.db").checkpoints(run)]
    assert statuses == ["superseded", "pending"]


def test_vanished_only_touches_unstarted_rows(tmp_path):
    store = Store(tmp_path / "s.db")
    run = _run(store)
    store.record_checkpoint(run, "/p1", 1, "f", "seen")
    store.record_checkpoint(run, "/p1", 1, "f", "vanished", "gone")
    store.record_checkpoint(run, "/p2", 2, "f", "pending")
    store.claim_next(run)
    store.record_checkpoint(run, "/p2", 2, "f", "vanished", "gone")
    assert store.queue_counts(run) == {"vanished": 1, "running": 1}


def test_alert_dedupe_survives_reopen(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path)
    run = _run(store)
    alert = {"kind": "memorized", "group": "a", "message": "m", "dedupe_key": "k"}
    assert store.add_alert(run, alert) is not None
    store.close()
    assert Store(path).add_alert(run, alert) is None


def test_reader_sees_only_changes_since_its_last_seq(tmp_path):
    store = Store(tmp_path / "s.db")
    run = _run(store)
    store.record_checkpoint(run, "/p1", 1, "f", "pending")
    reader = Reader(tmp_path / "s.db")
    seen = reader.seq()
    assert reader.checkpoints(run, seen) == []
    store.claim_next(run)
    changed = reader.checkpoints(run, seen)
    assert [c["status"] for c in changed] == ["running"]
    assert reader.seq() > seen


def test_reader_is_read_only(tmp_path):
    store = Store(tmp_path / "s.db")
    _run(store)
    reader = Reader(tmp_path / "s.db")
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM runs")


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="store not found"):
        Reader(tmp_path / "none.db")


def test_migrations_are_idempotent(tmp_path):
    conn = connect(tmp_path / "s.db")
    assert migrate(conn) == len(MIGRATIONS)
    assert migrate(conn) == len(MIGRATIONS)
    strict = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
    assert strict.rstrip().endswith("STRICT")


def test_sample_payload_roundtrip():
    arrays = unpack_samples(_payload())
    assert arrays.pathway(0) == "1,2-3"
    assert arrays.pathway(1) == "0-4,5"
    assert arrays.memorized_since.tolist() == [-1, 10]
    assert np.isnan(arrays.consistency[1])
    assert arrays.expert_usage.shape == (2, 8)


def _try_lock(path: str, queue) -> None:
    try:
        DaemonLock(path).acquire()
        queue.put("acquired")
    except StoreError as exc:
        queue.put(str(exc))


def test_second_daemon_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "s.db"
    lock = DaemonLock(path)
    lock.acquire()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_try_lock, args=(str(path), queue))
    proc.start()
    proc.join(30)
    message = queue.get(timeout=5)
    assert "already watched by pid" in message and "grokwatch ui" in message
    lock.release()
    proc = ctx.Process(target=_try_lock, args=(str(path), queue))
    proc.start()
    proc.join(30)
    assert queue.get(timeout=5) == "acquired"


def test_heartbeat_alive_and_stopped(tmp_path):
    store = Store(tmp_path / "s.db")
    run = _run(store)
    store.beat(run, "/runs/a", "cpu", 0.0)
    hb = Reader(tmp_path / "s.db").heartbeat()
    assert hb.alive()
    assert not hb.alive(now=hb.beat_at + 3600)
    store.beat(run, "/runs/a", "cpu", 0.0, stopped=True)
    assert not Reader(tmp_path / "s.db").heartbeat().alive()
    assert json.loads(Reader(tmp_path / "s.db").run()["settings"]) == {}
