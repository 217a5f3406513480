"""Deterministic synthetic stores for the TUI tests, the snapshots and the bench.

Every scenario writes through `grokwatch.store.Store` (the daemon's writer), then pins the
timestamps, pid and host to fixed values so that a frozen clock gives identical pictures on
every machine. Scenarios: `normal`, `alerting`, `failed`, `empty` and `big` (10,000 checkpoints
x 8 groups, bulk-written for the bench).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokwatch import METRIC_DEFINITION
from grokwatch.packing import pack_samples
from grokwatch.store import Store

SCENARIOS = ("normal", "alerting", "failed", "empty", "big")
SEED_T0 = 1_700_000_000.0  # fixed epoch of the first checkpoint
CHECKPOINT_EVERY_S = 600.0
STEP_EVERY = 500
RUN_DIR = "/data/runs/olmoe-tiny"
GROUPS = ("math", "code", "prose", "science", "legal", "medical", "chat", "multilingual")
N_LAYERS = 4
N_EXPERTS = 8
SAMPLES_PER_GROUP = 4
TAU = 0.7
FAILED_REASON = "incomplete: model.safetensors is 3.1 MB of 6.2 MB, unchanged for 60 s"


@dataclass(frozen=True)
class SeedInfo:
    """What a seeded store holds, and the clock value that pictures are taken at."""

    path: Path
    scenario: str
    run_id: int | None
    n_checkpoints: int
    groups: tuple[str, ...]
    now: float

    def clock(self) -> Callable[[], float]:
        """A frozen clock reading `now`."""
        now = self.now
        return lambda: now


def _curves(x: float, group_index: int, scenario: str, name: str) -> dict[str, Any]:
    """Synthetic per-group values at training progress x in [0, 1]."""
    wobble = math.sin(17.0 * x + group_index) * 0.01
    loss = 1.2 + 0.25 * group_index + 3.0 * math.exp(-6.0 * x) + wobble
    peak = 0.35
    distance = 40.0 + 8.0 * group_index + 30.0 * (x / peak) * math.exp(1.0 - x / peak)
    consistency = 0.15 + 0.25 * (1.0 - math.exp(-3.0 * x)) + wobble
    raw_cosine = 0.05 + 0.30 * (1.0 - math.exp(-3.0 * x)) + wobble / 2
    if x == 0.0:
        consistency = -1.8  # the wild early swing the robust scaling must clip
    if scenario == "alerting" and name == "science" and x > 0.7:
        consistency -= 0.4 * (x - 0.7)
        distance += 40.0 * (x - 0.7)
    state = "learning" if x < 0.3 else "memorized"
    if scenario == "alerting" and x > 0.6:
        state = {"math": "grokking", "science": "reversed"}.get(name, state)
    return {
        "loss": loss,
        "pathway_distance": distance,
        "pathway_distance_expert": distance / 3.0,
        "pathway_distance_norm": distance / 120.0,
        "layer_distances": [distance / N_LAYERS * f for f in (1.3, 1.1, 0.9, 0.7)],
        "consistency": consistency,
        "complexity": 1.0 - consistency,
        "raw_cosine": raw_cosine,
        "state": state,
    }


def _metric_rows(x: float, groups: Sequence[str], scenario: str) -> list[dict[str, Any]]:
    rows = []
    for gi, name in enumerate(groups):
        values = _curves(x, gi, scenario, name)
        rows.append(
            {
                "grp": name,
                "n_samples": SAMPLES_PER_GROUP,
                "n_flagged": 1 if x == 0.0 else 0,
                "n_memorized": 0 if x < 0.3 else 1,
                "trainer_loss": None,
                "n_pairs": SAMPLES_PER_GROUP * (SAMPLES_PER_GROUP - 1) // 2,
                "tau": TAU,
                "definition": METRIC_DEFINITION,
                **values,
                "layer_distances": json.dumps(values["layer_distances"]),
                "state_json": json.dumps({"state": values["state"]}),
            }
        )
    overall = dict(rows[0], grp="__all__", n_samples=len(groups) * SAMPLES_PER_GROUP, state=None)
    for key in (
        "loss",
        "pathway_distance",
        "pathway_distance_expert",
        "pathway_distance_norm",
        "consistency",
        "complexity",
        "raw_cosine",
    ):
        overall[key] = sum(r[key] for r in rows) / len(rows)
    layers = [json.loads(r["layer_distances"]) for r in rows]
    overall["layer_distances"] = json.dumps(
        [sum(col) / len(col) for col in zip(*layers, strict=True)]
    )
    overall["trainer_loss"] = overall["loss"] * 0.93 + 0.02 * math.cos(11.0 * x)
    overall["state_json"] = "{}"
    rows.append(overall)
    return rows


def _payload(rng: np.random.Generator, groups: Sequence[str]) -> bytes:
    n = len(groups) * SAMPLES_PER_GROUP
    experts = [
        [
            [int(e) for e in rng.choice(N_EXPERTS, size=int(rng.integers(1, 4)), replace=False)]
            for _ in range(N_LAYERS)
        ]
        for _ in range(n)
    ]
    usage = rng.dirichlet(np.full(N_EXPERTS, 0.6), size=N_LAYERS)
    return pack_samples(
        index=range(n),
        loss=rng.uniform(1.0, 3.0, n),
        consistency=rng.uniform(0.1, 0.5, n),
        raw_cosine=rng.uniform(0.0, 0.4, n),
        experts=experts,
        memorized_since=[-1] * n,
        expert_usage=usage,
    )


def _probe_jsonl(groups: Sequence[str]) -> str:
    lines = [
        json.dumps({"text": f"{name} sample {i}", "group": name})
        for name in groups
        for i in range(SAMPLES_PER_GROUP)
    ]
    return "\n".join(lines) + "\n"


def _timings(i: int) -> dict[str, Any]:
    load_s = 0.8 + 0.01 * (i % 7)
    forward_s = 1.5 + 0.02 * (i % 5)
    distance_s = 0.3
    return {
        "load_s": load_s,
        "forward_s": forward_s,
        "distance_s": distance_s,
        "total_s": load_s + forward_s + distance_s,
        "peak_mem_bytes": 512 * 1024 * 1024,
    }


def seed_store(
    path: str | Path,
    scenario: str = "normal",
    n_checkpoints: int | None = None,
    n_groups: int | None = None,
) -> SeedInfo:
    """Write one synthetic scenario into a new store at `path` and describe it."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; pick one of {', '.join(SCENARIOS)}")
    path = Path(path)
    store = Store(path)
    try:
        if scenario == "empty":
            return SeedInfo(path, scenario, None, 0, (), SEED_T0)
        if scenario == "big":
            return _seed_big(store, n_checkpoints or 10_000, n_groups or 8)
        return _seed_small(store, scenario, n_checkpoints or 24, n_groups or 4)
    finally:
        store.close()


