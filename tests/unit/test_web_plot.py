"""The web view's SVG plots: every point drawn for short series, the envelope for long ones."""

from __future__ import annotations

import math
import re

from simvue_otel._internal.server.web import svg_plot


def test_short_series_draw_every_point() -> None:
    svg = svg_plot([(float(i), i * 0.5) for i in range(37)], x_label="step")
    assert 'data-points="37"' in svg and 'data-drawn="37"' in svg
    assert svg.count('class="pt"') == 37


def test_long_series_draw_their_envelope_and_keep_spikes() -> None:
    points = [(float(i), math.sin(i / 1000)) for i in range(100_000)]
    points[54_321] = (54_321.0, 50.0)  # one spike among 100,000 points
    svg = svg_plot(points, x_label="step")
    assert 'data-points="100000"' in svg
    drawn = int(re.search(r'data-drawn="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    assert 2000 <= drawn <= 4000
    assert 'class="pt"' not in svg, "no circle per point for long series"
    assert ">50<" in svg, "the spike sets the top of the y axis"
    assert len(svg) < 100_000, "the page stays small"


def test_non_finite_values_are_left_out_of_the_drawing() -> None:
    svg = svg_plot([(0.0, 1.0), (1.0, math.nan), (2.0, math.inf), (3.0, 2.0)], x_label="step")
    assert 'data-points="4"' in svg and 'data-drawn="2"' in svg
    assert svg_plot([(0.0, math.nan)], x_label="step").count("no finite values") == 1
