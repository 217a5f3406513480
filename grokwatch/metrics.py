"""Pathways, consistency and per-group aggregates of one checkpoint (method.md).

Numpy in, numbers out; no torch here: the input is a RoutingOutput of numpy arrays. The
pairwise edit distances live in grokwatch.distances and are re-exported here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from grokwatch import METRIC_DEFINITION
from grokwatch.distances import (
    LAYER_BOUNDARY,
    expert_sequence,
    group_distances,
    pair_sample,
    probe_seed,
)
from grokwatch.results import (
    ALL_GROUP,
    CheckpointMetrics,
    GroupMetrics,
    RoutingOutput,
    SampleMetrics,
)

__all__ = [
    "LAYER_BOUNDARY",
    "compute_checkpoint_metrics",
    "expert_sequence",
    "group_distances",
    "pair_sample",
    "pathway_experts",
    "pathway_layer",
    "pathway_string",
    "probe_seed",
    "sample_consistency",
]

# Added to the max cosine in the denominator of r_i, as printed in the paper.
CONSISTENCY_EPS = 1e-8


def _check_tau(tau: float) -> None:
    """Reject a tau outside (0, 1): at 1 or above the prefix rule would keep every expert."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie strictly between 0 and 1, got {tau}")


def _kept_prefix(gbar: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (expert order, kept count) along the last axis for the tau prefix rule."""
    # A stable sort of the negated weights is descending with ties broken by smaller id.
    order = np.argsort(-gbar, axis=-1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(gbar, order, axis=-1), axis=-1)
    # Weights are non-negative, so the cumulative sum is monotone and the entries that do not
    # yet exceed tau form a prefix; the crossing expert is one more. The strict ">" is the
    # method's rule; float sums are compared as they are, without a tolerance.
    kept = (cumulative <= tau).sum(axis=-1) + 1
    # Rounding can leave a distribution's total at or just under tau: keep every expert then.
    return order, np.minimum(kept, gbar.shape[-1])


def pathway_layer(gbar: np.ndarray, tau: float) -> tuple[int, ...]:
    """Return the experts of one layer: sorted by weight, shortest prefix whose sum exceeds tau."""
    _check_tau(tau)
    gbar = np.asarray(gbar, dtype=np.float64)
    if gbar.ndim != 1 or gbar.size == 0:
        raise ValueError(f"gbar must be a non-empty 1-D array, got shape {gbar.shape}")
    order, kept = _kept_prefix(gbar, tau)
    return tuple(order[: int(kept)].tolist())


def pathway_experts(routing: np.ndarray, tau: float) -> list[tuple[tuple[int, ...], ...]]:
    """Return the kept experts per layer of every sample of a [N, L, K] routing array."""
    _check_tau(tau)
    routing = np.asarray(routing, dtype=np.float64)
    if routing.ndim != 3:
        raise ValueError(f"routing must be [N, L, K], got shape {routing.shape}")
    order, kept = _kept_prefix(routing, tau)
    order_rows = order.tolist()
    kept_rows = kept.tolist()
    return [
        tuple(
            tuple(layer_order[:layer_kept])
            for layer_order, layer_kept in zip(sample_order, sample_kept, strict=True)
        )
        for sample_order, sample_kept in zip(order_rows, kept_rows, strict=True)
    ]


def pathway_string(experts: Sequence[Sequence[int]]) -> str:
    """Return the pathway string: ids joined by "," within a layer, layers joined by "-"."""
    return "-".join(",".join(str(int(e)) for e in layer) for layer in experts)


def _consistency_batch(
    routing: np.ndarray, router_weights: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (consistency, raw mean cosine, flagged) arrays for a [N, L, K] routing array."""
    routing = np.asarray(routing, dtype=np.float64)
    n_samples, n_layers, n_experts = routing.shape
    if len(router_weights) != n_layers:
        raise ValueError(f"{n_layers} routing layers but {len(router_weights)} router weights")
    for layer, weight in enumerate(router_weights):
        if weight.ndim != 2 or weight.shape[0] != n_experts:
            raise ValueError(
                f"router weight of MoE layer {layer} has shape {weight.shape}, "
                f"expected [{n_experts}, hidden]"
            )
    nan = np.full(n_samples, np.nan)
    if n_layers < 2:
        return nan, nan.copy(), np.ones(n_samples, dtype=bool)

    # e_l = sum_k gbar_l[k] W_l[k]: one [N, K] @ [K, hidden] product per layer.
    embeddings = [
        routing[:, layer, :] @ np.asarray(w, np.float64) for layer, w in enumerate(router_weights)
    ]
    norms = [np.linalg.norm(e, axis=1) for e in embeddings]
    cosines = np.empty((n_samples, n_layers - 1))
    for layer in range(n_layers - 1):
        dot = np.einsum("nh,nh->n", embeddings[layer], embeddings[layer + 1])
        denominator = norms[layer] * norms[layer + 1]
        # A zero embedding has no direction: count it as orthogonal (cosine 0), not NaN, so
        # one dead router cannot turn a whole sample into NaN.
        cosines[:, layer] = np.divide(
            dot, denominator, out=np.zeros(n_samples), where=denominator > 0
        )
    raw = cosines.mean(axis=1)
    top = cosines.max(axis=1)
    flagged = top <= 0.0
    safe_top = np.where(flagged, 1.0, top)
    consistency = np.where(flagged, np.nan, raw / (safe_top + CONSISTENCY_EPS))
    return consistency, raw, flagged


def sample_consistency(
    routing: np.ndarray, router_weights: list[np.ndarray]
) -> tuple[float, float, bool]:
    """Return (consistency r_i, raw mean adjacent cosine, flagged) for one sample's [L, K]."""
    routing = np.asarray(routing, dtype=np.float64)
    if routing.ndim != 2:
        raise ValueError(f"routing of one sample must be [L, K], got shape {routing.shape}")
    consistency, raw, flagged = _consistency_batch(routing[None], router_weights)
    return float(consistency[0]), float(raw[0]), bool(flagged[0])


def _weighted_nanmean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over axis 0 in which NaN entries contribute neither value nor weight."""
    present = ~np.isnan(values)
    shaped = weights.reshape((-1,) + (1,) * (values.ndim - 1)).astype(np.float64)
    weight_sum = np.where(present, shaped, 0.0).sum(axis=0)
    total = np.where(present, values * shaped, 0.0).sum(axis=0)
    return np.divide(total, weight_sum, out=np.full(weight_sum.shape, np.nan), where=weight_sum > 0)


def _mean_or_nan(values: np.ndarray) -> float:
    """Mean of a possibly empty array; NaN (without a warning) when empty."""
    return float(values.mean()) if values.size else math.nan


def _all_row(groups: list[GroupMetrics]) -> GroupMetrics:
    """Return the ALL_GROUP row: group values weighted by group size, NaN-aware per field."""
    weights = np.array([g.n_samples for g in groups], dtype=np.float64)

    def weighted(field: str) -> float:
        values = np.array([getattr(g, field) for g in groups], dtype=np.float64)
        return float(_weighted_nanmean(values, weights))

    n_layers = max((len(g.layer_distances) for g in groups), default=0)
    layer_matrix = np.array(
        [g.layer_distances or (math.nan,) * n_layers for g in groups], dtype=np.float64
    ).reshape(len(groups), n_layers)
    return GroupMetrics(
        group=ALL_GROUP,
        n_samples=int(weights.sum()),
        n_flagged=sum(g.n_flagged for g in groups),
        loss=weighted("loss"),
        pathway_distance=weighted("pathway_distance"),
        pathway_distance_expert=weighted("pathway_distance_expert"),
        pathway_distance_norm=weighted("pathway_distance_norm"),
        layer_distances=tuple(float(v) for v in _weighted_nanmean(layer_matrix, weights)),
        consistency=weighted("consistency"),
        complexity=weighted("complexity"),
        raw_cosine=weighted("raw_cosine"),
        n_pairs=sum(g.n_pairs for g in groups),
    )


def compute_checkpoint_metrics(
    routing: RoutingOutput,
    groups: Sequence[str],
    sample_indices: Sequence[int],
    tau: float = 0.7,
    pair_bound: int = 512,
    probe_hash: str = "",
    workers: int = -1,
    definition: str = METRIC_DEFINITION,
) -> CheckpointMetrics:
    """Return every per-sample and per-group value of one checkpoint, ALL_GROUP row last."""
    _check_tau(tau)
    gbar = np.asarray(routing.routing, dtype=np.float64)
    if gbar.ndim != 3 or gbar.shape[0] == 0:
        raise ValueError(f"routing must be a non-empty [N, L, K] array, got shape {gbar.shape}")
    n_samples = gbar.shape[0]
    losses = np.asarray(routing.losses, dtype=np.float64)
    if len(groups) != n_samples or len(sample_indices) != n_samples or losses.shape != (n_samples,):
        raise ValueError(
            f"{n_samples} routing rows but {len(groups)} groups, {len(sample_indices)} indices "
            f"and {losses.shape[0] if losses.ndim else 0} losses"
        )
    reserved = sorted({g for g in groups if g.startswith("__")})
    if reserved:
        raise ValueError(f"group names starting with '__' are reserved: {reserved}")

    experts = pathway_experts(gbar, tau)
    pathways = [pathway_string(path) for path in experts]
    consistency, raw_cosine, flagged = _consistency_batch(gbar, routing.router_weights)
    complexity = 1.0 - consistency

    samples = [
        SampleMetrics(
            index=int(sample_indices[i]),
            group=groups[i],
            loss=float(losses[i]),
            pathway=pathways[i],
            experts=experts[i],
            consistency=float(consistency[i]),
            complexity=float(complexity[i]),
            raw_cosine=float(raw_cosine[i]),
            flagged=bool(flagged[i]),
        )
        for i in range(n_samples)
    ]

    # dict preserves insertion order: groups come out in order of first appearance.
    members: dict[str, list[int]] = {}
    for i, name in enumerate(groups):
        members.setdefault(name, []).append(i)

    distance_s = 0.0
    group_rows = []
    for name, rows_list in members.items():
        rows = np.array(rows_list, dtype=np.int64)
        counted = rows[~flagged[rows]]
        started_s = time.perf_counter()
        distance, distance_expert, distance_norm, layer_distances, n_pairs = group_distances(
            [pathways[i] for i in rows_list],
            [experts[i] for i in rows_list],
            pair_bound=pair_bound,
            seed=probe_seed(probe_hash, name),
            workers=workers,
        )
        distance_s += time.perf_counter() - started_s
        group_rows.append(
            GroupMetrics(
                group=name,
                n_samples=int(rows.size),
                n_flagged=int(flagged[rows].sum()),
                # A NaN loss is kept visible (it means a broken forward), not averaged away.
                loss=float(losses[rows].mean()),
                pathway_distance=distance,
                pathway_distance_expert=distance_expert,
                pathway_distance_norm=distance_norm,
                layer_distances=layer_distances,
                consistency=_mean_or_nan(consistency[counted]),
                complexity=_mean_or_nan(complexity[counted]),
                raw_cosine=float(raw_cosine[rows].mean()),
                n_pairs=n_pairs,
            )
        )
    group_rows.append(_all_row(group_rows))

    return CheckpointMetrics(
        samples=samples,
        groups=group_rows,
        expert_usage=gbar.mean(axis=0),
        layer_indices=list(routing.layer_indices),
        tau=tau,
        definition=definition,
        timings_s={"distance": distance_s},
    )
