"""Online memorization (method.md, "Memorization and grokking"): numpy in, numbers out.

The paper marks sample i memorized since the earliest checkpoint t* after which its loss stays
at or below eps and within delta of its final loss. A live monitor has no final checkpoint, so
the latest one stands in for it and t* is recomputed at every checkpoint: a sample's t* can move
later (its loss moved again) or vanish (it rose above eps). A sample counts only once the
condition has held over at least `min_consecutive` checkpoints, else the first checkpoint would
"memorize" a quarter of every group by construction.

eps is per group: the quantile of the group's losses that makes ~25% of its samples memorized
(`default_eps`), frozen once the group's loss plateaus (`update_eps`), or fixed by the user.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_DELTA = 0.05
DEFAULT_MIN_CONSECUTIVE = 3
DEFAULT_TARGET_FRACTION = 0.25


def _check_losses(losses: np.ndarray, steps: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"losses must be [checkpoints, samples], got shape {values.shape}")
    step_array = np.asarray(steps, dtype=np.int64)
    if step_array.shape != (values.shape[0],):
        raise ValueError(f"{len(step_array)} steps for {values.shape[0]} checkpoints of losses")
    if step_array.size > 1 and np.any(np.diff(step_array) <= 0):
        raise ValueError("steps must be strictly increasing (checkpoints in step order)")
    return values, step_array


def _trailing_run(condition: np.ndarray) -> np.ndarray:
    """Length of the run of True at the end of each column of a [T, N] boolean array."""
    return np.cumprod(condition[::-1], axis=0).sum(axis=0).astype(np.int64)


def memorized_since(
    losses: np.ndarray,
    steps: Sequence[int],
    eps: np.ndarray | float,
    delta: float = DEFAULT_DELTA,
    min_consecutive: int = DEFAULT_MIN_CONSECUTIVE,
) -> np.ndarray:
    """Return per sample the step since which it counts as memorized, or -1.

    losses is [T, N] (checkpoints in step order x samples; the last row is the latest, which
    stands in for "final"); eps is a scalar or one value per sample ([N], e.g. its group's eps).
    t* is the earliest checkpoint such that at every checkpoint from t* to the latest the loss is
    <= eps and within delta of the latest loss, and that run spans >= min_consecutive
    checkpoints. A NaN loss breaks the run.
    """
    if min_consecutive < 1:
        raise ValueError("min_consecutive must be >= 1")
    values, step_array = _check_losses(losses, steps)
    n_checkpoints, n_samples = values.shape
    if n_checkpoints == 0:
        return np.full(n_samples, -1, dtype=np.int64)
    eps_array = np.broadcast_to(np.asarray(eps, dtype=np.float64), (n_samples,))
    latest = values[-1]
    with np.errstate(invalid="ignore"):
        condition = (values <= eps_array[None, :]) & (np.abs(values - latest[None, :]) <= delta)
    run = _trailing_run(condition)
    since = np.full(n_samples, -1, dtype=np.int64)
    counted = run >= min_consecutive
    since[counted] = step_array[n_checkpoints - run[counted]]
    return since


def memorization_thresholds(
    losses_group: np.ndarray,
    delta: float = DEFAULT_DELTA,
    min_consecutive: int = DEFAULT_MIN_CONSECUTIVE,
) -> np.ndarray:
    """Return per sample the smallest eps at which it would count as memorized now (inf: none).

    A sample can count only if its last `min_consecutive` losses are finite and within delta of
    the latest one; then the smallest eps that admits it is the largest of those losses.
    """
    values = np.asarray(losses_group, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n_samples = values.shape[1]
    if values.shape[0] < min_consecutive:
        return np.full(n_samples, np.inf)
    tail = values[-min_consecutive:]
    with np.errstate(invalid="ignore"):
        stable = np.all(np.abs(tail - tail[-1][None, :]) <= delta, axis=0)
    return np.where(stable, tail.max(axis=0), np.inf)


def default_eps(
    losses_group: np.ndarray,
    target_fraction: float = DEFAULT_TARGET_FRACTION,
    delta: float = DEFAULT_DELTA,
    min_consecutive: int = DEFAULT_MIN_CONSECUTIVE,
) -> float:
    """Return the group's loss quantile that makes ~target_fraction of its samples memorized.

    losses_group is [T, n] (this group's samples, checkpoints in step order). The result is the
    target quantile of `memorization_thresholds`, so that `memorized_since` with this eps counts
    ceil(target_fraction * n) samples (more on ties). Where fewer samples are stable than that
    (early on, while losses still move by more than delta), it falls back to the target
    quantile of the latest losses: no eps could reach the target then.
    """
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError("target_fraction must be in (0, 1]")
    values = np.asarray(losses_group, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.size == 0:
        return math.nan
    n_samples = values.shape[1]
    thresholds = np.sort(memorization_thresholds(values, delta, min_consecutive))
    wanted = max(1, math.ceil(target_fraction * n_samples - 1e-9))
    if math.isfinite(thresholds[wanted - 1]):
        return float(thresholds[wanted - 1])
    latest = values[-1][np.isfinite(values[-1])]
    if latest.size == 0:
        return math.nan
    return float(np.quantile(latest, target_fraction, method="inverted_cdf"))


@dataclass(frozen=True)
class EpsState:
    """A group's eps and whether it is frozen; the caller stores it with the group's row.

    Store `to_json()` with each checkpoint's group row (e.g. under "eps" in the metrics row's
    state_json) and pass the latest one back after a restart; since it is a pure function of
    the stored losses and plateau flags, replaying the history from the start gives the same.
    """

    eps: float
    frozen: bool
    source: str  # "quantile" (default_eps) or "fixed" (set by the user)
    frozen_step: int | None = None

    def to_json(self) -> str:
        """Serialise for storage (NaN as null)."""
        record = asdict(self)
        record["eps"] = None if not math.isfinite(self.eps) else self.eps
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpsState:
        """Read back what to_json wrote."""
        record = json.loads(text)
        eps = math.nan if record.get("eps") is None else float(record["eps"])
        return cls(
            eps=eps,
            frozen=bool(record["frozen"]),
            source=str(record["source"]),
            frozen_step=record.get("frozen_step"),
        )


def update_eps(
    prev: EpsState | None,
    losses_group: np.ndarray,
    step: int,
    plateaued: bool,
    fixed_eps: float | None = None,
    target_fraction: float = DEFAULT_TARGET_FRACTION,
    delta: float = DEFAULT_DELTA,
    min_consecutive: int = DEFAULT_MIN_CONSECUTIVE,
) -> EpsState:
    """Return the group's eps after the checkpoint at `step`.

    A user-fixed eps always wins. Otherwise eps follows `default_eps` until the group's loss
    has plateaued (`plateaued`, from onset.plateaued on the group's loss), then stays frozen at
    the value computed on that checkpoint, so the memorized count stops chasing the target.
    """
    if fixed_eps is not None:
        return EpsState(eps=float(fixed_eps), frozen=True, source="fixed")
    if prev is not None and prev.frozen and prev.source == "quantile":
        return prev
    eps = default_eps(losses_group, target_fraction, delta, min_consecutive)
    frozen = bool(plateaued) and math.isfinite(eps)
    return EpsState(
        eps=eps, frozen=frozen, source="quantile", frozen_step=int(step) if frozen else None
    )


def eps_per_sample(groups: Sequence[str], eps_by_group: Mapping[str, float]) -> np.ndarray:
    """Return [N] eps values, each sample taking its group's eps (NaN: group has none yet)."""
    return np.array([eps_by_group.get(g, math.nan) for g in groups], dtype=np.float64)


def memorized_counts(since: np.ndarray, groups: Sequence[str]) -> dict[str, int]:
    """Return the number of memorized samples (since >= 0) per group."""
    counts: dict[str, int] = {}
    for group, value in zip(groups, np.asarray(since), strict=True):
        counts[group] = counts.get(group, 0) + int(value >= 0)
    return counts
