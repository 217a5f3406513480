"""Plateau, trend and grokking-onset detection per group (pure; numpy/scipy only).

The rule is grokwatch's own (the paper gives none); docs/detector.md states it with its defaults
and the measured false-alarm rate and delay (bench/detector_bench.py). In short, per group and
checkpoint:

- plateau: the Theil-Sen change of the group's loss over the last `plateau_window` checkpoints
  is at most max(plateau_rel_change * median loss, plateau_abs_change);
- a signal is significant in a window when a one-sided Mann-Kendall test over its last `window`
  checkpoints gives p <= alpha AND its Theil-Sen change over the window is at least
  `min_effect_noise` noise sd (noise from first differences, robust to the trend). Checkpoint
  noise is often autocorrelated, which makes rank tests fire on wandering: the test's variance
  is inflated (Hamed & Rao) by the lag-1 autocorrelation estimated on the `ac_window`
  checkpoints before the window (`ac_prior` until 12 are there);
- onset (-> grokking): loss plateaued AND some signal significant the generalizing way
  (distance falling, consistency or raw cosine rising) in `k_enter` consecutive windows;
- reversal (grokking -> reversed): some signal significant the other way in `k_exit`
  consecutive windows while none is significant the generalizing way; a rise before any
  grokking (the early inverted U) is never a reversal;
- memorized: memorized fraction >= memorized_fraction with the loss plateaued, `k_enter`
  checkpoints in a row; back to learning after `k_exit` checkpoints below the exit fraction.

`step_state` decides one checkpoint from the previous state and the history up to and including
it; `replay` runs it causally over a whole history, exactly as live (restarts and --once).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from grokwatch.errors import ConfigError
from grokwatch.trendstats import (
    fast_median,
    lag1_autocorrelation,
    mann_kendall_p,
    mk_p_from_statistic,
    mk_statistic,
    mk_variance_factor,
    noise_sd,
    pooled_lag1_autocorrelation,
    theil_sen_slope,
)

__all__ = [
    "DEFAULT_SIGNALS",
    "STATES",
    "DetectorConfig",
    "GroupHistory",
    "GroupState",
    "SignalTrend",
    "lag1_autocorrelation",
    "mann_kendall_p",
    "mk_variance_factor",
    "plateaued",
    "replay",
    "step_state",
    "theil_sen_slope",
    "trend",
]

State = Literal["learning", "memorized", "grokking", "reversed"]
STATES: tuple[str, ...] = ("learning", "memorized", "grokking", "reversed")
MIN_TREND_POINTS = 5  # Mann-Kendall over 4 points reaches p < 0.05 only if perfectly monotone

# (signal, generalizing direction): distance falls, consistency and raw cosine rise.
DEFAULT_SIGNALS: tuple[tuple[str, int], ...] = (
    ("pathway_distance", -1),
    ("consistency", 1),
    ("raw_cosine", 1),
)


@dataclass(frozen=True)
class DetectorConfig:
    """Detector settings; the defaults are the ones measured in docs/detector.md."""

    window: int = 10  # checkpoints per trend window (>= 5)
    alpha: float = 0.005  # one-sided Mann-Kendall level per signal and window
    min_effect_noise: float = 1.0  # Theil-Sen change over the window, in noise sd
    noise_window: int = 16  # checkpoints whose first differences give the noise sd
    ac_window: int = 24  # checkpoints before the window that estimate lag-1 autocorrelation
    ac_prior: float = 0.5  # assumed while fewer than 12 are there (always if ac_window = 0)
    k_enter: int = 3  # consecutive qualifying checkpoints to enter a state
    k_exit: int = 3  # consecutive qualifying checkpoints to leave one (reversal)
    plateau_window: int = 8
    plateau_rel_change: float = 0.05  # of the median loss over the plateau window
    plateau_abs_change: float = 0.05  # nats; near-zero losses have meaningless ratios
    memorized_fraction: float = 0.2
    memorized_exit_fraction: float = 0.1
    signals: tuple[tuple[str, int], ...] = DEFAULT_SIGNALS

    def __post_init__(self) -> None:
        if self.window < MIN_TREND_POINTS:
            raise ConfigError(
                f"detector window {self.window} is too short: a rank trend test over fewer than "
                f"{MIN_TREND_POINTS} checkpoints cannot reach significance; set window >= 5"
            )
        smallest_p = 1.0 / math.factorial(min(self.window, 20))
        if not smallest_p <= self.alpha < 1.0:
            raise ConfigError(
                f"detector alpha {self.alpha} is outside [{smallest_p:.2g}, 1): a window of "
                f"{self.window} can never reach it; raise alpha or the window"
            )
        if self.k_enter < 1 or self.k_exit < 1:
            raise ConfigError("detector k_enter and k_exit must be >= 1 checkpoints")
        if self.plateau_window < 3 or self.noise_window < 3:
            raise ConfigError("detector plateau_window and noise_window must be >= 3 checkpoints")
        if not 0.0 <= self.ac_prior <= 0.9 or self.ac_window < 0:
            raise ConfigError("detector needs 0 <= ac_prior <= 0.9 and ac_window >= 0")
        if self.min_effect_noise < 0 or self.plateau_rel_change < 0 or self.plateau_abs_change < 0:
            raise ConfigError("detector effect and plateau thresholds must be >= 0")
        if not 0.0 <= self.memorized_exit_fraction <= self.memorized_fraction <= 1.0:
            raise ConfigError(
                "detector needs 0 <= memorized_exit_fraction <= memorized_fraction <= 1"
            )
        for name, direction in self.signals:
            if direction not in (-1, 1):
                raise ConfigError(f"detector signal {name}: direction must be -1 or +1")


@dataclass(frozen=True)
class SignalTrend:
    """One signal's trend over one window, tested in its generalizing direction."""

    name: str
    slope: float  # Theil-Sen, per training step
    p_value: float  # one-sided Mann-Kendall, in `direction`
    significant: bool  # p <= alpha, change in `direction`, and beyond the noise floor
    direction: int = -1  # the direction tested: -1 falling, +1 rising
    change: float = math.nan  # Theil-Sen change over the window (slope * step span)
    noise: float = math.nan  # noise sd the change was compared with
    n_points: int = 0
    autocorrelation: float = 0.0  # lag-1 autocorrelation the test allowed for


