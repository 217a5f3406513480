"""Online memorization (method.md, "Memorization and grokking") on constructed loss tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grokwatch.memorization import (
    EpsState,
    default_eps,
    eps_per_sample,
    memorization_thresholds,
    memorized_counts,
    memorized_since,
    update_eps,
)

STEPS = [100, 200, 300, 400, 500]


def test_memorized_since_hand_example() -> None:
    losses = np.array(
        [
            # s0: low from step 200   s1: never low   s2: low but drifting   s3: low, NaN at 300
            [2.00, 3.0, 0.90, 0.50],
            [0.50, 3.0, 0.80, 0.50],
            [0.48, 3.0, 0.70, math.nan],
            [0.47, 3.0, 0.60, 0.50],
            [0.46, 3.0, 0.50, 0.50],
        ]
    )
    since = memorized_since(losses, STEPS, eps=1.0, delta=0.05, min_consecutive=3)
    # s2 stays within 0.05 of its latest loss only at 500 (one checkpoint: too short);
    # s3's NaN breaks its run, which restarts at 400 (two checkpoints: too short).
    assert since.tolist() == [200, -1, -1, -1]
    assert since.dtype == np.int64


def test_min_consecutive_counts_checkpoints_in_the_run() -> None:
    losses = np.array([[0.5], [0.5], [0.5]])
    assert memorized_since(losses, [1, 2, 3], eps=1.0, min_consecutive=3).tolist() == [1]
    assert memorized_since(losses[:2], [1, 2], eps=1.0, min_consecutive=3).tolist() == [-1]
    assert memorized_since(losses[:2], [1, 2], eps=1.0, min_consecutive=2).tolist() == [1]
    assert memorized_since(losses[:1], [1], eps=1.0, min_consecutive=1).tolist() == [1]


def test_t_star_moves_later_or_vanishes_as_checkpoints_arrive() -> None:
    history = [0.50, 0.50, 0.50, 0.50, 0.30, 0.30, 0.30, 1.50]
    steps = list(range(1, len(history) + 1))
    seen = []
    for end in range(1, len(history) + 1):
        table = np.array(history[:end])[:, None]
        seen.append(int(memorized_since(table, steps[:end], eps=1.0, delta=0.05)[0]))
    # Memorized since step 1 once three checkpoints agree; the drop at step 5 moves t* later
    # (only counted again after three checkpoints at the new level); the rise above eps at
    # step 8 makes it vanish.
    assert seen == [-1, -1, 1, 1, -1, -1, 5, -1]


def test_eps_per_sample_array_and_counts_by_group() -> None:
    losses = np.array([[0.5, 0.5, 2.0], [0.5, 0.5, 2.0], [0.5, 0.5, 2.0]])
    groups = ["math", "code", "code"]
    eps = eps_per_sample(groups, {"math": 1.0, "code": 0.4})
    since = memorized_since(losses, [10, 20, 30], eps)
    assert since.tolist() == [10, -1, -1]
    assert memorized_counts(since, groups) == {"math": 1, "code": 0}
    # A group without an eps yet memorizes nothing.
    assert np.isnan(eps_per_sample(["prose"], {})[0])
    assert memorized_since(losses[:, :1], [10, 20, 30], eps_per_sample(["prose"], {}))[0] == -1


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        memorized_since(np.zeros((2, 1)), [2, 1], eps=1.0)
    with pytest.raises(ValueError, match="steps"):
        memorized_since(np.zeros((2, 1)), [1, 2, 3], eps=1.0)
    with pytest.raises(ValueError, match="min_consecutive"):
        memorized_since(np.zeros((2, 1)), [1, 2], eps=1.0, min_consecutive=0)


def test_default_eps_makes_a_quarter_memorized() -> None:
    rng = np.random.default_rng(0)
    final = np.linspace(0.2, 3.0, 40)
    # Losses converged (tiny jitter) for every sample: the quantile decides.
    losses = final[None, :] + 0.01 * rng.standard_normal((6, 40))
    eps = default_eps(losses, target_fraction=0.25)
    since = memorized_since(losses, range(1, 7), eps)
    assert (since >= 0).sum() == 10
    assert memorization_thresholds(losses)[0] <= eps < memorization_thresholds(losses)[-1]


def test_default_eps_falls_back_while_losses_still_move() -> None:
    # Every loss drops by 0.5 per checkpoint: nobody is stable, no eps reaches 25%.
    losses = np.array([[4.0, 5.0, 6.0, 7.0], [3.5, 4.5, 5.5, 6.5], [3.0, 4.0, 5.0, 6.0]])
    eps = default_eps(losses, target_fraction=0.25)
    assert eps == 3.0  # the 25% quantile of the latest losses
    assert (memorized_since(losses, [1, 2, 3], eps) >= 0).sum() == 0
    assert math.isnan(default_eps(np.empty((0, 0))))


def test_update_eps_freezes_at_plateau_and_fixed_wins() -> None:
    moving = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    first = update_eps(None, moving, step=300, plateaued=False)
    assert not first.frozen and first.source == "quantile"
    frozen = update_eps(first, moving, step=400, plateaued=True)
    assert frozen.frozen and frozen.frozen_step == 400
    later = update_eps(frozen, moving * 0.1, step=500, plateaued=True)
    assert later == frozen  # frozen: later losses no longer move it
    fixed = update_eps(frozen, moving, step=600, plateaued=False, fixed_eps=0.7)
    assert fixed == EpsState(eps=0.7, frozen=True, source="fixed")
    assert EpsState.from_json(frozen.to_json()) == frozen
    missing = EpsState(eps=math.nan, frozen=False, source="quantile")
    assert math.isnan(EpsState.from_json(missing.to_json()).eps)