def _ensure_run(store: Store, groups: Sequence[str]) -> int:
    return store.ensure_run(
        run_dir=RUN_DIR,
        probe_hash="seeded0000000000",
        probe_source="bundled",
        probe_jsonl=_probe_jsonl(groups),
        n_probe_samples=len(groups) * SAMPLES_PER_GROUP,
        tau=TAU,
        max_tokens=2048,
        pair_bound=512,
    )


def _seed_small(store: Store, scenario: str, n: int, n_groups: int) -> SeedInfo:
    groups = GROUPS[:n_groups]
    rng = np.random.default_rng(7)
    run_id = _ensure_run(store, groups)
    times: dict[int, tuple[float, float | None]] = {}
    alert_at: list[tuple[str, int]] = []
    for i in range(n):
        step = (i + 1) * STEP_EVERY
        x = i / max(1, n - 1)
        ck = store.record_checkpoint(
            run_id, f"{RUN_DIR}/checkpoint-{step}", step, f"fp{step}", "pending"
        )
        claimed = store.claim_next(run_id)
        assert claimed is not None and claimed.id == ck
        timings = _timings(i)
        seen = SEED_T0 + i * CHECKPOINT_EVERY_S
        alerts = _alerts_for(scenario, i, n, step)
        store.write_result(
            ck,
            _metric_rows(x, groups, scenario),
            _payload(rng, groups),
            len(groups) * SAMPLES_PER_GROUP,
            {**timings, "trainer_loss": None},
            alerts,
        )
        times[ck] = (seen, seen + 10.0 + timings["total_s"])
        alert_at.extend((a["dedupe_key"], ck) for a in alerts)
    last_step = n * STEP_EVERY
    if scenario == "failed":
        step = last_step + STEP_EVERY
        ck = store.record_checkpoint(
            run_id, f"{RUN_DIR}/checkpoint-{step}", step, f"fp{step}", "pending"
        )
        store.claim_next(run_id)
        store.finish_checkpoint(ck, "failed", FAILED_REASON)
        seen = SEED_T0 + n * CHECKPOINT_EVERY_S
        times[ck] = (seen, seen + 70.0)
        key = f"checkpoint_failed:{step}"
        store.add_alert(
            run_id,
            {
                "kind": "checkpoint_failed",
                "step": step,
                "message": f"checkpoint-{step} failed: {FAILED_REASON}",
                "dedupe_key": key,
            },
        )
        alert_at.append((key, ck))
        last_step = step
    # A checkpoint still queued behind the last one, as during a live run.
    step = last_step + STEP_EVERY
    ck = store.record_checkpoint(
        run_id, f"{RUN_DIR}/checkpoint-{step}", step, f"fp{step}", "pending"
    )
    last_done = max(d for _, d in times.values() if d is not None)
    times[ck] = (last_done + 20.0, None)
    now = last_done + 42.0
    store.beat(run_id, RUN_DIR, "cuda:0", SEED_T0 - 60.0, worker_pid=4243, worker_state="idle")
    _pin_times(store, run_id, times, alert_at, now)
    return SeedInfo(store.path, scenario, run_id, len(times), tuple(groups), now)


