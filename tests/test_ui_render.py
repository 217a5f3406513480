"""Drawing rules: robust scaling, sparklines, heatmaps, and text that is never cut mid-word."""

from __future__ import annotations

import math

import pytest

from grokwatch.ui import render


def test_robust_scale_clips_a_wild_early_point() -> None:
    values = [-1.8, *[0.15 + 0.01 * i for i in range(30)]]
    scale = render.robust_scale(values)
    assert scale.n_clipped == 1
    assert scale.low == pytest.approx(0.15)
    assert scale.unit(-1.8) == 0.0 and scale.unit(scale.high) == 1.0


def test_robust_scale_keeps_a_real_trend_visible() -> None:
    # An exponential loss drop: at most ~5% of points may be clipped, the rest spans the range.
    values = [1.5 + 3.0 * math.exp(-6 * i / 99) for i in range(100)]
    scale = render.robust_scale(values)
    assert scale.n_clipped <= 4
    assert scale.high > 3.5


def test_robust_scale_degenerate_inputs() -> None:
    assert render.robust_scale([]) == render.Scale(0.0, 1.0, 0)
    flat = render.robust_scale([2.0, 2.0, 2.0])
    assert flat.unit(2.0) == 0.5
    assert render.robust_scale([None, math.nan, 1.0, 3.0]).n_clipped == 0


def test_spark_rows_shape_gaps_and_order() -> None:
    rows = render.spark_rows([0.0, 1.0, math.nan, 0.5], width=10, height=3)
    assert len(rows) == 3 and all(len(r) == 4 for r in rows)
    assert [r[1] for r in rows] == ["█", "█", "█"]  # the maximum fills the column
    assert [r[2] for r in rows] == [" ", " ", " "]  # missing value: a gap
    assert rows[-1][0] == "▁"  # the minimum is still visible
    assert render.spark_rows(list(range(100)), width=10, height=1)[0] == "▁▁▂▃▄▄▅▆▇█"


def test_sparkline_widens_few_points_and_buckets_many() -> None:
    assert len(render.spark_line([1, 2, 3], width=20, widen=3)) == 9
    assert len(render.spark_line(list(range(1000)), width=40)) == 40
    first, second = render.bucket([1.0, 3.0, None, None], 2)
    assert first == 2.0 and math.isnan(second)


def test_shade_row_scales_to_row_max_and_keeps_peaks() -> None:
    assert render.shade_row([0.0, 0.25, 0.5, 1.0], 10) == " ░▒█"
    assert render.shade_row([0.0] * 64 + [1.0], 16)[-1] == "█"
    assert render.shade_row([0.0, 0.0], 4) == "  "


@pytest.mark.parametrize("width", range(17, 80))
def test_fit_never_cuts_a_word_once_the_first_word_fits(width: int) -> None:
    text = "checkpoint-12500 failed: incomplete: model.safetensors is 3.1 MB of 6.2 MB"
    out = render.fit(text, width)
    assert len(out) <= width
    if out != text:
        prefix = out[:-1]
        assert out.endswith("…") and text.startswith(prefix)
        assert text[len(prefix)] in " :,"  # the cut is at a word boundary


def test_fit_shortens_a_single_long_word_with_an_ellipsis() -> None:
    assert render.fit("checkpoint-12500", 8) == "checkpo…"
    assert render.fit("abc", 1) == "…" and render.fit("abc", 0) == ""


def test_fit_at_layer_boundary() -> None:
    assert render.fit_at("3,1,5-9,1-4-12,7", 12, "-") == "3,1,5-9,1…"
    assert render.fit_at("3,1", 12, "-") == "3,1"


def test_join_fitting_drops_whole_parts() -> None:
    assert render.join_fitting(["aaaa", "bbbbbbbb", "cc"], 10) == "aaaa  cc"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "–"),
        (math.nan, "–"),
        (0.0, "0"),
        (1.58081, "1.581"),
        (68.3821, "68.38"),
        (0.000361, "0.0003610"),
        (1234567.0, "1234567"),
        (-0.5, "-0.5000"),
    ],
)
def test_number(value: float | None, text: str) -> None:
    assert render.number(value) == text


def test_signed_age_duration_size() -> None:
    assert render.signed(-0.676) == "−0.676" and render.signed(0.01) == "+0.0100"
    assert render.signed(None) == "–"
    assert [render.age(s) for s in (5, 90, 7200, 200000, None)] == ["5s", "1m", "2h", "2d", "–"]
    assert render.duration(2.64) == "2.6s" and render.duration(None) == "–"
    assert render.size_bytes(512 * 1024 * 1024) == "512.0 MB"


def test_float_noise_draws_flat_not_as_a_cliff():
    from grokwatch.ui.render import robust_scale

    scale = robust_scale([4.652 + 1e-7 * i for i in range(14)])
    units = [scale.unit(4.652 + 1e-7 * i) for i in range(14)]
    assert max(units) - min(units) < 0.01
    wide = robust_scale([1.0, 2.0])
    assert (wide.unit(1.0), wide.unit(2.0)) == (0.0, 1.0)
