"""What the TUI shows, as immutable snapshots, and the poller that builds them from the store.

`StoreModel` is the only object that touches the database. It runs in a worker thread, keeps
bounded in-memory series, and on every poll reads only rows stamped after the change counter it
saw last (status changes included), returning a fresh frozen `Snapshot` or None when nothing
changed. Widgets render snapshots and never query the store.
"""

from __future__ import annotations

import bisect
import json
import math
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grokwatch.errors import StoreError
from grokwatch.reader import Heartbeat, Reader
from grokwatch.ui.views import (
    ALL,
    SERIES_METRICS,
    AlertView,
    CheckpointDetail,
    CheckpointView,
    GroupLane,
    SamplePathway,
    SeriesSet,
    Snapshot,
)


class _MutableSeries:
    """A bounded, step-ordered series that accepts late and repeated rows."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.keys: list[tuple[int, int]] = []  # (step, checkpoint_id)
        self.columns: list[list[float]] = [[] for _ in SERIES_METRICS]
        self._frozen: SeriesSet | None = None

    def put(self, step: int, checkpoint_id: int, row: dict[str, Any]) -> None:
        key = (step, checkpoint_id)
        values = [_float(row.get(m)) for m in SERIES_METRICS]
        index = bisect.bisect_left(self.keys, key)
        if index < len(self.keys) and self.keys[index] == key:
            for col, v in zip(self.columns, values, strict=True):
                col[index] = v
        else:
            if len(self.keys) >= self.max_points and index == 0:
                return  # older than everything kept
            self.keys.insert(index, key)
            for col, v in zip(self.columns, values, strict=True):
                col.insert(index, v)
            excess = len(self.keys) - self.max_points
            if excess > 0:
                del self.keys[:excess]
                for col in self.columns:
                    del col[:excess]
        self._frozen = None

    def load_sorted(self, rows: Sequence[Sequence[Any]]) -> None:
        """Bulk-load rows already in (step, checkpoint) order: checkpoint_id, step, grp, metrics."""
        rows = rows[-self.max_points :]
        self.keys = [(r[1], r[0]) for r in rows]
        self.columns = [
            [math.nan if r[3 + i] is None else float(r[3 + i]) for r in rows]
            for i in range(len(SERIES_METRICS))
        ]
        self._frozen = None

    def drop(self, checkpoint_id: int) -> None:
        for i, (_, cid) in enumerate(self.keys):
            if cid == checkpoint_id:
                del self.keys[i]
                for col in self.columns:
                    del col[i]
                self._frozen = None
                return

    def freeze(self) -> SeriesSet:
        if self._frozen is None:
            self._frozen = SeriesSet(
                steps=tuple(k[0] for k in self.keys),
                columns=tuple(tuple(c) for c in self.columns),
            )
        return self._frozen


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


_CHECKPOINT_SQL = (
    "SELECT c.id, c.step, c.path, c.status, c.reason, c.seen_at, c.done_at, c.total_s,"
    " COALESCE(m.trainer_loss, c.trainer_loss) AS trainer_loss, m.loss, m.pathway_distance,"
    " m.complexity, m.consistency, m.raw_cosine FROM checkpoints c LEFT JOIN metrics m"
    " ON m.checkpoint_id = c.id AND m.grp = '__all__' AND c.status = 'done'"
)
_METRIC_COLS = "m.checkpoint_id, m.step, m.grp, " + ", ".join(f"m.{c}" for c in SERIES_METRICS)


class StoreModel:
    """Polls one store read-only and keeps the bounded state the screens need."""

    def __init__(
        self,
        store_path: str | Path,
        run_id: int | None = None,
        table_rows: int = 500,
        group_points: int = 256,
        overall_points: int = 20_000,
        alert_rows: int = 500,
    ) -> None:
        self.store_path = Path(store_path)
        self.pinned_run = run_id
        self.table_rows = table_rows
        self.group_points = group_points
        self.overall_points = overall_points
        self.alert_rows = alert_rows
        self._lock = threading.Lock()
        self._reader: Reader | None = None
        self._last: Snapshot | None = None
        self._reset(None)

    def _reset(self, run_id: int | None) -> None:
        self._run_id = run_id
        self._seq = -1
        self._run: dict[str, Any] = {}
        self._n_runs = 0
        self._overall = _MutableSeries(self.overall_points)
        self._groups: dict[str, _MutableSeries] = {}
        self._group_info: dict[str, dict[str, Any]] = {}
        self._checkpoints: dict[int, CheckpointView] = {}
        self._ordered: tuple[CheckpointView, ...] | None = None
        self._alerts: list[AlertView] = []
        self._queue: tuple[tuple[str, int], ...] = ()
        self._heartbeat: Heartbeat | None = None
        self._last_done_at: float | None = None

    def close(self) -> None:
        """Close the read-only connection."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # Polling ----------------------------------------------------------------------------

    def poll(self) -> Snapshot | None:
        """Read what changed since the last poll; a new snapshot, or None if nothing did."""
        with self._lock:
            snapshot = self._poll_locked()
        if snapshot is not None:
            self._last = snapshot
        return snapshot

    def _poll_locked(self) -> Snapshot | None:
        if self._reader is None:
            if not self.store_path.is_file():
                return self._once(Snapshot(str(self.store_path), "missing"))
            try:
                self._reader = Reader(self.store_path)
            except (StoreError, sqlite3.Error) as exc:
                # A file without the schema yet is a daemon still creating it: just wait.
                error = "" if "no such table" in str(exc) else str(exc)
                return self._once(Snapshot(str(self.store_path), "missing", error=error))
        conn = self._reader.conn
        try:
            conn.execute("BEGIN")  # one read snapshot for the whole poll
            try:
                return self._read(self._reader)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            # The daemon has created the file but not the schema yet: reopen next time.
            if "no such table" in str(exc):
                self._reader.close()
                self._reader = None
                return self._once(Snapshot(str(self.store_path), "missing"))
            raise

    def _once(self, snapshot: Snapshot) -> Snapshot | None:
        last = self._last
        if last is not None and last.state == snapshot.state and last.error == snapshot.error:
            return None
        return snapshot

    def _read(self, reader: Reader) -> Snapshot | None:
        seq = reader.seq()
        if seq == self._seq:
            return None
        run_id = self.pinned_run if self.pinned_run is not None else reader.latest_run_id()
        new_alerts: list[AlertView] = []
        if run_id is None or reader.run(run_id) is None:
            self._reset(None)
            self._heartbeat = reader.heartbeat()
            self._seq = seq
            missing = f"run {run_id} is not in this store" if run_id is not None else ""
            return Snapshot(
                str(self.store_path), "empty", seq=seq, heartbeat=self._heartbeat, error=missing
            )
        if run_id != self._run_id:
            self._reset(run_id)
            self._load_all(reader, run_id)
        else:
            new_alerts = self._load_changes(reader, run_id, self._seq)
        self._seq = seq
        self._heartbeat = reader.heartbeat()
        self._queue = tuple(sorted(reader.queue_counts(run_id).items()))
        return self._snapshot(seq, tuple(new_alerts))

    def _snapshot(self, seq: int, new_alerts: tuple[AlertView, ...]) -> Snapshot:
        if self._ordered is None:
            self._ordered = tuple(
                sorted(self._checkpoints.values(), key=lambda c: (c.step, c.id), reverse=True)
            )
        lanes = tuple(
            GroupLane(
                name=name,
                n_samples=int(info.get("n_samples") or 0),
                n_memorized=info.get("n_memorized"),
                n_flagged=int(info.get("n_flagged") or 0),
                state=info.get("state"),
                series=self._groups[name].freeze(),
            )
            for name, info in self._group_info.items()
        )
        return Snapshot(
            store_path=str(self.store_path),
            state="ready",
            seq=seq,
            run_id=self._run_id,
            run_dir=str(self._run.get("run_dir", "")),
            probe_source=str(self._run.get("probe_source", "")),
            n_runs=self._n_runs,
            heartbeat=self._heartbeat,
            queue=self._queue,
            overall=self._overall.freeze(),
            groups=lanes,
            checkpoints=self._ordered,
            alerts=tuple(self._alerts),
            new_alerts=new_alerts,
            last_done_at=self._last_done_at,
        )

    def _load_all(self, reader: Reader, run_id: int) -> None:
        conn = reader.conn
        row = conn.execute(
            "SELECT id, run_dir, probe_source, tau FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        self._run = dict(row) if row else {}
        self._n_runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        # Walk done checkpoints in step order on their index, one primary-key lookup each.
        done_join = (
            " FROM checkpoints c JOIN metrics m ON m.checkpoint_id = c.id AND m.grp = ?"
            " WHERE c.run_id = ? AND c.status = 'done'"
        )
        self._overall.load_sorted(
            conn.execute(
                f"SELECT {_METRIC_COLS}{done_join} ORDER BY c.step, c.id", (ALL, run_id)
            ).fetchall()
        )
        # A run keeps its probe, so the newest checkpoint names every group (and this is an
        # index lookup, where listing the groups of all metric rows scans the whole table).
        names = conn.execute(
            "SELECT grp FROM metrics WHERE checkpoint_id = (SELECT id FROM checkpoints"
            " WHERE run_id = ? AND status = 'done' ORDER BY step DESC, id DESC LIMIT 1)"
            " AND grp != ? ORDER BY rowid",
            (run_id, ALL),
        ).fetchall()
        for (name,) in names:
            rows = conn.execute(
                f"SELECT {_METRIC_COLS}, m.n_samples, m.n_memorized, m.n_flagged, m.state"
                f"{done_join} ORDER BY c.step DESC, c.id DESC LIMIT ?",
                (name, run_id, self.group_points),
            ).fetchall()
            for r in reversed(rows):
                self._put_group(dict(r))
        rows = conn.execute(
            _CHECKPOINT_SQL + " WHERE c.run_id = ? ORDER BY c.step DESC, c.id DESC LIMIT ?",
            (run_id, self.table_rows),
        ).fetchall()
        for r in rows:
            self._checkpoints[r["id"]] = _checkpoint_view(dict(r))
        self._last_done_at = conn.execute(
            "SELECT MAX(done_at) FROM checkpoints WHERE run_id = ? AND status = 'done'", (run_id,)
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT id, step, kind, grp, message, created_at FROM alerts WHERE run_id = ?"
            " ORDER BY id DESC LIMIT ?",
            (run_id, self.alert_rows),
        ).fetchall()
        self._alerts = [_alert_view(dict(r)) for r in rows]

    def _load_changes(self, reader: Reader, run_id: int, since: int) -> list[AlertView]:
        conn = reader.conn
        for r in conn.execute(
            _CHECKPOINT_SQL + " WHERE c.run_id = ? AND c.seq > ?", (run_id, since)
        ):
            view = _checkpoint_view(dict(r))
            old = self._checkpoints.get(view.id)
            if old is not None and old.status == "done" and view.status != "done":
                self._forget_points(view.id)
            if view.status == "done" and view.done_at is not None:
                self._last_done_at = max(self._last_done_at or 0.0, view.done_at)
            self._checkpoints[view.id] = view
            self._ordered = None
        for r in conn.execute(
            f"SELECT {_METRIC_COLS}, m.n_samples, m.n_memorized, m.n_flagged, m.state"
            " FROM metrics m JOIN checkpoints c ON c.id = m.checkpoint_id"
            " WHERE m.run_id = ? AND m.seq > ? AND c.status = 'done' ORDER BY m.step",
            (run_id, since),
        ):
            row = dict(r)
            if row["grp"] == ALL:
                self._overall.put(row["step"], row["checkpoint_id"], row)
            else:
                self._put_group(row)
        if len(self._checkpoints) > self.table_rows:
            keep = sorted(self._checkpoints.values(), key=lambda c: (c.step, c.id))
            for view in keep[: len(keep) - self.table_rows]:
                del self._checkpoints[view.id]
        new = [_alert_view(a) for a in reader.alerts(run_id, since)]
        if new:
            self._alerts = (list(reversed(new)) + self._alerts)[: self.alert_rows]
        return new

    def _put_group(self, row: dict[str, Any]) -> None:
        name = row["grp"]
        series = self._groups.get(name)
        if series is None:
            series = self._groups[name] = _MutableSeries(self.group_points)
        series.put(row["step"], row["checkpoint_id"], row)
        info = self._group_info.setdefault(name, {})
        if row["step"] >= info.get("step", -1):
            info.update(
                step=row["step"],
                n_samples=row["n_samples"],
                n_memorized=row["n_memorized"],
                n_flagged=row["n_flagged"],
                state=row["state"],
            )

    def _forget_points(self, checkpoint_id: int) -> None:
        self._overall.drop(checkpoint_id)
        for series in self._groups.values():
            series.drop(checkpoint_id)

    # Detail -----------------------------------------------------------------------------

    def detail(self, checkpoint_id: int, max_samples: int = 8) -> CheckpointDetail | None:
        """Per-layer distances, expert usage and a few sample pathways of one checkpoint."""
        with self._lock:
            reader = self._reader
            if reader is None:
                return None
            conn = reader.conn
            row = conn.execute(
                "SELECT * FROM checkpoints WHERE id = ?", (checkpoint_id,)
            ).fetchone()
            if row is None:
                return None
            checkpoint = dict(row)
            metric_rows = conn.execute(
                "SELECT grp, layer_distances FROM metrics WHERE checkpoint_id = ? ORDER BY rowid",
                (checkpoint_id,),
            ).fetchall()
            arrays = reader.sample_arrays(checkpoint_id)
            groups = self._probe_groups(reader, checkpoint["run_id"]) if arrays is not None else []
        layers = sorted(
            (
                (r["grp"], tuple(float(x) for x in json.loads(r["layer_distances"] or "[]")))
                for r in metric_rows
            ),
            key=lambda item: item[0] != ALL,
        )
        usage: tuple[tuple[float, ...], ...] = ()
        samples: list[SamplePathway] = []
        n_samples = 0
        if arrays is not None:
            usage = tuple(tuple(float(w) for w in layer) for layer in arrays.expert_usage)
            n_samples = len(arrays.index)
            for row_index in _spread_by_group(arrays.index, groups, max_samples):
                probe_index = int(arrays.index[row_index])
                samples.append(
                    SamplePathway(
                        index=probe_index,
                        group=groups[probe_index] if probe_index < len(groups) else "?",
                        loss=float(arrays.loss[row_index]),
                        consistency=float(arrays.consistency[row_index]),
                        pathway=arrays.pathway(row_index),
                    )
                )
        return CheckpointDetail(checkpoint, tuple(layers), usage, tuple(samples), n_samples)

    def _probe_groups(self, reader: Reader, run_id: int) -> list[str]:
        cache = getattr(self, "_group_cache", None)
        if cache is not None and cache[0] == run_id:
            return cache[1]
        groups = [str(s.get("group") or "default") for s in reader.probe_texts(run_id)]
        self._group_cache = (run_id, groups)
        return groups


def _spread_by_group(index: Sequence[int], groups: Sequence[str], limit: int) -> list[int]:
    """Row numbers of up to `limit` samples, taking groups in turn so each one is seen."""
    by_group: dict[str, list[int]] = {}
    for row, probe_index in enumerate(index):
        name = groups[int(probe_index)] if int(probe_index) < len(groups) else "?"
        by_group.setdefault(name, []).append(row)
    picked: list[int] = []
    queues = [list(rows) for rows in by_group.values()]
    while len(picked) < limit and any(queues):
        for rows in queues:
            if rows and len(picked) < limit:
                picked.append(rows.pop(0))
    return sorted(picked)


def _checkpoint_view(row: dict[str, Any]) -> CheckpointView:
    return CheckpointView(
        id=row["id"],
        step=row["step"],
        path=row["path"],
        status=row["status"],
        reason=row["reason"],
        seen_at=row["seen_at"],
        done_at=row["done_at"],
        total_s=_opt(row["total_s"]),
        trainer_loss=_opt(row["trainer_loss"]),
        loss=_opt(row["loss"]),
        pathway_distance=_opt(row["pathway_distance"]),
        complexity=_opt(row["complexity"]),
        consistency=_opt(row["consistency"]),
        raw_cosine=_opt(row["raw_cosine"]),
    )


def _alert_view(row: dict[str, Any]) -> AlertView:
    return AlertView(
        id=row["id"],
        step=row["step"],
        kind=row["kind"],
        group=row.get("grp") or "",
        message=row["message"],
        created_at=row["created_at"],
    )
