"""Read-only access to a store, for the TUI, `status` and `export`.

A reader never writes: it opens the database read-only and asks only for rows stamped with a
change counter above the one it saw last, so polling costs O(changes), not O(history).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokwatch.packing import SampleArrays, unpack_samples
from grokwatch.schema import connect

# A heartbeat older than this means the daemon is gone (it beats every few seconds).
STALE_AFTER_S = 30.0


@dataclass(frozen=True)
class Heartbeat:
    """The daemon's last heartbeat."""

    pid: int
    host: str
    device: str
    run_id: int | None
    run_dir: str
    started_at: float
    beat_at: float
    worker_pid: int | None
    worker_state: str
    stopped_at: float | None

    def alive(self, now: float | None = None) -> bool:
        """Whether the daemon beat recently and did not stop."""
        now = time.time() if now is None else now
        return self.stopped_at is None and now - self.beat_at < STALE_AFTER_S


def _dicts(rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]


class Reader:
    """A read-only view of one store."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = connect(self.path, readonly=True)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def seq(self) -> int:
        """The store's change counter: it grows with every committed write."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(row[0]) if row else 0

    def runs(self) -> list[dict[str, Any]]:
        """All runs, oldest first (without the probe texts)."""
        return _dicts(
            self.conn.execute(
                "SELECT id, run_dir, probe_hash, probe_source, n_probe_samples, tau, max_tokens,"
                " pair_bound, definition, grokwatch_version, model_summary, dropped_samples,"
                " loss_definition, created_at FROM runs ORDER BY id"
            ).fetchall()
        )

    def run(self, run_id: int | None = None) -> dict[str, Any] | None:
        """One run (the latest when run_id is None)."""
        sql = "SELECT * FROM runs " + ("WHERE id = ?" if run_id is not None else "")
        args = (run_id,) if run_id is not None else ()
        row = self.conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return dict(row) if row else None

    def latest_run_id(self) -> int | None:
        """The newest run's id, or None for an empty store."""
        row = self.conn.execute("SELECT MAX(id) FROM runs").fetchone()
        return row[0] if row else None

    def heartbeat(self) -> Heartbeat | None:
        """The daemon's heartbeat, if any daemon ever wrote one."""
        row = self.conn.execute("SELECT * FROM heartbeat WHERE id = 1").fetchone()
        if row is None:
            return None
        fields = {k: row[k] for k in Heartbeat.__dataclass_fields__}
        return Heartbeat(**fields)

    def checkpoints(self, run_id: int, since_seq: int = 0) -> list[dict[str, Any]]:
        """Checkpoint rows changed after `since_seq`, in step order."""
        return _dicts(
            self.conn.execute(
                "SELECT * FROM checkpoints WHERE run_id = ? AND seq > ? ORDER BY step, id",
                (run_id, since_seq),
            ).fetchall()
        )

    def metrics(
        self, run_id: int, since_seq: int = 0, group: str | None = None
    ) -> list[dict[str, Any]]:
        """Metric rows of done checkpoints written after `since_seq`, in step order."""
        sql = (
            "SELECT m.* FROM metrics m JOIN checkpoints c ON c.id = m.checkpoint_id"
            " WHERE m.run_id = ? AND m.seq > ? AND c.status = 'done'"
        )
        args: list[Any] = [run_id, since_seq]
        if group is not None:
            sql += " AND m.grp = ?"
            args.append(group)
        rows = _dicts(self.conn.execute(sql + " ORDER BY m.step, m.grp", args).fetchall())
        for r in rows:
            r["layer_distances"] = json.loads(r["layer_distances"] or "[]")
        return rows

    def groups(self, run_id: int) -> list[str]:
        """Group names of a run, `__all__` last."""
        rows = self.conn.execute(
            "SELECT grp FROM metrics WHERE run_id = ? GROUP BY grp ORDER BY MIN(rowid)",
            (run_id,),
        ).fetchall()
        names = [r[0] for r in rows if r[0] != "__all__"]
        return [*names, "__all__"] if rows else []

    def alerts(self, run_id: int, since_seq: int = 0) -> list[dict[str, Any]]:
        """Alerts written after `since_seq`, oldest first."""
        rows = _dicts(
            self.conn.execute(
                "SELECT * FROM alerts WHERE run_id = ? AND seq > ? ORDER BY id",
                (run_id, since_seq),
            ).fetchall()
        )
        for r in rows:
            r["evidence"] = json.loads(r["evidence"] or "{}")
        return rows

    def sample_arrays(self, checkpoint_id: int) -> SampleArrays | None:
        """Per-sample values of one checkpoint, or None if it has none."""
        row = self.conn.execute(
            "SELECT payload FROM sample_values WHERE checkpoint_id = ?", (checkpoint_id,)
        ).fetchone()
        return unpack_samples(row[0]) if row else None

    def sample_rows(self, run_id: int) -> list[sqlite3.Row]:
        """(checkpoint_id, step, payload) of every done checkpoint of a run, in step order."""
        return self.conn.execute(
            "SELECT s.checkpoint_id, s.step, s.payload FROM sample_values s JOIN checkpoints c"
            " ON c.id = s.checkpoint_id WHERE s.run_id = ? AND c.status = 'done' ORDER BY s.step",
            (run_id,),
        ).fetchall()

    def queue_counts(self, run_id: int) -> dict[str, int]:
        """Number of checkpoints by status."""
        rows = self.conn.execute(
            "SELECT status, COUNT(*) FROM checkpoints WHERE run_id = ? GROUP BY status",
            (run_id,),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def probe_texts(self, run_id: int) -> list[dict[str, Any]]:
        """The probe samples stored with a run, in order."""
        row = self.conn.execute("SELECT probe_jsonl FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return []
        return [json.loads(line) for line in row[0].splitlines() if line.strip()]

    def store_bytes(self) -> int:
        """Size of the database file plus its WAL."""
        wal = Path(f"{self.path}-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
