"""Robust trend statistics for short series: Mann-Kendall, Theil-Sen, noise, autocorrelation.

Pure numpy; each agrees with its scipy counterpart (the tests check that) but is fast on the
short windows the detector tests at every checkpoint, and the Mann-Kendall test can allow for
autocorrelated noise (Hamed & Rao's variance correction).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

AC_MIN_POINTS = 12  # fewer values than this give no autocorrelation estimate
_EXACT_MAX_POINTS = 33  # as scipy.stats.kendalltau: exact null distribution up to here
_MAD_TO_SD = 1.4826


@lru_cache(maxsize=64)
def _mk_lower_cdf(n: int) -> np.ndarray:
    """P(S <= s) for Mann-Kendall S without ties, indexed by the discordant-pair count d.

    S = n(n-1)/2 - 2d, and d (inversions of a random permutation) has the Mahonian
    distribution, built by convolving uniform distributions on 0..i-1 for i = 1..n.
    """
    counts = np.array([1.0])
    for i in range(2, n + 1):
        counts = np.convolve(counts, np.ones(i))
    probability = counts / counts.sum()
    # S <= s  <=>  d >= (tot - s) / 2: a survival function over d.
    return np.cumsum(probability[::-1])[::-1]


@lru_cache(maxsize=256)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def fast_median(values: np.ndarray) -> float:
    """Median of a short array (np.median costs more than the sort itself here)."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return float(0.5 * (ordered[middle - 1] + ordered[middle]))


def mk_statistic(values: np.ndarray) -> tuple[int, np.ndarray]:
    """Mann-Kendall S (concordant minus discordant pairs in time order) and tie group sizes."""
    i, j = _pairs(len(values))
    s_value = int(np.sign(values[j] - values[i]).sum())
    ordered = np.sort(values)
    if len(ordered) < 2 or np.all(np.diff(ordered) != 0):
        return s_value, np.empty(0, dtype=np.int64)
    _, tie_sizes = np.unique(ordered, return_counts=True)
    return s_value, tie_sizes[tie_sizes > 1]


def mk_p_from_statistic(
    s_value: int, ties: np.ndarray, n: int, direction: int, factor: float = 1.0
) -> float:
    """One-sided p-value of Mann-Kendall S, with its variance inflated by `factor` (>= 1)."""
    total = n * (n - 1) // 2
    if factor > 1.0:
        # Autocorrelated: normal approximation with the inflated variance and a continuity
        # correction (the exact permutation distribution assumes independence).
        variance = (
            factor
            * (n * (n - 1) * (2 * n + 5) - float(np.sum(ties * (ties - 1) * (2 * ties + 5))))
            / 18
        )
        if variance <= 0:
            return 1.0
        shifted = direction * s_value - 1
        return 0.5 * math.erfc(shifted / math.sqrt(2.0 * variance))
    if ties.size == 0 and (n <= _EXACT_MAX_POINTS or min(total - s_value, total + s_value) <= 2):
        discordant = (total - s_value) // 2
        if n > _EXACT_MAX_POINTS:
            return _extreme_p(n, discordant, direction)
        lower = _mk_lower_cdf(n)  # P(S <= s) = P(D >= d)
        if direction < 0:
            return float(min(1.0, lower[discordant]))
        # P(S >= s) = P(D <= d), and D is symmetric around total / 2.
        return float(min(1.0, lower[total - discordant]))
    variance = (n * (n - 1) * (2 * n + 5) - float(np.sum(ties * (ties - 1) * (2 * ties + 5)))) / 18
    if variance <= 0:
        return 1.0
    z_value = s_value / math.sqrt(variance)
    # Normal tail via erfc: scipy.stats would cost the TUI a second of import time.
    tail = 0.5 * math.erfc(abs(z_value) / math.sqrt(2.0))
    return tail if (z_value < 0) == (direction < 0) and z_value != 0 else 1.0 - tail


