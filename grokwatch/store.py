"""The store writer: the one-daemon lock, the checkpoint queue, results, alerts, heartbeat.

SQLite in WAL mode is the single source of truth and the only channel between the watcher,
the worker process and every reader. The checkpoints table doubles as a durable queue. Every
write bumps a change counter (`meta.seq`) and stamps the rows it touched with it, so a reader
fetches exactly what changed since its last poll, status changes included.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from grokwatch import METRIC_DEFINITION, __version__
from grokwatch.errors import StoreError
from grokwatch.schema import ALERT_KINDS, FINAL_STATUSES, STATUSES, connect, migrate

__all__ = ["ALERT_KINDS", "STATUSES", "CheckpointRow", "DaemonLock", "Store", "connect", "migrate"]


class DaemonLock:
    """An exclusive lock file held for a daemon's life: one daemon per store."""

    def __init__(self, store_path: str | Path) -> None:
        self.path = Path(f"{store_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreError naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot create the lock file ({exc.strerror or exc}); "
                "pass a --db path in a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            store = str(self.path)[: -len(".lock")]
            raise StoreError(
                f"{store}: already watched by {holder}; attach with `grokwatch ui {store}`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    def release(self) -> None:
        """Release the lock (the OS also releases it when the process dies)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class CheckpointRow:
    """One row of the checkpoint queue."""

    id: int
    run_id: int
    step: int
    path: str
    fingerprint: str
    status: str
    reason: str | None
    attempts: int


def _row_to_checkpoint(row: sqlite3.Row) -> CheckpointRow:
    return CheckpointRow(
        id=row["id"],
        run_id=row["run_id"],
        step=row["step"],
        path=row["path"],
        fingerprint=row["fingerprint"],
        status=row["status"],
        reason=row["reason"],
        attempts=row["attempts"],
    )


class Store:
    """The writer used by the daemon and the worker process; every method is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.conn = connect(self.path)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(
                f"{self.path}: cannot open the store ({exc}); "
                "pass another --db, or move this file away if it is not a grokwatch store"
            ) from None
        self.db = sqlite_utils.Database(self.conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[int]:
        """A write transaction that yields the new change counter value for the rows it stamps."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            seq = int(self.conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
            seq += 1
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
            yield seq
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # Runs --------------------------------------------------------------------------------

    def ensure_run(
        self,
        run_dir: str,
        probe_hash: str,
        probe_source: str,
        probe_jsonl: str,
        n_probe_samples: int,
        tau: float,
        max_tokens: int,
        pair_bound: int,
        settings: dict[str, Any] | None = None,
    ) -> int:
        """Return the latest run with the same probe and metric settings, or start a new run."""
        with self.transaction() as seq:
            row = self.conn.execute(
                "SELECT * FROM runs ORDER BY id DESC LIMIT 1",
            ).fetchone()
            if (
                row is not None
                and row["run_dir"] == run_dir
                and row["probe_hash"] == probe_hash
                and row["tau"] == tau
                and row["max_tokens"] == max_tokens
                and row["pair_bound"] == pair_bound
                and row["definition"] == METRIC_DEFINITION
            ):
                return int(row["id"])
            cur = self.conn.execute(
                "INSERT INTO runs (run_dir, probe_hash, probe_source, probe_jsonl, n_probe_samples,"
                " tau, max_tokens, pair_bound, definition, grokwatch_version, settings, created_at,"
                " seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_dir,
                    probe_hash,
                    probe_source,
                    probe_jsonl,
                    n_probe_samples,
                    tau,
                    max_tokens,
                    pair_bound,
                    METRIC_DEFINITION,
                    __version__,
                    json.dumps(settings or {}, sort_keys=True),
                    time.time(),
                    seq,
                ),
            )
            return int(cur.lastrowid)

    def latest_run_for(self, run_dir: str) -> sqlite3.Row | None:
        """The newest run recorded for a run directory (its probe is reused on restart)."""
        return self.conn.execute(
            "SELECT * FROM runs WHERE run_dir = ? ORDER BY id DESC LIMIT 1", (run_dir,)
        ).fetchone()

    def set_run_model(
        self,
        run_id: int,
        model_summary: dict[str, Any],
        dropped: Sequence[tuple[int, str]],
        loss_definition: str,
    ) -> None:
        """Record the model summary and the probe samples dropped at tokenization."""
        with self.transaction() as seq:
            self.conn.execute(
                "UPDATE runs SET model_summary = ?, dropped_samples = ?, loss_definition = ?,"
                " seq = ? WHERE id = ?",
                (
                    json.dumps(model_summary),
                    json.dumps(list(dropped)),
                    loss_definition,
                    seq,
                    run_id,
                ),
            )

    # The checkpoint queue -----------------------------------------------------------------

    def checkpoint_by_path(self, run_id: int, path: str) -> list[CheckpointRow]:
        """All rows recorded for a checkpoint path, oldest first."""
        rows = self.conn.execute(
            "SELECT * FROM checkpoints WHERE run_id = ? AND path = ? ORDER BY id", (run_id, path)
        ).fetchall()
        return [_row_to_checkpoint(r) for r in rows]

    def record_checkpoint(
        self,
        run_id: int,
        path: str,
        step: int,
        fingerprint: str,
        status: str,
        reason: str | None = None,
    ) -> int:
        """Record a watcher decision about a checkpoint; returns the row id (-1: nothing to do).

        The newest row of a path is its current entry. `seen` opens an entry (or refreshes a
        `seen` one whose files are still changing); other decisions apply to the current entry.
        A path whose done content reappears with another fingerprint is a rewrite: the old row
        becomes `superseded` and the new content gets its own row. Final rows never reopen.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown checkpoint status {status!r}")
        now = time.time()
        with self.transaction() as seq:
            rows = self.conn.execute(
                "SELECT * FROM checkpoints WHERE run_id = ? AND path = ? ORDER BY id",
                (run_id, path),
            ).fetchall()
            current = rows[-1] if rows else None
            if status == "superseded":
                target = next(
                    (r for r in reversed(rows) if r["fingerprint"] == fingerprint), current
                )
                if target is None or target["status"] in ("superseded", "vanished"):
                    return -1
                self._set_status(target["id"], status, reason, seq, now)
                return int(target["id"])
            if status == "vanished" and current is not None:
                # A running row belongs to the worker, which finds out for itself. A path never
                # seen before (rotated away within one debounce) gets its own row below.
                if current["status"] not in ("seen", "pending"):
                    return -1
                self._set_status(current["id"], status, reason, seq, now)
                return int(current["id"])
            if current is not None and current["status"] == "seen":
                self.conn.execute(
                    "UPDATE checkpoints SET fingerprint = ?, step = ? WHERE id = ?",
                    (fingerprint, step, current["id"]),
                )
                self._set_status(current["id"], status, reason, seq, now)
                return int(current["id"])
            if current is not None and current["fingerprint"] == fingerprint:
                # A restart re-discovering what the store already holds.
                if current["status"] == "failed" and status == "pending":
                    self._set_status(current["id"], status, None, seq, now)
                return int(current["id"])
            if current is not None and current["status"] in ("pending", "running", "done"):
                if status == "failed" and current["status"] != "done":
                    self._set_status(current["id"], status, reason, seq, now)
                    return int(current["id"])
                self._set_status(
                    current["id"], "superseded", "rewritten with other content", seq, now
                )
            cur = self.conn.execute(
                "INSERT INTO checkpoints (run_id, step, path, fingerprint, status, reason,"
                " seen_at, pending_at, done_at, seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    step,
                    path,
                    fingerprint,
                    status,
                    reason,
                    now,
                    now if status == "pending" else None,
                    now if status in FINAL_STATUSES else None,
                    seq,
                ),
            )
            return int(cur.lastrowid)

    def current_entries(self, run_id: int) -> list[CheckpointRow]:
        """The newest row of every checkpoint path of a run (what the watcher resumes from)."""
        rows = self.conn.execute(
            "SELECT * FROM checkpoints WHERE id IN (SELECT MAX(id) FROM checkpoints"
            " WHERE run_id = ? GROUP BY path) ORDER BY step, id",
            (run_id,),
        ).fetchall()
        return [_row_to_checkpoint(r) for r in rows]

    def _set_status(
        self,
        checkpoint_id: int,
        status: str,
        reason: str | None,
        seq: int,
        now: float,
        step: int | None = None,
    ) -> None:
        sets = ["status = ?", "reason = ?", "seq = ?"]
        args: list[Any] = [status, reason, seq]
        if status == "pending":
            sets.append("pending_at = ?")
            args.append(now)
        if status in FINAL_STATUSES:
            sets.append("done_at = COALESCE(done_at, ?)")
            args.append(now)
        if step is not None:
            sets.append("step = ?")
            args.append(step)
        self.conn.execute(
            f"UPDATE checkpoints SET {', '.join(sets)} WHERE id = ?", (*args, checkpoint_id)
        )

    def requeue_running(self, run_id: int | None = None) -> int:
        """Put rows left `running` by a crash back to `pending`; returns how many."""
        with self.transaction() as seq:
            where = "status = 'running'" + (" AND run_id = ?" if run_id is not None else "")
            args: tuple[Any, ...] = (run_id,) if run_id is not None else ()
            cur = self.conn.execute(
                f"UPDATE checkpoints SET status = 'pending', started_at = NULL, seq = {seq}"
                f" WHERE {where}",
                args,
            )
            return cur.rowcount

    def claim_next(self, run_id: int) -> CheckpointRow | None:
        """Claim the pending checkpoint with the lowest step (pending -> running)."""
        with self.transaction() as seq:
            row = self.conn.execute(
                "SELECT * FROM checkpoints WHERE run_id = ? AND status = 'pending'"
                " ORDER BY step, id LIMIT 1",
                (run_id,),
            ).fetchone()
            if row is None:
                return None
            self.conn.execute(
                "UPDATE checkpoints SET status = 'running', started_at = ?,"
                " attempts = attempts + 1, seq = ? WHERE id = ?",
                (time.time(), seq, row["id"]),
            )
            claimed = dict(row)
            claimed["status"] = "running"
            claimed["attempts"] = row["attempts"] + 1
            return CheckpointRow(**{k: claimed[k] for k in CheckpointRow.__dataclass_fields__})

    def finish_checkpoint(
        self,
        checkpoint_id: int,
        status: str,
        reason: str | None,
        alert: dict[str, Any] | None = None,
    ) -> None:
        """Mark a claimed checkpoint failed or vanished, with its alert, in one transaction."""
        if status not in ("failed", "vanished", "pending"):
            raise ValueError(status)
        with self.transaction() as seq:
            self._set_status(checkpoint_id, status, reason, seq, time.time())
            if alert is not None:
                row = self.conn.execute(
                    "SELECT run_id FROM checkpoints WHERE id = ?", (checkpoint_id,)
                ).fetchone()
                self._insert_alert(row["run_id"], alert, seq)

    def queue_counts(self, run_id: int) -> dict[str, int]:
        """Number of checkpoints by status."""
        rows = self.conn.execute(
            "SELECT status, COUNT(*) AS n FROM checkpoints WHERE run_id = ? GROUP BY status",
            (run_id,),
        ).fetchall()
        return {r["status"]: r["n"] for r in rows}

    # Results ------------------------------------------------------------------------------

    def write_result(
        self,
        checkpoint_id: int,
        metric_rows: Sequence[dict[str, Any]],
        sample_payload: bytes,
        n_samples: int,
        timings: dict[str, Any],
        alerts: Sequence[dict[str, Any]] = (),
    ) -> list[int] | None:
        """Write one checkpoint's metrics, samples, timings and alerts in one transaction.

        Retrying the same write is harmless: rows are keyed by (checkpoint, group). A result
        for a row that is no longer `running` (superseded meanwhile) is dropped. Returns the ids
        of alerts that were new, or None when the result was dropped.
        """
        with self.transaction() as seq:
            ck = self.conn.execute(
                "SELECT run_id, step, status FROM checkpoints WHERE id = ?", (checkpoint_id,)
            ).fetchone()
            if ck is None:
                raise StoreError(f"{self.path}: checkpoint row {checkpoint_id} does not exist")
            if ck["status"] != "running":
                return None
            for row in metric_rows:
                record = {
                    **row,
                    "checkpoint_id": checkpoint_id,
                    "run_id": ck["run_id"],
                    "step": ck["step"],
                    "seq": seq,
                }
                cols = ", ".join(record)
                marks = ", ".join("?" for _ in record)
                self.conn.execute(
                    f"INSERT OR REPLACE INTO metrics ({cols}) VALUES ({marks})",
                    tuple(record.values()),
                )
            self.conn.execute(
                "INSERT OR REPLACE INTO sample_values (checkpoint_id, run_id, step, n_samples,"
                " payload) VALUES (?,?,?,?,?)",
                (checkpoint_id, ck["run_id"], ck["step"], n_samples, sample_payload),
            )
            allowed = ("load_s", "forward_s", "distance_s", "total_s", "peak_mem_bytes")
            timing_cols = {k: v for k, v in timings.items() if k in allowed}
            timing_cols["trainer_loss"] = timings.get("trainer_loss")
            sets = ", ".join(f"{k} = ?" for k in timing_cols)
            self.conn.execute(
                f"UPDATE checkpoints SET status = 'done', reason = NULL, done_at = ?, seq = ?,"
                f" {sets} WHERE id = ?",
                (time.time(), seq, *timing_cols.values(), checkpoint_id),
            )
            return [
                i for a in alerts if (i := self._insert_alert(ck["run_id"], a, seq)) is not None
            ]

    def add_alert(self, run_id: int, alert: dict[str, Any]) -> int | None:
        """Record an alert unless its dedupe key was recorded before; returns the new id."""
        with self.transaction() as seq:
            return self._insert_alert(run_id, alert, seq)

    def _insert_alert(self, run_id: int, alert: dict[str, Any], seq: int) -> int | None:
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO alerts (run_id, step, kind, grp, message, evidence,"
            " created_at, dedupe_key, seq) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                alert.get("step"),
                alert["kind"],
                alert.get("group") or "",
                alert["message"],
                json.dumps(alert.get("evidence") or {}, sort_keys=True, default=float),
                time.time(),
                alert["dedupe_key"],
                seq,
            ),
        )
        return int(cur.lastrowid) if cur.rowcount else None

    def undelivered_alerts(self, run_id: int, channel: str) -> list[sqlite3.Row]:
        """Alerts of a run not yet delivered (successfully or not) on a channel, oldest first."""
        return self.conn.execute(
            "SELECT * FROM alerts a WHERE run_id = ? AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.alert_id = a.id AND d.channel = ?) ORDER BY id",
            (run_id, channel),
        ).fetchall()

    def record_delivery(self, alert_id: int, channel: str, ok: bool, error: str = "") -> None:
        """Record one delivery attempt so a restart never re-sends the alert on that channel."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO deliveries (alert_id, channel, ok, error, delivered_at)"
                " VALUES (?,?,?,?,?)",
                (alert_id, channel, int(ok), error, time.time()),
            )

    # Heartbeat ----------------------------------------------------------------------------

    def beat(
        self,
        run_id: int | None,
        run_dir: str,
        device: str,
        started_at: float,
        worker_pid: int | None = None,
        worker_state: str = "",
        stopped: bool = False,
    ) -> None:
        """Write the daemon's heartbeat row (pid, host, device, started, last beat)."""
        with self.transaction() as seq:
            self.conn.execute(
                "INSERT OR REPLACE INTO heartbeat (id, pid, host, device, run_id, run_dir,"
                " started_at, beat_at, worker_pid, worker_state, stopped_at, seq)"
                " VALUES (1,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    os.getpid(),
                    socket.gethostname(),
                    device,
                    run_id,
                    run_dir,
                    started_at,
                    time.time(),
                    worker_pid,
                    worker_state,
                    time.time() if stopped else None,
                    seq,
                ),
            )

    # History for the detectors ------------------------------------------------------------

    def _done_rows(
        self, select: str, table: str, order: str, run_id: int, before_step: int | None
    ) -> list[sqlite3.Row]:
        """Rows of `table` (alias t) that belong to done checkpoints of a run, in `order`."""
        sql = (
            f"SELECT {select} FROM {table} t JOIN checkpoints c ON c.id = t.checkpoint_id"
            " WHERE t.run_id = ? AND c.status = 'done'"
        )
        args: list[Any] = [run_id]
        if before_step is not None:
            sql += " AND t.step < ?"
            args.append(before_step)
        return self.conn.execute(f"{sql} ORDER BY {order}", args).fetchall()

    def metric_history(self, run_id: int, before_step: int | None = None) -> list[sqlite3.Row]:
        """Metrics rows of done checkpoints of a run in step order (optionally before a step)."""
        return self._done_rows("t.*", "metrics", "t.step, t.checkpoint_id", run_id, before_step)

    def sample_history(self, run_id: int, before_step: int | None = None) -> list[sqlite3.Row]:
        """Per-sample payloads of done checkpoints of a run in step order."""
        return self._done_rows("t.step, t.payload", "sample_values", "t.step", run_id, before_step)

    def arrivals(self, run_id: int) -> list[tuple[str, float]]:
        """(path, time it became pending) of each checkpoint of a run, for the overdue rule."""
        rows = self.conn.execute(
            "SELECT path, pending_at FROM checkpoints WHERE run_id = ? AND pending_at IS NOT NULL"
            " AND status != 'superseded' ORDER BY pending_at",
            (run_id,),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]
