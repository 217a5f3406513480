"""Immutable view snapshots: everything the screens draw, frozen at one poll.

Widgets render these and nothing else; only `grokwatch.ui.model` builds them from the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from grokwatch.reader import Heartbeat

ALL = "__all__"
# Metric columns kept per series; names match the metrics table.
SERIES_METRICS = (
    "loss",
    "trainer_loss",
    "pathway_distance",
    "complexity",
    "consistency",
    "raw_cosine",
)
QUEUED_STATUSES = ("seen", "pending", "running")


@dataclass(frozen=True)
class PathwayMetric:
    """One way to plot the single-pathway metric, with the direction that means generalizing."""

    key: str
    label: str
    good: str  # "down" or "up"


PATHWAY_METRICS = (
    PathwayMetric("complexity", "complexity", "down"),
    PathwayMetric("consistency", "consistency", "up"),
    PathwayMetric("raw_cosine", "raw cosine", "up"),
)


@dataclass(frozen=True)
class SeriesSet:
    """Per-checkpoint values of one group in step order (NaN where a value is missing)."""

    steps: tuple[int, ...] = ()
    columns: tuple[tuple[float, ...], ...] = tuple(() for _ in SERIES_METRICS)

    def values(self, metric: str) -> tuple[float, ...]:
        """The values of one metric (see SERIES_METRICS)."""
        return self.columns[SERIES_METRICS.index(metric)]

    def latest(self, metric: str) -> float | None:
        """The newest finite value of a metric, or None."""
        for v in reversed(self.values(metric)):
            if math.isfinite(v):
                return v
        return None

    def delta(self, metric: str) -> float | None:
        """Change of a metric between the two newest checkpoints that have it."""
        seen: list[float] = []
        for v in reversed(self.values(metric)):
            if math.isfinite(v):
                seen.append(v)
                if len(seen) == 2:
                    return seen[0] - seen[1]
        return None

    def has(self, metric: str) -> bool:
        """Whether any value of a metric is present."""
        return any(math.isfinite(v) for v in self.values(metric))


@dataclass(frozen=True)
class GroupLane:
    """One data group: size, state and a short history."""

    name: str
    n_samples: int
    n_memorized: int | None
    n_flagged: int
    state: str | None
    series: SeriesSet


@dataclass(frozen=True)
class CheckpointView:
    """One checkpoint row with its global (`__all__`) metrics."""

    id: int
    step: int
    path: str
    status: str
    reason: str | None
    seen_at: float
    done_at: float | None
    total_s: float | None
    trainer_loss: float | None = None
    loss: float | None = None
    pathway_distance: float | None = None
    complexity: float | None = None
    consistency: float | None = None
    raw_cosine: float | None = None

    def metric(self, key: str) -> float | None:
        """A metric value by column name."""
        return getattr(self, key)


@dataclass(frozen=True)
class AlertView:
    """One stored alert."""

    id: int
    step: int | None
    kind: str
    group: str
    message: str
    created_at: float


@dataclass(frozen=True)
class Snapshot:
    """Everything the screens draw, frozen at one poll."""

    store_path: str
    state: str  # "missing" (no store yet), "empty" (no run yet) or "ready"
    seq: int = 0
    run_id: int | None = None
    run_dir: str = ""
    probe_source: str = ""
    n_runs: int = 0
    heartbeat: Heartbeat | None = None
    queue: tuple[tuple[str, int], ...] = ()
    overall: SeriesSet = field(default_factory=SeriesSet)
    groups: tuple[GroupLane, ...] = ()
    checkpoints: tuple[CheckpointView, ...] = ()  # newest step first, bounded
    alerts: tuple[AlertView, ...] = ()  # newest first, bounded
    new_alerts: tuple[AlertView, ...] = ()  # arrived since the previous snapshot
    last_done_at: float | None = None
    error: str = ""

    def count(self, status: str) -> int:
        """Number of checkpoints of the run with a status."""
        return dict(self.queue).get(status, 0)

    @property
    def queue_depth(self) -> int:
        """Checkpoints seen, pending or running."""
        return sum(self.count(s) for s in QUEUED_STATUSES)

    @property
    def n_checkpoints(self) -> int:
        """All checkpoint rows of the run."""
        return sum(n for _, n in self.queue)

    @property
    def consistency_constant(self) -> bool:
        """Consistency is identically 1 (two MoE layers): raw cosine is the one to read."""
        values = [v for v in self.overall.values("consistency") if math.isfinite(v)]
        return len(values) >= 2 and all(abs(v - 1.0) < 1e-9 for v in values)


@dataclass(frozen=True)
class SamplePathway:
    """One probe sample's pathway at a checkpoint."""

    index: int
    group: str
    loss: float
    consistency: float
    pathway: str


@dataclass(frozen=True)
class CheckpointDetail:
    """What the detail screen shows for one checkpoint."""

    checkpoint: dict[str, Any]
    layer_distances: tuple[tuple[str, tuple[float, ...]], ...]  # (group, per layer), __all__ first
    expert_usage: tuple[tuple[float, ...], ...]  # [L][K]
    samples: tuple[SamplePathway, ...]
    n_samples: int


def filter_groups(lanes: Iterable[GroupLane], text: str) -> tuple[GroupLane, ...]:
    """Lanes whose name or state contains the filter text (case-insensitive)."""
    needle = text.strip().lower()
    if not needle:
        return tuple(lanes)
    return tuple(
        lane for lane in lanes if needle in lane.name.lower() or needle in (lane.state or "")
    )