@dataclass(frozen=True)
class GroupHistory:
    """One group's per-checkpoint values in step order, up to and including the current one."""

    steps: np.ndarray  # int64 [T], strictly increasing
    loss: np.ndarray  # float64 [T]
    pathway_distance: np.ndarray
    consistency: np.ndarray
    raw_cosine: np.ndarray
    n_memorized: np.ndarray  # float64 [T]; NaN where unknown
    n_samples: np.ndarray  # float64 [T]

    def __post_init__(self) -> None:
        n = len(self.steps)
        for name in ("loss", "pathway_distance", "consistency", "raw_cosine"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"history field {name} has {len(getattr(self, name))} != {n}")
        if len(self.n_memorized) != n or len(self.n_samples) != n:
            raise ValueError("history n_memorized / n_samples lengths differ from steps")
        if n > 1 and np.any(np.diff(self.steps) <= 0):
            raise ValueError("history steps must be strictly increasing")

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> GroupHistory:
        """Build from metrics rows (dicts with step, loss, ...; None counts as NaN)."""
        records = sorted(rows, key=lambda r: int(r["step"]))

        def column(name: str) -> np.ndarray:
            return np.array(
                [math.nan if r.get(name) is None else float(r[name]) for r in records],
                dtype=np.float64,
            )

        return cls(
            steps=np.array([int(r["step"]) for r in records], dtype=np.int64),
            loss=column("loss"),
            pathway_distance=column("pathway_distance"),
            consistency=column("consistency"),
            raw_cosine=column("raw_cosine"),
            n_memorized=column("n_memorized"),
            n_samples=column("n_samples"),
        )

    def upto(self, index: int) -> GroupHistory:
        """The history up to and including checkpoint `index` (what was known then)."""
        end = index + 1
        return GroupHistory(
            steps=self.steps[:end],
            loss=self.loss[:end],
            pathway_distance=self.pathway_distance[:end],
            consistency=self.consistency[:end],
            raw_cosine=self.raw_cosine[:end],
            n_memorized=self.n_memorized[:end],
            n_samples=self.n_samples[:end],
        )

    def signal(self, name: str) -> np.ndarray:
        """The values of one signal by name."""
        return np.asarray(getattr(self, name), dtype=np.float64)


@dataclass(frozen=True)
class GroupState:
    """A group's detector state after one checkpoint, with the evidence for it."""

    state: State
    step: int  # the checkpoint this state was decided on
    since_step: int  # first step of the current state (part of the alert's dedupe key)
    plateau_step: int | None  # first step of the current loss plateau, None when not flat
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for the store (evidence is already JSON-safe)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GroupState:
        """Read back what to_json wrote."""
        record = json.loads(text)
        return cls(
            state=record["state"],
            step=int(record["step"]),
            since_step=int(record["since_step"]),
            plateau_step=record.get("plateau_step"),
            evidence=record.get("evidence") or {},
        )


def _window_slice(end: int, width: int) -> slice:
    return slice(max(0, end - width + 1), end + 1)