def _alerts_for(scenario: str, i: int, n: int, step: int) -> list[dict[str, Any]]:
    if scenario != "alerting":
        return []
    out = []
    if i == n // 3:
        out.append(("memorized", "code", "25% of code samples memorized (6 of 24)"))
    if i == (2 * n) // 3:
        out.append(
            ("onset", "math", "math: grokking onset, loss flat while distance keeps falling")
        )
    if i == n - 2:
        out.append(("reversal", "science", "science: consistency reversed after the onset"))
    return [
        {
            "kind": kind,
            "step": step,
            "group": group,
            "message": message,
            "evidence": {"window": 5},
            "dedupe_key": f"{kind}:{group}:{step}",
        }
        for kind, group, message in out
    ]


def _pin_times(
    store: Store,
    run_id: int,
    times: dict[int, tuple[float, float | None]],
    alert_at: list[tuple[str, int]],
    now: float,
) -> None:
    """Overwrite wall-clock stamps with fixed ones, so pictures are the same on every run."""
    with store.transaction():
        conn = store.conn
        conn.execute("UPDATE runs SET created_at = ? WHERE id = ?", (SEED_T0 - 60.0, run_id))
        for ck, (seen, done) in times.items():
            conn.execute(
                "UPDATE checkpoints SET seen_at = ?, pending_at = ?,"
                " started_at = CASE WHEN started_at IS NULL THEN NULL ELSE ? END,"
                " done_at = ? WHERE id = ?",
                (seen, seen + 5.0, seen + 10.0, done, ck),
            )
        for key, ck in alert_at:
            conn.execute(
                "UPDATE alerts SET created_at = (SELECT done_at FROM checkpoints WHERE id = ?)"
                " WHERE dedupe_key = ?",
                (ck, key),
            )
        conn.execute(
            "UPDATE heartbeat SET pid = 4242, host = 'gpu-node-1', started_at = ?, beat_at = ?",
            (SEED_T0 - 60.0, now - 2.0),
        )


