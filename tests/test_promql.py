"""Counter and histogram arithmetic behaves like PromQL's rate() and histogram_quantile()."""

import math

import pytest

from servescope.analysis.promql import (
    histogram_delta,
    histogram_quantile,
    increase,
    rate,
    rates,
    resets,
)

INF = math.inf


def test_increase_counts_a_reset_as_a_restart_from_zero():
    # 10 -> 30 (+20), restart -> 5 (+5), 5 -> 15 (+10)
    points = [(0, 10.0), (1, 30.0), (2, 5.0), (3, 15.0)]
    assert increase(points) == 35.0
    assert resets(points) == 1
    assert rate(points) == pytest.approx(35.0 / 3)


def test_rates_never_go_negative_across_a_reset():
    points = [(0, 100.0), (2, 120.0), (4, 3.0), (6, 9.0)]
    assert rates(points) == [(2, 10.0), (4, 1.5), (6, 3.0)]


def test_rate_needs_two_points():
    assert rate([(0, 1.0)]) is None


def test_quantile_interpolates_inside_the_bucket():
    # 10 observations <= 0.1, 30 more <= 0.5, 10 more <= 1.0
    buckets = [(0.1, 10), (0.5, 40), (1.0, 50), (INF, 50)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (25 - 10) / 30)
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.05)  # lowest bucket from 0
    assert histogram_quantile(1.0, buckets) == pytest.approx(1.0)


def test_quantile_in_the_inf_bucket_answers_the_highest_finite_bound():
    buckets = [(0.1, 1), (1.0, 2), (INF, 10)]
    assert histogram_quantile(0.99, buckets) == 1.0


def test_quantile_of_an_empty_histogram_is_none():
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None


def test_histogram_delta_and_reset():
    old = [(0.1, 5), (1.0, 8), (INF, 9)]
    new = [(0.1, 7), (1.0, 12), (INF, 14)]
    assert histogram_delta(old, new) == [(0.1, 2), (1.0, 4), (INF, 5)]
    restarted = [(0.1, 1), (1.0, 1), (INF, 2)]
    assert histogram_delta(old, restarted) == restarted