def _autocorrelation_at(series: list[np.ndarray], end: int, cfg: DetectorConfig) -> float:
    """The lag-1 autocorrelation the test at `end` allows for (ac_prior when unknown)."""
    if cfg.ac_window <= 0:
        return cfg.ac_prior
    # Estimated before the window, so that a trend inside it does not pass for noise memory.
    start = end - cfg.window + 1
    before = [v[max(0, start - cfg.ac_window + 1) : start + 1] for v in series]
    phi = pooled_lag1_autocorrelation(before)
    return cfg.ac_prior if math.isnan(phi) else round(phi, 2)


def _trends_at(
    steps: np.ndarray,
    values: np.ndarray,
    end: int,
    direction: int,
    cfg: DetectorConfig,
    name: str,
    phi: float | None = None,
) -> tuple[SignalTrend, SignalTrend]:
    """The window ending at `end` tested in `direction` and in the opposite one."""
    window = _window_slice(end, cfg.window)
    x, y = steps[window], values[window]
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    if end + 1 < cfg.window or len(y) < MIN_TREND_POINTS:
        return tuple(  # type: ignore[return-value]
            SignalTrend(name, math.nan, 1.0, False, d, math.nan, math.nan, len(y))
            for d in (direction, -direction)
        )
    slope = theil_sen_slope(x, y)
    change = slope * float(x[-1] - x[0])
    noise = noise_sd(values[_window_slice(end, cfg.noise_window)])
    beyond_noise = (
        math.isfinite(change)
        and math.isfinite(noise)
        and abs(change) >= cfg.min_effect_noise * noise
    )
    s_value, ties = mk_statistic(y)
    if phi is None:
        phi = _autocorrelation_at([values], end, cfg)
    factor = mk_variance_factor(len(y), phi)
    results = []
    for tested in (direction, -direction):
        p_value = mk_p_from_statistic(s_value, ties, len(y), tested, factor)
        significant = p_value <= cfg.alpha and tested * change > 0 and beyond_noise
        results.append(
            SignalTrend(name, slope, p_value, bool(significant), tested, change, noise, len(y), phi)
        )
    return results[0], results[1]


