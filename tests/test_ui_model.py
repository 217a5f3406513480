"""The poller behind the TUI: read-only, incremental, bounded, status changes included."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from grokwatch.seeding import add_pending, complete_running, finish_next, seed_store
from grokwatch.store import Store
from grokwatch.ui.model import StoreModel
from grokwatch.ui.views import filter_groups


def test_missing_then_schema_less_then_ready(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    model = StoreModel(path)
    first = model.poll()
    assert first is not None and first.state == "missing"
    assert model.poll() is None  # nothing new to draw
    path.write_bytes(b"")  # the daemon created the file but not the schema yet
    assert model.poll() is None
    seed_store(path, "normal")
    ready = model.poll()
    assert ready is not None and ready.state == "ready"
    assert ready.count("done") == 24 and ready.queue_depth == 1


def test_empty_store_has_no_run(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "e.db", "empty")
    snap = StoreModel(info.path).poll()
    assert snap is not None and snap.state == "empty" and snap.run_id is None


def test_unchanged_store_costs_one_counter_read(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "n.db", "normal")
    model = StoreModel(info.path)
    assert model.poll() is not None
    statements: list[str] = []
    assert model._reader is not None
    model._reader.conn.set_trace_callback(statements.append)
    assert model.poll() is None
    assert [s for s in statements if s.startswith("SELECT")] == [
        "SELECT value FROM meta WHERE key = 'seq'"
    ]


def test_reader_connection_is_read_only(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "n.db", "normal")
    model = StoreModel(info.path)
    model.poll()
    assert model._reader is not None
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        model._reader.conn.execute("UPDATE meta SET value = '0'")


def test_incremental_poll_sees_status_changes_and_new_rows(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "n.db", "normal")
    assert info.run_id is not None
    model = StoreModel(info.path)
    base = model.poll()
    assert base is not None
    store = Store(info.path)
    try:
        store.claim_next(info.run_id)
        running = model.poll()
        assert running is not None
        assert running.checkpoints[0].step == 12500
        assert running.checkpoints[0].status == "running"
        alert = {
            "kind": "onset",
            "step": 12500,
            "group": "math",
            "message": "m: onset",
            "dedupe_key": "o",
        }
        complete_running(store, info.run_id, info.groups, alerts=[alert])
        done = model.poll()
        assert done is not None
        top = done.checkpoints[0]
        assert (top.step, top.status) == (12500, "done") and top.loss is not None
        assert done.overall.steps[-1] == 12500 and len(done.overall.steps) == 25
        assert [a.kind for a in done.new_alerts] == ["onset"]
        assert all(len(lane.series.steps) == 25 for lane in done.groups)
        quiet = model.poll()
        assert quiet is None  # the alert is not announced twice
        add_pending(store, info.run_id, 13000)
        again = model.poll()
        assert again is not None and again.new_alerts == ()
        assert again.queue_depth == 1 and again.checkpoints[0].status == "pending"
    finally:
        store.close()


def test_superseded_checkpoint_leaves_the_series(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "n.db", "normal")
    assert info.run_id is not None
    model = StoreModel(info.path)
    model.poll()
    store = Store(info.path)
    try:
        path = "/data/runs/olmoe-tiny/checkpoint-12000"
        store.record_checkpoint(info.run_id, path, 12000, "rewritten", "pending")
        snap = model.poll()
        assert snap is not None
        assert 12000 not in snap.overall.steps
        statuses = {c.status for c in snap.checkpoints if c.step == 12000}
        assert statuses == {"superseded", "pending"}
    finally:
        store.close()


def test_bounded_history_keeps_the_newest(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "b.db", "big", n_checkpoints=300, n_groups=3)
    model = StoreModel(info.path, table_rows=50, group_points=20, overall_points=100)
    snap = model.poll()
    assert snap is not None
    assert len(snap.checkpoints) == 50 and snap.checkpoints[0].step == 300 * 500
    assert len(snap.overall.steps) == 100 and snap.overall.steps[-1] == 300 * 500
    assert {len(lane.series.steps) for lane in snap.groups} == {20}
    store = Store(info.path)
    try:
        assert info.run_id is not None
        add_pending(store, info.run_id, 301 * 500)
        finish_next(store, info.run_id, info.groups)
    finally:
        store.close()
    newer = model.poll()
    assert newer is not None
    assert len(newer.checkpoints) == 50 and newer.checkpoints[0].step == 301 * 500
    assert len(newer.overall.steps) == 100 and newer.overall.steps[-1] == 301 * 500


def test_series_values_latest_and_delta(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "n.db", "normal")
    snap = StoreModel(info.path).poll()
    assert snap is not None
    loss = snap.overall.values("loss")
    assert snap.overall.latest("loss") == loss[-1]
    delta = snap.overall.delta("loss")
    assert delta is not None and math.isclose(delta, loss[-1] - loss[-2])
    assert snap.overall.has("trainer_loss")
    assert not snap.consistency_constant


def test_detail_has_layers_usage_and_pathways(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "n.db", "normal")
    model = StoreModel(info.path)
    snap = model.poll()
    assert snap is not None
    done = next(c for c in snap.checkpoints if c.status == "done")
    detail = model.detail(done.id)
    assert detail is not None
    assert detail.layer_distances[0][0] == "__all__"
    assert {g for g, _ in detail.layer_distances} == {"__all__", *info.groups}
    assert all(len(d) == 4 for _, d in detail.layer_distances)
    assert len(detail.expert_usage) == 4 and len(detail.expert_usage[0]) == 8
    assert len(detail.samples) == 8
    assert {s.group for s in detail.samples} == set(info.groups)  # each group is represented
    assert all("-" in s.pathway for s in detail.samples)
    pending = next(c for c in snap.checkpoints if c.status == "pending")
    bare = model.detail(pending.id)
    assert bare is not None and bare.samples == () and bare.expert_usage == ()
    assert model.detail(10**9) is None


def test_filter_groups_matches_name_or_state(tmp_path: Path) -> None:
    info = seed_store(tmp_path / "a.db", "alerting")
    snap = StoreModel(info.path).poll()
    assert snap is not None
    assert [g.name for g in filter_groups(snap.groups, "SCI")] == ["science"]
    assert [g.name for g in filter_groups(snap.groups, "grok")] == ["math"]
    assert len(filter_groups(snap.groups, "  ")) == 4
