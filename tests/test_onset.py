"""Plateau, trend, the per-group state machine and the alert decisions, on constructed series."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import scipy.stats

from grokwatch.alerts import (
    checkpoint_failed_alert,
    overdue_alert,
    replay_alerts,
    state_change_alerts,
    worker_down_alert,
)
from grokwatch.errors import ConfigError
from grokwatch.onset import (
    DetectorConfig,
    GroupHistory,
    GroupState,
    plateaued,
    replay,
    step_state,
    trend,
)
from grokwatch.trendstats import (
    lag1_autocorrelation,
    mann_kendall_p,
    mk_variance_factor,
    pooled_lag1_autocorrelation,
    theil_sen_slope,
)

# Explicit settings, so these tests pin the rules rather than the tuned defaults; the
# autocorrelation correction is off except where a test is about it.
CFG = DetectorConfig(window=8, alpha=0.01, k_enter=3, k_exit=3, ac_window=0, ac_prior=0.0)
JITTER = np.array([0.5, -0.5] * 40)  # deterministic noise: no trend, no autocorrelation


def history(
    distance: np.ndarray,
    loss: np.ndarray | None = None,
    consistency: np.ndarray | None = None,
    raw_cosine: np.ndarray | None = None,
    n_memorized: np.ndarray | None = None,
) -> GroupHistory:
    n = len(distance)
    flat = 0.01 * JITTER[:n]
    return GroupHistory(
        steps=np.arange(1, n + 1, dtype=np.int64) * 100,
        loss=np.full(n, 2.0) + flat if loss is None else np.asarray(loss, dtype=np.float64),
        pathway_distance=np.asarray(distance, dtype=np.float64),
        consistency=0.3 + flat if consistency is None else consistency,
        raw_cosine=0.2 + flat if raw_cosine is None else raw_cosine,
        n_memorized=np.zeros(n) if n_memorized is None else n_memorized,
        n_samples=np.full(n, 64.0),
    )


def declining(n_flat: int = 12, n_fall: int = 16, per_step: float = 3.0) -> np.ndarray:
    fall = np.concatenate([np.zeros(n_flat), -per_step * np.arange(1, n_fall + 1)])
    return 600.0 + fall + JITTER[: n_flat + n_fall]


def first(states: list[GroupState], name: str) -> int | None:
    return next((i for i, s in enumerate(states) if s.state == name), None)


# Configuration and statistics ----------------------------------------------------------------


def test_window_shorter_than_five_is_refused() -> None:
    with pytest.raises(ConfigError, match="window >= 5"):
        DetectorConfig(window=4)
    with pytest.raises(ConfigError, match="never reach"):
        DetectorConfig(window=5, alpha=0.001)  # the smallest p over 5 points is 1/120
    DetectorConfig(window=5, alpha=0.01)
    DetectorConfig()


def test_small_sample_arithmetic_of_mann_kendall() -> None:
    assert mann_kendall_p(np.array([3.0, 2.0, 1.0]), -1) == pytest.approx(1 / 6)
    assert mann_kendall_p(np.array([4.0, 3.0, 2.0, 1.0]), -1) == pytest.approx(1 / 24)
    assert mann_kendall_p(np.array([4.0, 2.0, 3.0, 1.0]), -1) >= 0.05
    assert mann_kendall_p(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), -1) == pytest.approx(1 / 120)
    assert mann_kendall_p(np.array([1.0, 2.0, 3.0]), -1) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [5, 8, 12, 40])
def test_mann_kendall_and_theil_sen_match_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    for trial in range(60):
        values = rng.standard_normal(n) - 0.1 * trial * np.arange(n) / n
        if trial % 3 == 0:
            values = np.round(values)  # ties: the normal approximation
        if trial == 1:
            values = -np.arange(n, dtype=np.float64)  # the extreme tail
        steps = np.cumsum(rng.integers(1, 5, size=n))
        for direction, alternative in ((-1, "less"), (1, "greater")):
            expected = scipy.stats.kendalltau(steps, values, alternative=alternative).pvalue
            expected = 1.0 if math.isnan(expected) else expected
            assert mann_kendall_p(values, direction) == pytest.approx(expected, abs=1e-12)
        slope = scipy.stats.theilslopes(values, steps).slope
        assert theil_sen_slope(steps, values) == pytest.approx(slope)


def test_autocorrelation_correction_widens_the_test() -> None:
    assert mk_variance_factor(8, 0.0) == 1.0
    assert mk_variance_factor(8, 0.5) > 1.5
    assert lag1_autocorrelation(JITTER[:16]) == 0.0  # alternating: negative, clipped
    assert lag1_autocorrelation(np.sin(np.arange(24) / 3.0)) > 0.5
    assert math.isnan(lag1_autocorrelation(np.arange(5.0)))  # too short to estimate
    # Pooling series of the same checkpoints: AR(1) noise with phi = 0.5 is recognised as such.
    rng = np.random.default_rng(11)
    series = []
    for _ in range(30):
        noise = np.zeros(64)
        for t in range(1, 64):
            noise[t] = 0.5 * noise[t - 1] + rng.standard_normal()
        series.append(noise[40:])
    assert 0.35 < pooled_lag1_autocorrelation(series) < 0.65
    # The same window after a smooth wandering stretch is less significant than after noise.
    window = 600.0 - 3.0 * np.arange(8) + JITTER[:8]
    cfg = dataclasses.replace(CFG, ac_window=16)
    smooth = np.concatenate([600.0 + 5 * np.sin(np.arange(16) / 3.0), window])
    rough = np.concatenate([600.0 + 5 * JITTER[:16], window])
    steps = np.arange(24)
    assert trend(steps, smooth, -1, cfg).p_value > trend(steps, rough, -1, cfg).p_value


# Plateau and trend ----------------------------------------------------------------------------


def test_plateau_yes_and_no() -> None:
    steps = np.arange(1, 11) * 100
    flat = 2.0 + 0.01 * JITTER[:10]
    assert plateaued(steps, flat, CFG)
    falling = 4.0 - 0.2 * np.arange(10)  # ~50% of its level over the window
    assert not plateaued(steps, falling, CFG)
    near_zero = 0.02 - 0.002 * np.arange(10)  # large ratio, tiny absolute change (nats)
    assert plateaued(steps, near_zero, CFG)
    assert not plateaued(steps[:5], flat[:5], CFG)  # shorter than the plateau window


def test_trend_significant_or_not() -> None:
    steps = np.arange(1, 11) * 100
    falling = 600.0 - 3.0 * np.arange(10) + JITTER[:10]
    result = trend(steps, falling, -1, CFG, name="pathway_distance")
    assert result.significant and result.p_value <= CFG.alpha and result.slope < 0
    assert result.change == pytest.approx(result.slope * 700)
    assert not trend(steps, falling, 1, CFG).significant  # wrong direction
    assert not trend(steps, 600.0 + JITTER[:10], -1, CFG).significant  # noise only
    assert not trend(steps[:7], falling[:7], -1, CFG).significant  # shorter than the window


def test_trend_below_the_noise_floor_is_not_significant() -> None:
    # Perfectly monotone but by 0.01 per checkpoint after a stretch with jumps of 20: the
    # rank test alone would call it, the noise floor does not.
    noisy = 600.0 + 20.0 * JITTER[:10]
    creep = 600.0 - 0.01 * np.arange(1, 9)
    values = np.concatenate([noisy, creep])
    steps = np.arange(len(values))
    result = trend(steps, values, -1, CFG)
    assert result.p_value <= CFG.alpha
    assert not result.significant


# State machine --------------------------------------------------------------------------------


def test_onset_needs_k_consecutive_significant_windows() -> None:
    states = replay(history(declining()), CFG)
    onset = first(states, "grokking")
    assert onset is not None and onset > 12
    streaks = [s.evidence["signals"]["pathway_distance"]["streak"] for s in states]
    first_significant = streaks.index(1)
    assert onset == first_significant + CFG.k_enter - 1
    assert states[onset].evidence["fired"] == ["pathway_distance"]
    assert states[onset].since_step == states[onset].step
    assert all(s.state == "grokking" for s in states[onset:])


def test_one_outlier_neither_raises_nor_clears() -> None:
    flat = 600.0 + JITTER[:30]
    spiked = flat.copy()
    spiked[20] -= 60.0
    assert first(replay(history(spiked), CFG), "grokking") is None
    distance = declining(n_fall=20)
    onset = first(replay(history(distance), CFG), "grokking")
    assert onset is not None
    distance[onset + 2] += 80.0  # one checkpoint far the wrong way, mid-grokking
    states = replay(history(distance), CFG)
    assert first(states, "grokking") == onset
    assert all(s.state == "grokking" for s in states[onset:])


def test_onset_waits_for_the_loss_plateau() -> None:
    n = 28
    loss = np.concatenate([4.0 - 0.2 * np.arange(14), np.full(14, 1.2)])  # flat from 14
    distance = 600.0 - 2.0 * np.arange(n) + JITTER[:n]  # falling all along
    states = replay(history(distance, loss=loss), CFG)
    onset = first(states, "grokking")
    plateau = next(i for i, s in enumerate(states) if s.plateau_step is not None)
    assert onset is not None and plateau >= 14 and onset >= plateau
    assert states[onset].evidence["lag_steps"] == states[onset].step - states[onset].plateau_step


def test_inverted_u_rise_is_not_a_reversal() -> None:
    n = 40
    loss = np.concatenate([4.0 - 0.25 * np.arange(8), np.full(n - 8, 2.0)])
    turn = 20
    t = np.arange(n)
    distance = np.where(t <= turn, 500.0 + 5.0 * t, 600.0 - 3.0 * (t - turn)) + JITTER[:n]
    states = replay(history(distance, loss=loss), CFG)
    onset = first(states, "grokking")
    assert first(states, "reversed") is None
    assert onset is not None and onset > turn


def test_reversal_after_grokking_and_a_second_onset() -> None:
    fall = declining(n_flat=12, n_fall=14)
    rise = fall[-1] + 4.0 * np.arange(1, 15) + JITTER[:14]
    again = rise[-1] - 4.0 * np.arange(1, 15) + JITTER[:14]
    states = replay(history(np.concatenate([fall, rise, again])), CFG)
    onset, reversal = first(states, "grokking"), first(states, "reversed")
    assert onset is not None and reversal is not None and onset < reversal
    assert states[reversal].evidence["fired"] == ["pathway_distance"]
    second = next(i for i in range(reversal, len(states)) if states[i].state == "grokking")
    drafts = replay_alerts("math", states)
    assert [d.kind for d in drafts] == ["onset", "reversal", "onset"]
    keys = [d.dedupe_key for d in drafts]
    assert keys == [
        f"onset:math:{states[onset].step}",
        f"reversal:math:{states[reversal].step}",
        f"onset:math:{states[second].step}",
    ]


def test_memorized_state_with_hysteresis() -> None:
    n = 40
    fraction = np.full(n, 0.05)
    fraction[10:] = 0.3
    fraction[20] = 0.05  # one noisy checkpoint does not clear it
    fraction[30:] = 0.05
    states = replay(history(600.0 + JITTER[:n], n_memorized=fraction * 64), CFG)
    assert first(states, "memorized") == 10 + CFG.k_enter - 1
    assert states[20].state == "memorized"
    assert states[30 + CFG.k_exit - 2].state == "memorized"
    assert states[30 + CFG.k_exit - 1].state == "learning"
    kinds = [d.kind for d in replay_alerts("code", states)]
    assert kinds == ["memorized"]


def test_replay_is_causal_and_matches_live_stepping() -> None:
    rng = np.random.default_rng(3)
    n = 36
    distance = declining(n_flat=14, n_fall=22) + 2.0 * rng.standard_normal(n)
    full = history(distance, consistency=0.3 + 0.01 * rng.standard_normal(n))
    states = replay(full, CFG)
    live, prev = [], None
    for t in range(n):
        prev = step_state(prev, full.upto(t), CFG)
        live.append(prev)
    assert live == states
    for t in (10, 20, 30):
        changed = distance.copy()
        changed[t + 1 :] += 100.0 * rng.standard_normal(n - t - 1)
        assert (
            replay(history(changed, consistency=full.consistency), CFG)[: t + 1] == states[: t + 1]
        )


def test_state_round_trips_as_json() -> None:
    states = replay(history(declining()), CFG)
    for state in states:
        text = state.to_json()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
        assert GroupState.from_json(text) == state


def test_history_from_store_rows() -> None:
    rows = [
        {"step": 200, "loss": 2.0, "pathway_distance": 5.0, "consistency": None,
         "raw_cosine": 0.1, "n_memorized": 3, "n_samples": 8},
        {"step": 100, "loss": 2.5, "pathway_distance": 6.0, "consistency": 0.2,
         "raw_cosine": 0.1, "n_memorized": None, "n_samples": 8},
    ]  # fmt: skip
    built = GroupHistory.from_rows(rows)
    assert built.steps.tolist() == [100, 200]
    assert math.isnan(built.consistency[1]) and math.isnan(built.n_memorized[0])
    with pytest.raises(ValueError, match="increasing"):
        GroupHistory.from_rows([rows[0], rows[0]])


# Alert decisions ------------------------------------------------------------------------------


def test_state_change_alerts_fire_once_per_state() -> None:
    states = replay(history(declining()), CFG)
    onset = first(states, "grokking")
    assert onset is not None
    assert state_change_alerts("__all__", states[onset - 1], states[onset - 1]) == []
    drafts = state_change_alerts("__all__", states[onset - 1], states[onset])
    assert len(drafts) == 1
    draft = drafts[0]
    assert draft.kind == "onset" and draft.group == "__all__" and draft.step == states[onset].step
    assert draft.dedupe_key == f"onset:__all__:{states[onset].since_step}"
    assert draft.message.startswith("all groups: grokking onset at step")
    assert "pathway distance falling" in draft.message and "\n" not in draft.message
    assert draft.evidence["fired"] == ["pathway_distance"]
    assert "lag_steps" in draft.evidence
    assert state_change_alerts("__all__", states[onset], states[onset + 1]) == []
    # A restart replays the same history: the same keys, which the store ignores.
    again = replay_alerts("__all__", replay(history(declining()), CFG))
    assert [d.dedupe_key for d in again] == [draft.dedupe_key]
    assert draft.as_dict()["dedupe_key"] == draft.dedupe_key


def test_overdue_alert() -> None:
    arrivals = [0.0, 60.0, 120.0, 180.0]
    assert overdue_alert(arrivals[:3], now_s=10_000.0) is None  # too few intervals
    assert overdue_alert(arrivals, now_s=180.0 + 170.0) is None  # within 3x the median
    alert = overdue_alert(arrivals, now_s=180.0 + 200.0, last_step=4000)
    assert alert is not None and alert.kind == "overdue" and alert.group == ""
    assert alert.step == 4000 and "3.3x the median interval of 60 s" in alert.message
    assert alert.dedupe_key == "overdue:180.000"
    later = overdue_alert(arrivals, now_s=180.0 + 5000.0)
    assert later is not None and later.dedupe_key == alert.dedupe_key  # one per silence
    assert overdue_alert([*arrivals, 240.0], now_s=240.0 + 200.0).dedupe_key == "overdue:240.000"


def test_checkpoint_failed_and_worker_down_alerts() -> None:
    failed = checkpoint_failed_alert(300, "/ckpts/checkpoint-300", "corrupt shard:\nbad header")
    assert failed.kind == "checkpoint_failed" and failed.step == 300
    assert failed.message == "checkpoint step 300 failed: corrupt shard: bad header"
    assert failed.dedupe_key == "checkpoint_failed:/ckpts/checkpoint-300@300"
    assert checkpoint_failed_alert(300, "/x", "r", checkpoint_id=7).dedupe_key.endswith(":7")
    down = worker_down_alert("exit code -9 (killed)", since_s=1700000000.5)
    assert down.kind == "worker_down" and down.group == "" and down.step is None
    assert down.dedupe_key == "worker_down:1700000000.500"


def test_defaults_fire_on_a_clear_decline_and_not_on_noise() -> None:
    rng = np.random.default_rng(5)
    n = 50
    t = np.arange(n)
    distance = 600.0 * (1 - 0.05 * np.clip((t - 30) / 12, 0, 1)) + rng.standard_normal(n)
    states = replay(history(distance), DetectorConfig())
    onset = first(states, "grokking")
    assert onset is not None and 30 < onset <= 42
    assert (
        first(replay(history(600.0 + rng.standard_normal(n)), DetectorConfig()), "grokking") is None
    )
