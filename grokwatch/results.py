"""Plain dataclasses that carry one checkpoint's results between the engine, the store and users.

Nothing here imports torch: these are the numbers, not how they were computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ALL_GROUP = "__all__"
DEFAULT_GROUP = "default"


@dataclass(frozen=True)
class RoutingOutput:
    """What one forward pass over the probe yields, as numpy arrays (the torch/numpy boundary)."""

    losses: np.ndarray  # [N] float64, mean next-token NLL over counted tokens
    n_tokens: np.ndarray  # [N] int64, non-pad tokens per sample
    routing: np.ndarray  # [N, L, K] float64, mean routing distribution per MoE layer
    router_weights: list[np.ndarray]  # L arrays [K, hidden] float64, row k = expert k
    layer_indices: list[int]  # model layer index of each MoE layer, in depth order
    score_kind: str  # "softmax" or e.g. "sigmoid-normalised": how gbar was formed


@dataclass(frozen=True)
class SampleMetrics:
    """Per-sample values of one checkpoint (method.md, 'Per sample')."""

    index: int
    group: str
    loss: float
    pathway: str  # "3,1,5-9,1-..."
    experts: tuple[tuple[int, ...], ...]  # kept expert ids per layer, in pathway order
    consistency: float  # NaN when flagged
    complexity: float  # 1 - consistency; NaN when flagged
    raw_cosine: float
    flagged: bool  # max adjacent cosine <= 0


@dataclass(frozen=True)
class GroupMetrics:
    """Per-group aggregate of one checkpoint (method.md, 'Per group')."""

    group: str
    n_samples: int
    n_flagged: int
    loss: float
    pathway_distance: float
    pathway_distance_expert: float
    pathway_distance_norm: float
    layer_distances: tuple[float, ...]
    consistency: float
    complexity: float
    raw_cosine: float
    n_pairs: int = 0  # pairs evaluated (sampled above the pair bound)


@dataclass
class CheckpointMetrics:
    """All values of one checkpoint, plus what it cost to compute them."""

    samples: list[SampleMetrics]
    groups: list[GroupMetrics]  # one per group, then ALL_GROUP last
    expert_usage: np.ndarray  # [L, K] mean routing weight over all samples (for the heatmap)
    layer_indices: list[int]
    tau: float
    definition: str
    timings_s: dict[str, float] = field(default_factory=dict)  # load, forward, distance
    peak_mem_bytes: int = 0
    model_summary: dict[str, object] = field(default_factory=dict)

    def group(self, name: str) -> GroupMetrics:
        """Return the aggregate of one group (ALL_GROUP for the global row)."""
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)
