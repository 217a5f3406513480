"""Pure text rendering for the TUI: robust scaling, sparklines, heatmaps, numbers and ages.

Nothing here knows about Textual: every function takes numbers and widths and returns strings,
so the drawing rules are tested without an app.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

BARS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▁▂▃▄▅▆▇█"
SHADES = " ░▒▓█"
ELLIPSIS = "…"
# Values further than this many robust standard deviations from the median are clipped, so
# one wild early point (consistency swings far outside [0, 1] near zero cosines) does not
# flatten the rest of the curve.
CLIP_SIGMAS = 4.0
CLIP_SHARE = 0.05
RELATIVE_FLOOR = 1e-4  # ranges narrower than this fraction of the level are drawn flat


@dataclass(frozen=True)
class Scale:
    """A robust value range for drawing: values outside [low, high] are clipped."""

    low: float
    high: float
    n_clipped: int

    def unit(self, value: float) -> float:
        """Map a value into [0, 1] (clipped); NaN stays NaN."""
        if math.isnan(value):
            return math.nan
        if self.high <= self.low:
            return 0.5
        return min(1.0, max(0.0, (value - self.low) / (self.high - self.low)))


def finite(values: Sequence[float | None]) -> list[float]:
    """The finite values of a sequence (None and NaN dropped)."""
    return [v for v in values if v is not None and math.isfinite(v)]


def _median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    if n % 2:
        return sorted_values[mid]
    return (sorted_values[mid - 1] + sorted_values[mid]) / 2


def robust_scale(values: Sequence[float | None]) -> Scale:
    """A range from the median and MAD that clips outliers, but never more than ~5% of values.

    A range narrower than RELATIVE_FLOOR of the level is float noise (a flat loss of
    4.652 +- 1e-7) and is drawn flat rather than as a cliff.

    The cap keeps real trends (the early loss drop) visible: only a few extreme points on each
    side can be clipped, and each side keeps at least its second most extreme value.
    """
    data = sorted(finite(values))
    if not data:
        return Scale(0.0, 1.0, 0)
    n = len(data)
    median = _median(data)
    mad = _median(sorted(abs(v - median) for v in data)) * 1.4826
    floor = RELATIVE_FLOOR * max(abs(median), 1e-12)
    if data[-1] - data[0] < floor:
        return Scale(median - floor, median + floor, 0)
    if mad <= 0 or n < 3:
        return Scale(data[0], data[-1], 0)
    per_side = max(1, math.ceil(CLIP_SHARE / 2 * n))
    low_fence = min(median - CLIP_SIGMAS * mad, data[per_side])
    high_fence = max(median + CLIP_SIGMAS * mad, data[n - 1 - per_side])
    kept = [v for v in data if low_fence <= v <= high_fence]
    # Tight to the values kept, so they use the full height.
    return Scale(kept[0], kept[-1], n - len(kept))


def bucket(values: Sequence[float | None], width: int) -> list[float]:
    """Reduce values to at most `width` columns by averaging equal slices; NaN for empty ones."""
    clean = [math.nan if v is None else float(v) for v in values]
    if width <= 0:
        return []
    if len(clean) <= width:
        return clean
    out: list[float] = []
    n = len(clean)
    for col in range(width):
        start = col * n // width
        stop = (col + 1) * n // width
        chunk = finite(clean[start:stop])
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def stretch(columns: list[float], width: int, most: int) -> list[float]:
    """Repeat each column up to `most` times when few points would leave the line mostly empty."""
    if not columns:
        return columns
    times = max(1, min(most, width // len(columns)))
    return [v for v in columns for _ in range(times)]


def spark_line(
    values: Sequence[float | None], width: int, scale: Scale | None = None, widen: int = 1
) -> str:
    """A one-row sparkline of at most `width` characters (gaps for missing values)."""
    columns = bucket(values, width)
    scale = scale or robust_scale(columns)
    columns = stretch(columns, width, widen)
    chars = []
    for v in columns:
        u = scale.unit(v)
        chars.append(" " if math.isnan(u) else BARS[min(len(BARS) - 1, int(u * len(BARS)))])
    return "".join(chars)


def spark_rows(
    values: Sequence[float | None],
    width: int,
    height: int,
    scale: Scale | None = None,
    widen: int = 1,
) -> list[str]:
    """A sparkline `height` rows tall drawn with eighth blocks, top row first."""
    height = max(1, height)
    columns = bucket(values, width)
    scale = scale or robust_scale(columns)
    columns = stretch(columns, width, widen)
    rows = [[" "] * len(columns) for _ in range(height)]
    for x, v in enumerate(columns):
        u = scale.unit(v)
        if math.isnan(u):
            continue
        # At least one eighth so that the lowest value is still visible as a bar.
        eighths = max(1, round(u * height * 8))
        for level in range(height):
            fill = min(8, max(0, eighths - level * 8))
            rows[height - 1 - level][x] = EIGHTHS[fill]
    return ["".join(r) for r in rows]


def shade_row(weights: Sequence[float], width: int) -> str:
    """A heatmap row of shade characters, scaled to the row's maximum, at most `width` wide."""
    if width <= 0 or not weights:
        return ""
    if len(weights) > width:
        # Keep the strongest expert of each slice visible rather than averaging it away.
        n = len(weights)
        weights = [
            max(weights[c * n // width : (c + 1) * n // width] or [0.0]) for c in range(width)
        ]
    top = max(weights)
    if top <= 0:
        return SHADES[0] * len(weights)
    last = len(SHADES) - 1
    return "".join(SHADES[min(last, math.ceil(w / top * last))] for w in weights)


def fit(text: str, width: int) -> str:
    """Shorten text to `width` cells at a word boundary, ending with an ellipsis."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width == 1:
        return ELLIPSIS
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space > 0:
        cut = cut[:space]
    # Only a first word longer than the width (a path, a long name) is cut inside the word.
    return cut.rstrip(" ,;:-·") + ELLIPSIS


def fit_at(text: str, width: int, separator: str) -> str:
    """Shorten text at the last `separator` that fits (pathways end at a layer boundary)."""
    if len(text) <= width:
        return text
    cut = text[: max(0, width - 1)]
    index = cut.rfind(separator)
    if index > 0:
        cut = cut[:index]
    return cut + ELLIPSIS


def join_fitting(parts: Sequence[str], width: int, separator: str = "  ") -> str:
    """Join parts left to right, dropping whole parts (never cutting one) that would not fit."""
    out = ""
    for part in parts:
        candidate = part if not out else out + separator + part
        if len(candidate) <= width:
            out = candidate
    return out


def number(value: float | None, digits: int = 4) -> str:
    """A compact number with `digits` significant digits; an en dash when missing."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e7 or magnitude < 1e-4:
        return f"{value:.{max(1, digits - 2)}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"


def signed(value: float | None, digits: int = 3) -> str:
    """A change with an explicit sign (U+2212 minus for negatives); an en dash when missing."""
    if value is None or not math.isfinite(value):
        return "–"
    text = number(abs(value), digits)
    return ("−" if value < 0 else "+") + text


def age(seconds: float | None) -> str:
    """A short age such as `42s`, `5m`, `3h`, `2d`; an en dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def duration(seconds: float | None) -> str:
    """A duration in seconds with one decimal, or an en dash."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    return f"{seconds:.1f}s" if seconds < 100 else f"{seconds:.0f}s"


def size_bytes(n_bytes: int | None) -> str:
    """A byte count in KB/MB/GB; an en dash when unknown."""
    if n_bytes is None:
        return "–"
    value = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
