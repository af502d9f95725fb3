"""Seeds where the answer is unclear: a group-sequential confirmation with its error fixed in advance.

The verdict retrains both arms with `confirm_seeds` fresh seeds (the first look). When the interval neither
excludes 0 nor has become futile, it adds a wave of seeds and looks again, up to `confirm_max_seeds`. Looking
more than once and stopping when the interval first excludes 0 would say "helps" falsely more often than 5%
of the time; so the 5% is spent across the planned looks in advance (Lan-DeMets alpha spending with the
O'Brien-Fleming shape, alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), t the fraction of the seeds run): the
first looks use a stricter level and the last one nearly 95%. The interval printed at a look is that look's
(a repeated confidence interval: it holds at every look at once with probability >= 95%).

Futility (non-binding, so it cannot raise the false-"helps" rate): stop adding seeds when the chance that the
last look decides, if the true difference were the one observed so far, is below 10% (conditional power at the
seed spread seen): more seeds would very likely not decide. `bench/bench_sequential.py` checks both by simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import multivariate_normal, norm

from selftune.search.intervals import t_quantile

ALPHA = 0.05  # the error spent over all looks: 95% intervals
FUTILITY_POWER = 0.10  # stop adding seeds when the chance the last look decides, at the observed trend, is below this


def looks(first: int, most: int) -> list[int]:
    """The seeds run at each look: `first`, then waves of `first` more, the last capped at `most`
    (3, 5 -> [3, 5]; 2, 8 -> [2, 4, 6, 8]; 3, 3 -> [3])."""
    if first < 1 or most < first:
        raise ValueError(f"looks need 1 <= first <= most, got {first}, {most}")
    out = [first]
    while out[-1] < most:
        out.append(min(most, out[-1] + first))
    return out


def wave_seconds(seeds: int, st_s: float, sup_s: float, concurrent: int) -> float:
    """Seconds a look adding `seeds` seeds per arm takes: both arms' runs (`st_s`, `sup_s` seconds each) on
    `concurrent` slots, and at least one run."""
    return max(seeds * (st_s + sup_s) / max(1, concurrent), st_s, sup_s)


def spent(t: float, alpha: float = ALPHA) -> float:
    """The error spent by information fraction `t` (O'Brien-Fleming-shaped Lan-DeMets spending)."""
    if t <= 0:
        return 0.0
    return float(2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / math.sqrt(t)))


def nominal_alphas(seeds_at_looks: list[int], alpha: float = ALPHA) -> list[float]:
    """Each look's two-sided nominal level: boundaries c_k on the z scale such that the chance of crossing by
    look k with no true difference is `spent(t_k)` (z statistics of Brownian motion: corr sqrt(t_i / t_j))."""
    n_max = seeds_at_looks[-1]
    t = [n / n_max for n in seeds_at_looks]
    bounds: list[float] = []
    for k, tk in enumerate(t):
        if k == 0:
            bounds.append(float(norm.ppf(1 - spent(tk, alpha) / 2)))
            continue
        cov = [[math.sqrt(min(a, b) / max(a, b)) for b in t[: k + 1]] for a in t[: k + 1]]
        mvn = multivariate_normal(mean=[0.0] * (k + 1), cov=cov)
        target = 1 - spent(tk, alpha)  # P(no crossing at looks 1..k)

        def stay(c: float, k: int = k, mvn: multivariate_normal = mvn, target: float = target) -> float:
            upper = [*bounds[:k], c]
            return float(mvn.cdf(upper, lower_limit=[-u for u in upper])) - target

        bounds.append(float(brentq(stay, 0.5, 10.0, xtol=1e-6)))
    return [float(2 * (1 - norm.cdf(c))) for c in bounds]


@dataclass(frozen=True)
class Look:
    """A look's decision: stop (and why) or add the next wave."""

    stop: bool
    reason: str  # decided | futile | max seeds | one seed | "" (go on)


def decide(low: float, high: float, mean: float, *, seeds: int, seeds_next: int | None, spread: float,
           image_half_width: float, last_alpha: float, most: int | None = None) -> Look:
    """After a look whose interval is [low, high]: stop when it excludes 0; at the last planned look; or when
    futile: the chance that the final look (`most` seeds, default `seeds_next`) excludes 0, if the true
    difference were the one observed, is below FUTILITY_POWER (conditional power: the seeds still to come drawn
    at the spread seen, `spread` the paired differences' standard deviation, the final half-width at the last
    look's level combined with the images' `image_half_width`, given at that level too, as the interval does). One seed sees no training noise: it never
    decides and is never futile (it has no spread to project)."""
    if seeds >= 2 and (low > 0 or high < 0):
        return Look(True, "decided")
    if seeds_next is None:
        return Look(True, "max seeds" if seeds >= 2 else "one seed")
    if seeds < 2 or not math.isfinite(spread):
        return Look(False, "")
    if conditional_power(mean, spread, image_half_width, seeds, most or seeds_next, last_alpha) < FUTILITY_POWER:
        return Look(True, "futile")
    return Look(False, "")


def conditional_power(mean: float, spread: float, image_half_width: float, seeds: int, most: int,
                      alpha: float) -> float:
    """P(the interval at `most` seeds excludes 0 | the difference is `mean`, `seeds` of them run so far)."""
    final_hw = math.hypot(t_quantile(most - 1, 1 - alpha / 2) * spread / math.sqrt(most), image_half_width)
    sd_final = spread * math.sqrt(most - seeds) / most  # the final mean's spread given the seeds run so far
    if sd_final <= 0:
        return float(abs(mean) > final_hw)
    m = abs(mean)
    return float(norm.cdf((m - final_hw) / sd_final) + norm.cdf((-final_hw - m) / sd_final))


def seeds_needed(mean: float, spread: float, image_half_width: float, alpha: float = ALPHA,
                 most: int = 1000) -> int | None:
    """The fewest seeds per arm whose 1 - alpha interval around `mean`, at the seed spread and image half-width
    seen, would exclude 0; None when even `most` would not (the images' own width is larger than the effect)."""
    if not (math.isfinite(mean) and math.isfinite(spread)) or abs(mean) <= image_half_width:
        return None
    for n in range(2, most + 1):
        if math.hypot(t_quantile(n - 1, 1 - alpha / 2) * spread / math.sqrt(n), image_half_width) < abs(mean):
            return n
    return None


__all__ = ["ALPHA", "FUTILITY_POWER", "Look", "conditional_power", "decide", "looks", "nominal_alphas", "seeds_needed", "spent"]