def mann_kendall_p(values: np.ndarray, direction: int) -> float:
    """One-sided Mann-Kendall p-value for a trend in `direction` (-1 falling, +1 rising).

    Matches scipy.stats.kendalltau(order, values, alternative=...): exact null distribution
    without ties up to 33 points, else the tie-corrected normal approximation.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return 1.0
    s_value, ties = mk_statistic(values)
    return mk_p_from_statistic(s_value, ties, len(values), direction)


def _extreme_p(n: int, discordant: int, direction: int) -> float:
    """Exact tail for S within one pair of its extreme (scipy's rule for long windows)."""
    permutations = math.factorial(n)
    if direction < 0:  # P(D >= d) for d near the maximum: count of permutations with few concordant
        concordant = n * (n - 1) // 2 - discordant
        return 1.0 if concordant > 1 else (1 + (n - 1) * concordant) / permutations
    return 1.0 if discordant > 1 else (1 + (n - 1) * discordant) / permutations


def _raw_lag1(values: np.ndarray) -> tuple[float, int]:
    """Plain lag-1 autocorrelation around a fitted parabola, and the number of values used.

    A parabola rather than a line, so that a curved stretch (the inverted U of memorization)
    is not mistaken for slowly wandering noise.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n < AC_MIN_POINTS:
        return math.nan, n
    x = np.linspace(-1.0, 1.0, n)
    design = np.stack([np.ones(n), x, x * x], axis=1)
    coefficients = np.linalg.lstsq(design, values, rcond=None)[0]
    residuals = values - design @ coefficients
    denominator = float(np.dot(residuals, residuals))
    if denominator <= 1e-300:
        return math.nan, n
    return float(np.dot(residuals[1:], residuals[:-1])) / denominator, n


def _debias_lag1(raw: float, n: float) -> float:
    # Inverts the mean of the plain estimate under AR(1) noise after removing a parabola,
    # raw ~ -2.84 / n + (1 - 7.47 / n) * phi, fitted by simulation for n = 10..24.
    return float(min(max((raw + 2.84 / n) / (1.0 - 7.47 / n), 0.0), 0.9))


def lag1_autocorrelation(values: np.ndarray) -> float:
    """Lag-1 autocorrelation of the values around a fitted parabola, bias-corrected, >= 0.

    On short series the plain estimate is far too low (n = 24, true 0.5: 0.22 on average);
    the correction undoes that on average. Negative values count as 0: they would only make
    the trend test more liberal. Fewer than 12 finite values give NaN (unknown).
    """
    raw, n = _raw_lag1(values)
    return math.nan if math.isnan(raw) else _debias_lag1(raw, n)


def pooled_lag1_autocorrelation(series: Iterable[np.ndarray]) -> float:
    """One bias-corrected lag-1 autocorrelation from several series of the same checkpoints.

    A group's signals are measured on the same checkpoints and share their noise; pooling the
    plain estimates before the correction cuts the estimate's spread by about sqrt(#series).
    """
    estimates = [e for e in (_raw_lag1(v) for v in series) if not math.isnan(e[0])]
    if not estimates:
        return math.nan
    raw = float(np.mean([e[0] for e in estimates]))
    return _debias_lag1(raw, float(np.mean([e[1] for e in estimates])))


@lru_cache(maxsize=4096)
def mk_variance_factor(n: int, phi: float) -> float:
    """Variance inflation of Mann-Kendall S under AR(1) noise (Hamed & Rao 1998).

    Uses the rank autocorrelation of AR(1) data, (6 / pi) * asin(phi**k / 2) at lag k.
    """
    if phi <= 0:
        return 1.0
    k = np.arange(1, n - 1, dtype=np.float64)
    rho = (6.0 / math.pi) * np.arcsin(phi**k / 2.0)
    weights = (n - k) * (n - k - 1) * (n - k - 2)
    return float(1.0 + 2.0 / (n * (n - 1) * (n - 2)) * np.sum(weights * rho))


def theil_sen_slope(steps: np.ndarray, values: np.ndarray) -> float:
    """Median of pairwise slopes (as scipy.stats.theilslopes), per unit of `steps`."""
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    i, j = _pairs(len(x))
    dx = x[j] - x[i]
    keep = dx != 0
    if not np.any(keep):
        return math.nan
    return fast_median((y[j] - y[i])[keep] / dx[keep])


def noise_sd(values: np.ndarray) -> float:
    """Robust noise sd from first differences (a linear trend only shifts them)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 3:
        return math.nan
    diffs = np.diff(values)
    return _MAD_TO_SD * fast_median(np.abs(diffs - fast_median(diffs))) / math.sqrt(2.0)