def trend(
    steps: np.ndarray, values: np.ndarray, direction: int, cfg: DetectorConfig, name: str = ""
) -> SignalTrend:
    """Test the last cfg.window checkpoints of one signal for a trend in `direction`.

    Fewer than cfg.window checkpoints, or fewer than 5 finite values in the window, is never
    significant. The noise sd comes from the last cfg.noise_window checkpoints.
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return SignalTrend(name, math.nan, 1.0, False, direction)
    return _trends_at(steps, values, len(values) - 1, direction, cfg, name)[0]


def _plateau_at(
    steps: np.ndarray, loss: np.ndarray, end: int, cfg: DetectorConfig
) -> tuple[bool, float]:
    window = _window_slice(end, cfg.plateau_window)
    x, y = steps[window], loss[window]
    finite = np.isfinite(y)
    if end + 1 < cfg.plateau_window or finite.sum() < cfg.plateau_window:
        return False, math.nan
    change = theil_sen_slope(x[finite], y[finite]) * float(x[-1] - x[0])
    level = abs(fast_median(y[finite]))
    allowed = max(cfg.plateau_rel_change * level, cfg.plateau_abs_change)
    return bool(abs(change) <= allowed), change / level if level > 0 else math.nan


def plateaued(steps: np.ndarray, loss: np.ndarray, cfg: DetectorConfig) -> bool:
    """Whether the loss is flat over its last cfg.plateau_window checkpoints."""
    steps = np.asarray(steps, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    return bool(len(loss) > 0 and _plateau_at(steps, loss, len(loss) - 1, cfg)[0])


# State machine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Checkpoint:
    """What one checkpoint alone says (a pure function of the history up to it)."""

    plateaued: bool
    plateau_change: float
    memorized_fraction: float
    generalizing: tuple[SignalTrend, ...]
    reversing: tuple[SignalTrend, ...]


def _checkpoint_at(history: GroupHistory, end: int, cfg: DetectorConfig) -> _Checkpoint:
    steps = history.steps.astype(np.float64)
    flat, change = _plateau_at(steps, history.loss, end, cfg)
    n_samples = history.n_samples[end]
    fraction = history.n_memorized[end] / n_samples if n_samples > 0 else math.nan
    generalizing, reversing = [], []
    phi = _autocorrelation_at([history.signal(name) for name, _ in cfg.signals], end, cfg)
    for name, direction in cfg.signals:
        gen, rev = _trends_at(steps, history.signal(name), end, direction, cfg, name, phi)
        generalizing.append(gen)
        reversing.append(rev)
    return _Checkpoint(flat, change, float(fraction), tuple(generalizing), tuple(reversing))


class _Cache:
    """Per-checkpoint results of one history; valid because each depends only on its prefix."""

    def __init__(self, history: GroupHistory, cfg: DetectorConfig) -> None:
        self.history, self.cfg = history, cfg
        self.items: dict[int, _Checkpoint] = {}

    def at(self, end: int) -> _Checkpoint:
        if end not in self.items:
            self.items[end] = _checkpoint_at(self.history, end, self.cfg)
        return self.items[end]


def _streak(cache: _Cache, end: int, limit: int, test: Any) -> int:
    """How many checkpoints in a row, ending at `end`, pass `test` (counting up to `limit`)."""
    count = 0
    while count < limit and end - count >= 0 and test(cache.at(end - count)):
        count += 1
    return count


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else round(float(value), 10)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _step_state(prev: GroupState | None, cache: _Cache, end: int) -> GroupState:
    cfg, history = cache.cfg, cache.history
    step = int(history.steps[end])
    now = cache.at(end)
    plateau_step = None
    if now.plateaued:
        plateau_step = prev.plateau_step if prev and prev.plateau_step is not None else step

    signal_evidence: dict[str, Any] = {}
    fired_up, fired_down = [], []
    for index, (name, _direction) in enumerate(cfg.signals):
        up = _streak(cache, end, cfg.k_enter, lambda c, i=index: c.generalizing[i].significant)
        down = _streak(cache, end, cfg.k_exit, lambda c, i=index: c.reversing[i].significant)
        gen, rev = now.generalizing[index], now.reversing[index]
        signal_evidence[name] = {
            "direction": "falling" if gen.direction < 0 else "rising",
            "slope": gen.slope,
            "change": gen.change,
            "noise": gen.noise,
            "p_value": gen.p_value,
            "p_reverse": rev.p_value,
            "significant": gen.significant,
            "reverse_significant": rev.significant,
            "streak": up,
            "reverse_streak": down,
            "n_points": gen.n_points,
            "autocorrelation": gen.autocorrelation,
        }
        if up >= cfg.k_enter:
            fired_up.append(name)
        if down >= cfg.k_exit:
            fired_down.append(name)

    def memorized_ok(c: _Checkpoint) -> bool:
        return c.plateaued and c.memorized_fraction >= cfg.memorized_fraction

    def memorized_gone(c: _Checkpoint) -> bool:
        return c.memorized_fraction < cfg.memorized_exit_fraction

    state: State = prev.state if prev is not None else "learning"
    fired: list[str] = []
    onset = now.plateaued and bool(fired_up)
    any_generalizing = any(t.significant for t in now.generalizing)
    if state != "grokking" and onset:
        state, fired = "grokking", fired_up
    elif state == "grokking" and fired_down and not any_generalizing:
        state, fired = "reversed", fired_down
    elif state == "learning" and _streak(cache, end, cfg.k_enter, memorized_ok) >= cfg.k_enter:
        state = "memorized"
    elif state == "memorized" and _streak(cache, end, cfg.k_exit, memorized_gone) >= cfg.k_exit:
        state = "learning"

    changed = prev is None or state != prev.state
    since_step = step if changed or prev is None else prev.since_step
    evidence = {
        "window": cfg.window,
        "alpha": cfg.alpha,
        "k_enter": cfg.k_enter,
        "k_exit": cfg.k_exit,
        "plateaued": now.plateaued,
        "plateau_rel_change": now.plateau_change,
        "plateau_step": plateau_step,
        "memorized_fraction": now.memorized_fraction,
        "signals": signal_evidence,
        "fired": fired,
    }
    if state == "grokking" and changed and plateau_step is not None:
        evidence["lag_steps"] = step - plateau_step
        evidence["lag_checkpoints"] = int(np.searchsorted(history.steps, step)) - int(
            np.searchsorted(history.steps, plateau_step)
        )
    return GroupState(state, step, since_step, plateau_step, _clean(evidence))


def step_state(prev: GroupState | None, history: GroupHistory, cfg: DetectorConfig) -> GroupState:
    """Decide the group's state at the last checkpoint of `history`, given the previous state.

    prev is the state after the previous checkpoint (None at the first); the decision uses only
    `history` (everything up to and including the current checkpoint), so it is causal.
    """
    if len(history) == 0:
        raise ValueError("step_state needs at least one checkpoint of history")
    return _step_state(prev, _Cache(history, cfg), len(history) - 1)


def replay(history: GroupHistory, cfg: DetectorConfig) -> list[GroupState]:
    """Return the state after each checkpoint, deciding one checkpoint at a time as live."""
    cache = _Cache(history, cfg)
    states: list[GroupState] = []
    prev: GroupState | None = None
    for end in range(len(history)):
        prev = _step_state(prev, cache, end)
        states.append(prev)
    return states
