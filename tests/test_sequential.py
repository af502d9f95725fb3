"""The sequential verdict: its looks, the error spent across them, its stopping rules, and (by a small simulation)
that "helps" is not said falsely more than 5% of the time when there is no difference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.bench_sequential import hit_rate, sequential_verdict, simulate
from selftune.search import sequential


def test_the_looks_are_waves_of_the_first_look_capped_at_the_most() -> None:
    assert sequential.looks(3, 5) == [3, 5]
    assert sequential.looks(2, 8) == [2, 4, 6, 8]
    assert sequential.looks(3, 3) == [3]
    with pytest.raises(ValueError):
        sequential.looks(4, 3)


def test_the_levels_spend_exactly_five_percent_across_the_looks() -> None:
    from scipy.stats import multivariate_normal, norm

    for planned in ([5, 10], [3, 5], [2, 4, 6, 8]):
        alphas = sequential.nominal_alphas(planned)
        assert alphas[0] == pytest.approx(sequential.spent(planned[0] / planned[-1]), rel=1e-6)
        c = [norm.ppf(1 - a / 2) for a in alphas]
        t = [n / planned[-1] for n in planned]
        cov = [[np.sqrt(min(a, b) / max(a, b)) for b in t] for a in t]
        stay = multivariate_normal(mean=[0.0] * len(t), cov=cov).cdf(c, lower_limit=[-x for x in c])
        assert 1 - stay == pytest.approx(0.05, abs=2e-4)  # the chance of any crossing with no difference
        assert all(x < y for x, y in itertools.pairwise(alphas)) and alphas[-1] < 0.05
    assert sequential.spent(0.5) == pytest.approx(0.00557, abs=1e-5)  # 2 - 2 Phi(1.96 / sqrt(0.5))
    assert sequential.nominal_alphas([3]) == [pytest.approx(0.05)]  # one look: plain 95%


def test_stop_rules() -> None:
    go = dict(seeds=3, seeds_next=5, spread=0.03, image_half_width=0.01, last_alpha=0.045)
    assert sequential.decide(0.01, 0.05, 0.03, **go).reason == "decided"
    assert sequential.decide(-0.05, -0.01, -0.03, **go).reason == "decided"
    assert sequential.decide(-0.04, 0.045, 0.002, **go).reason == "futile"  # ~0 and wide: 2 more seeds cannot decide
    assert not sequential.decide(-0.005, 0.075, 0.035, **go).stop  # a trend worth two more seeds
    assert sequential.decide(-0.005, 0.075, 0.035, **{**go, "seeds_next": None}).reason == "max seeds"
    one = dict(go, seeds=1, spread=float("nan"))
    assert not sequential.decide(0.1, 0.2, 0.15, **one).stop  # one seed never decides: add seeds


def test_seeds_needed_follows_the_spread_and_stops_at_the_images_width() -> None:
    assert sequential.seeds_needed(0.03, 0.025, 0.01) == 6  # t(5) 2.571 x 2.5 / sqrt 6 = 2.62, with 1: 2.81 < 3
    assert sequential.seeds_needed(0.03, 0.05, 0.01) > 6
    assert sequential.seeds_needed(0.005, 0.02, 0.01) is None  # the images' own width is larger than the effect


def test_no_difference_rarely_reads_helps_in_a_small_simulation() -> None:
    """300 simulated confirmations with no true difference: helps at most ~5% (2.5% expected on one side)."""
    rng = np.random.default_rng(3)
    planned = sequential.looks(3, 5)
    alphas = sequential.nominal_alphas(planned)
    helps = 0
    for i in range(300):
        a, b = simulate(rng, 0.0, 5, 20, 0.018, 0.1, 0.045)
        outcome, _ = sequential_verdict(a, b, planned, alphas, draws=400, seed=i)
        helps += outcome == "helps"
    assert helps / 300 <= 0.06, helps
    assert hit_rate(np.array([[7, 3], [0, 0]])) == pytest.approx(0.7)
