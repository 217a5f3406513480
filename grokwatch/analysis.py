"""Per-checkpoint analysis: memorization, group states and alerts, decided causally.

Runs in the worker right before a checkpoint's result is written, so metrics, states and
alerts land in the same transaction. Everything it decides is a pure function of the stored
history up to this checkpoint (onset.py, memorization.py); the cache only saves re-reading it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grokwatch.alerts import (
    checkpoint_failed_alert,
    state_change_alerts,
)
from grokwatch.alerts import (
    worker_down_alert as _worker_down_draft,
)
from grokwatch.memorization import (
    EpsState,
    eps_per_sample,
    memorized_counts,
    memorized_since,
    update_eps,
)
from grokwatch.onset import DetectorConfig, GroupHistory, GroupState, plateaued, step_state
from grokwatch.packing import pack_samples, unpack_samples
from grokwatch.results import ALL_GROUP, CheckpointMetrics
from grokwatch.store import Store

HISTORY_FIELDS = ("loss", "pathway_distance", "consistency", "raw_cosine", "n_memorized")


@dataclass
class Analysis:
    """What one checkpoint adds to the store besides its timings."""

    metric_rows: list[dict[str, Any]]
    sample_payload: bytes
    alerts: list[dict[str, Any]]
    states: dict[str, GroupState] = field(default_factory=dict)


def failure_alert(
    step: int | None, path: str, reason: str | None, checkpoint_id: int | None = None
) -> dict[str, Any]:
    """A checkpoint_failed alert as the store takes it (one per checkpoint row)."""
    # Keyed by row id: a rewritten checkpoint at the same path and step that fails again is a
    # new failure, and must not be swallowed by the first one's dedupe key.
    return checkpoint_failed_alert(step, path, reason or "unknown reason", checkpoint_id).as_dict()


def worker_down_alert(reason: str, since_s: float) -> dict[str, Any]:
    """A worker_down alert as the store takes it."""
    return _worker_down_draft(reason, since_s).as_dict()


class RunAnalyser:
    """Keeps one run's loss matrix and group histories in memory between checkpoints."""

    def __init__(
        self,
        store: Store,
        run_id: int,
        n_probe_samples: int,
        fixed_eps: float | None = None,
        config: DetectorConfig | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.n_probe = n_probe_samples
        self.fixed_eps = fixed_eps
        self.config = config or DetectorConfig()
        self._steps: list[int] | None = None
        self._losses: list[np.ndarray] = []
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def _load(self, before_step: int) -> None:
        """Read the run's stored history once (restart: the worker starts with an empty cache)."""
        self._steps, self._losses, self._rows = [], [], {}
        for row in self.store.sample_history(self.run_id, before_step=before_step):
            arrays = unpack_samples(row["payload"])
            self._steps.append(int(row["step"]))
            self._losses.append(self._full(arrays.index, arrays.loss))
        for row in self.store.metric_history(self.run_id, before_step=before_step):
            self._rows.setdefault(row["grp"], []).append(dict(row))

    def _full(self, index: np.ndarray, loss: np.ndarray) -> np.ndarray:
        # Rows are per probe sample, so a sample dropped at tokenization stays NaN.
        full = np.full(self.n_probe, np.nan)
        full[np.asarray(index, dtype=np.int64)] = loss
        return full

    def analyse(
        self, step: int, metrics: CheckpointMetrics, trainer_loss: float | None
    ) -> Analysis:
        """Memorization, states and alerts for the checkpoint at `step`, given all before it."""
        if self._steps is None or (self._steps and self._steps[-1] >= step):
            self._load(step)
        assert self._steps is not None
        index = np.array([s.index for s in metrics.samples], dtype=np.int64)
        losses_now = self._full(index, np.array([s.loss for s in metrics.samples]))
        losses = np.vstack([*self._losses, losses_now])
        steps = [*self._steps, step]
        sample_groups = [s.group for s in metrics.samples]

        # Memorization: eps per group, then t* per sample over the whole history.
        eps_by_group: dict[str, float] = {}
        eps_states: dict[str, EpsState] = {}
        for g in metrics.groups:
            if g.group == ALL_GROUP:
                continue
            members = index[[sg == g.group for sg in sample_groups]]
            prev_eps = self._prev_json(g.group).get("eps")
            group_rows = [*self._rows.get(g.group, []), {"step": step, "loss": g.loss}]
            flat = plateaued(
                np.array([r["step"] for r in group_rows]),
                np.array([_nan(r["loss"]) for r in group_rows]),
                self.config,
            )
            state = update_eps(
                EpsState.from_json(json.dumps(prev_eps)) if prev_eps else None,
                losses[:, members],
                step,
                flat,
                fixed_eps=self.fixed_eps,
            )
            eps_states[g.group], eps_by_group[g.group] = state, state.eps
        since = memorized_since(
            losses[:, index], steps, eps_per_sample(sample_groups, eps_by_group)
        )
        counts = memorized_counts(since, sample_groups)
        counts[ALL_GROUP] = int(sum(counts.values()))

        rows: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        states: dict[str, GroupState] = {}
        for g in metrics.groups:
            row = {
                "grp": g.group,
                "n_samples": g.n_samples,
                "n_flagged": g.n_flagged,
                "n_memorized": counts.get(g.group, 0),
                "loss": _none(g.loss),
                "trainer_loss": trainer_loss if g.group == ALL_GROUP else None,
                "pathway_distance": _none(g.pathway_distance),
                "pathway_distance_expert": _none(g.pathway_distance_expert),
                "pathway_distance_norm": _none(g.pathway_distance_norm),
                "layer_distances": json.dumps([_none(v) for v in g.layer_distances]),
                "consistency": _none(g.consistency),
                "complexity": _none(g.complexity),
                "raw_cosine": _none(g.raw_cosine),
                "n_pairs": g.n_pairs,
                "tau": metrics.tau,
                "definition": metrics.definition,
                "step": step,
            }
            history = GroupHistory.from_rows([*self._rows.get(g.group, []), row])
            prev_json = self._prev_json(g.group).get("state")
            prev = GroupState.from_json(json.dumps(prev_json)) if prev_json else None
            state = step_state(prev, history, self.config)
            states[g.group] = state
            alerts += [a.as_dict() for a in state_change_alerts(g.group, prev, state, step)]
            row["state"] = state.state
            stored = {"state": json.loads(state.to_json())}
            if g.group in eps_states:
                stored["eps"] = json.loads(eps_states[g.group].to_json())
            row["state_json"] = json.dumps(stored, sort_keys=True)
            rows.append(row)

        payload = pack_samples(
            index,
            [s.loss for s in metrics.samples],
            [s.consistency for s in metrics.samples],
            [s.raw_cosine for s in metrics.samples],
            [s.experts for s in metrics.samples],
            since,
            metrics.expert_usage,
        )
        # Commit to the cache only what the store is about to hold.
        self._steps.append(step)
        self._losses.append(losses_now)
        for row in rows:
            self._rows.setdefault(row["grp"], []).append(row)
        return Analysis(
            metric_rows=[{k: v for k, v in r.items() if k != "step"} for r in rows],
            sample_payload=payload,
            alerts=alerts,
            states=states,
        )

    def forget_last(self, step: int) -> None:
        """Drop a checkpoint from the cache whose write was rejected (superseded meanwhile)."""
        if self._steps and self._steps[-1] == step:
            self._steps.pop()
            self._losses.pop()
            for rows in self._rows.values():
                if rows and rows[-1]["step"] == step:
                    rows.pop()

    def _prev_json(self, group: str) -> dict[str, Any]:
        rows = self._rows.get(group)
        if not rows or not rows[-1].get("state_json"):
            return {}
        return json.loads(rows[-1]["state_json"])


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
