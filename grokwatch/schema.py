"""The SQLite schema, its migrations, and how every process opens the store.

Tables are STRICT and created by numbered migrations recorded in `PRAGMA user_version`, so an
old store upgrades in place and a new column never needs a manual step.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from grokwatch.errors import StoreError

BUSY_TIMEOUT_MS = 30_000
STATUSES = ("seen", "pending", "running", "done", "failed", "vanished", "superseded")
FINAL_STATUSES = ("done", "failed", "vanished", "superseded")
ALERT_KINDS = ("memorized", "onset", "reversal", "overdue", "checkpoint_failed", "worker_down")


def _status_check(column: str, values: Sequence[str]) -> str:
    return f"CHECK ({column} IN ({', '.join(repr(v) for v in values)}))"


# Each migration runs once, in order, inside one transaction; user_version records progress.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    INSERT INTO meta (key, value) VALUES ('seq', '0');
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        run_dir TEXT NOT NULL,
        probe_hash TEXT NOT NULL,
        probe_source TEXT NOT NULL,
        probe_jsonl TEXT NOT NULL,
        n_probe_samples INTEGER NOT NULL,
        tau REAL NOT NULL,
        max_tokens INTEGER NOT NULL,
        pair_bound INTEGER NOT NULL,
        definition TEXT NOT NULL,
        grokwatch_version TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{{}}',
        model_summary TEXT,
        dropped_samples TEXT,
        loss_definition TEXT,
        created_at REAL NOT NULL,
        seq INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        path TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL {_status_check("status", STATUSES)},
        reason TEXT,
        seen_at REAL NOT NULL,
        pending_at REAL,
        started_at REAL,
        done_at REAL,
        load_s REAL,
        forward_s REAL,
        distance_s REAL,
        total_s REAL,
        peak_mem_bytes INTEGER,
        trainer_loss REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL,
        UNIQUE (run_id, path, fingerprint)
    ) STRICT;
    CREATE INDEX checkpoints_queue ON checkpoints (run_id, status, step);
    CREATE INDEX checkpoints_seq ON checkpoints (seq);
    CREATE TABLE metrics (
        checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id),
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        grp TEXT NOT NULL,
        n_samples INTEGER NOT NULL,
        n_flagged INTEGER NOT NULL,
        n_memorized INTEGER,
        loss REAL,
        trainer_loss REAL,
        pathway_distance REAL,
        pathway_distance_expert REAL,
        pathway_distance_norm REAL,
        layer_distances TEXT NOT NULL,
        consistency REAL,
        complexity REAL,
        raw_cosine REAL,
        state TEXT,
        state_json TEXT,
        n_pairs INTEGER NOT NULL DEFAULT 0,
        tau REAL NOT NULL,
        definition TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (checkpoint_id, grp)
    ) STRICT;
    CREATE INDEX metrics_run_step ON metrics (run_id, step);
    CREATE INDEX metrics_seq ON metrics (seq);
    CREATE TABLE sample_values (
        checkpoint_id INTEGER PRIMARY KEY REFERENCES checkpoints(id),
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        n_samples INTEGER NOT NULL,
        payload BLOB NOT NULL
    ) STRICT;
    CREATE INDEX sample_values_run ON sample_values (run_id, step);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER,
        kind TEXT NOT NULL {_status_check("kind", ALERT_KINDS)},
        grp TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL,
        evidence TEXT NOT NULL DEFAULT '{{}}',
        created_at REAL NOT NULL,
        dedupe_key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        UNIQUE (run_id, dedupe_key)
    ) STRICT;
    CREATE INDEX alerts_seq ON alerts (seq);
    CREATE TABLE deliveries (
        alert_id INTEGER NOT NULL REFERENCES alerts(id),
        channel TEXT NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        delivered_at REAL NOT NULL,
        PRIMARY KEY (alert_id, channel)
    ) STRICT;
    CREATE TABLE heartbeat (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        device TEXT NOT NULL,
        run_id INTEGER,
        run_dir TEXT NOT NULL,
        started_at REAL NOT NULL,
        beat_at REAL NOT NULL,
        worker_pid INTEGER,
        worker_state TEXT NOT NULL DEFAULT '',
        stopped_at REAL,
        seq INTEGER NOT NULL
    ) STRICT;
    """,
)


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """Open a connection with WAL, a busy timeout and foreign keys; read-only for readers."""
    path = Path(path)
    if readonly:
        if not path.is_file():
            raise StoreError(f"{path}: store not found; check the path or run grokwatch on the run")
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if readonly:
        try:
            conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"{path}: not a grokwatch store ({exc}); pass the .db a daemon wrote"
            ) from None
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations in order (idempotent) and return the schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have migrated meanwhile.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                conn.execute("ROLLBACK")
                continue
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return conn.execute("PRAGMA user_version").fetchone()[0]