def _seed_big(store: Store, n: int, n_groups: int) -> SeedInfo:
    """Bulk-write a long run (one transaction per 1,000 checkpoints) for the bench."""
    groups = GROUPS[:n_groups]
    rng = np.random.default_rng(11)
    blobs = [_payload(rng, groups) for _ in range(8)]
    run_id = _ensure_run(store, groups)
    n_samples = len(groups) * SAMPLES_PER_GROUP
    batch = 1000
    for start in range(0, n, batch):
        with store.transaction() as seq:
            conn = store.conn
            for i in range(start, min(n, start + batch)):
                step = (i + 1) * STEP_EVERY
                seen = SEED_T0 + i * CHECKPOINT_EVERY_S
                t = _timings(i)
                cur = conn.execute(
                    "INSERT INTO checkpoints (run_id, step, path, fingerprint, status, seen_at,"
                    " pending_at, started_at, done_at, load_s, forward_s, distance_s, total_s,"
                    " peak_mem_bytes, attempts, seq) VALUES (?,?,?,?,'done',?,?,?,?,?,?,?,?,?,1,?)",
                    (
                        run_id,
                        step,
                        f"{RUN_DIR}/checkpoint-{step}",
                        f"fp{step}",
                        seen,
                        seen + 5,
                        seen + 10,
                        seen + 10 + t["total_s"],
                        t["load_s"],
                        t["forward_s"],
                        t["distance_s"],
                        t["total_s"],
                        t["peak_mem_bytes"],
                        seq,
                    ),
                )
                ck = int(cur.lastrowid)
                rows = _metric_rows(i / max(1, n - 1), groups, "normal")
                cols = [*rows[0].keys(), "checkpoint_id", "run_id", "step", "seq"]
                conn.executemany(
                    f"INSERT INTO metrics ({', '.join(cols)})"
                    f" VALUES ({', '.join('?' * len(cols))})",
                    [(*r.values(), ck, run_id, step, seq) for r in rows],
                )
                conn.execute(
                    "INSERT INTO sample_values (checkpoint_id, run_id, step, n_samples, payload)"
                    " VALUES (?,?,?,?,?)",
                    (ck, run_id, step, n_samples, blobs[i % len(blobs)]),
                )
    last_done = SEED_T0 + (n - 1) * CHECKPOINT_EVERY_S + 10 + _timings(n - 1)["total_s"]
    now = last_done + 42.0
    store.beat(run_id, RUN_DIR, "cuda:0", SEED_T0 - 60.0)
    _pin_times(store, run_id, {}, [], now)
    return SeedInfo(store.path, "big", run_id, n, tuple(groups), now)


def complete_running(
    store: Store,
    run_id: int,
    groups: Sequence[str],
    x: float = 1.0,
    alerts: Sequence[dict[str, Any]] = (),
) -> int | None:
    """Write the result of the running checkpoint with the lowest step (the worker's commit)."""
    row = store.conn.execute(
        "SELECT id, step FROM checkpoints WHERE run_id = ? AND status = 'running'"
        " ORDER BY step LIMIT 1",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    rng = np.random.default_rng(row["step"])
    store.write_result(
        row["id"],
        _metric_rows(x, groups, "normal"),
        _payload(rng, groups),
        len(groups) * SAMPLES_PER_GROUP,
        _timings(row["step"]),
        alerts,
    )
    return int(row["id"])


def finish_next(
    store: Store,
    run_id: int,
    groups: Sequence[str],
    x: float = 1.0,
    alerts: Sequence[dict[str, Any]] = (),
) -> int | None:
    """Claim the next pending checkpoint and write its result in one go."""
    if store.claim_next(run_id) is None:
        return None
    return complete_running(store, run_id, groups, x, alerts)


def add_pending(store: Store, run_id: int, step: int) -> int:
    """Record a new pending checkpoint (the watcher side of live tests and the bench)."""
    return store.record_checkpoint(
        run_id, f"{RUN_DIR}/checkpoint-{step}", step, f"fp{step}", "pending"
    )
