"""The statistics of stage 6: compare a cohort before a fix with the cohort after it.

Every proportion here is a *failure rate*: the fraction of threads in a cohort (usually within
one intent) on which a failure signal fired. Lower is better unless a function is told
``expected_direction="increase"``. Nothing here touches the store: these are pure functions of
counts, so they can be tested by simulation and wired to cohorts elsewhere.

What is here, and why it is built the way it is:

* :func:`wilson_interval` / :func:`newcombe_diff_interval` -- score intervals (statsmodels). Wald
  intervals under-cover badly for small cohorts and rates near 0 (exactly our regime: a fix
  for a rare failure, checked on a few dozen threads); the Wilson and Newcombe hybrid score
  intervals stay close to nominal coverage and never leave [0, 1] / [-1, 1].
* :func:`compare_rates` -- the keep / revert / wait decision. *Keep* when the interval for
  ``after - before`` lies entirely on the good side of zero, *revert* when it lies entirely on
  the bad side, *wait* otherwise (and then: how many more threads per cohort the planned effect
  needs at 80 % power).
* Sequential looks. The loop re-checks a fix every time new threads arrive. Testing each time
  at a fixed 5 % would make a false keep/revert far likelier than 5 % over the life of a fix
  (about 14 % for five looks). We use **group-sequential alpha spending** with the Lan-DeMets
  O'Brien-Fleming-type function ``alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t))``, where ``t`` is
  the information fraction reached. The boundary for each look is solved exactly (recursive
  numerical integration of the joint null distribution of the look statistics, Armitage,
  McPherson & Rowe 1969), so the chance of *any* false decision over all looks is ``alpha``.
  Why this and not a Bayesian Beta-Binomial rule with a calibrated threshold: the spending
  approach gives the error guarantee by construction for any base rate and any look schedule
  (even unplanned ones, since ``alpha(t)`` only needs the current ``t``), whereas a Bayesian
  threshold must be re-calibrated by simulation for each base rate, cohort size and number of
  looks. O'Brien-Fleming spending is also conservative early (nearly nothing is spent on the
  first small cohort, when a handful of threads could swing the rate) and close to a fixed test
  at the end, so little power is lost. The Bayesian posterior probability is still offered by
  :func:`beta_binomial_posterior_prob_improvement`, for the report.
* :func:`mix_adjusted_rates` -- direct standardisation to the pooled intent mix, so that a
  shift of traffic toward an easy intent cannot fake an overall improvement.
* :func:`guardrail_check` -- intents other than the targeted one that got materially worse,
  with confidence: flagged for revert.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import integrate, optimize, special, stats
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
)

from loop_middleware.errors import ConfigError

__all__ = [
    "CohortComparison",
    "Decision",
    "Direction",
    "GuardrailFlag",
    "MixAdjusted",
    "RateEstimate",
    "beta_binomial_posterior_prob_improvement",
    "compare_rates",
    "guardrail_check",
    "information_fraction",
    "mix_adjusted_rates",
    "newcombe_diff_interval",
    "obf_alpha_spent",
    "sample_size_per_group",
    "sequential_boundaries",
    "wilson_interval",
]

Decision = Literal["keep", "revert", "wait"]
Direction = Literal["decrease", "increase"]
"""Which way is an improvement: ``decrease`` for failure rates (the default everywhere)."""


# --- validation ------------------------------------------------------------------------------


def _check_counts(x: int, n: int, what: str = "cohort") -> None:
    if isinstance(x, bool) or isinstance(n, bool):
        raise ConfigError(f"{what}: counts must be integers, got x={x!r}, n={n!r}")
    if n < 1:
        raise ConfigError(f"{what}: n must be >= 1 (an empty cohort has no rate), got n={n}")
    if not 0 <= x <= n:
        raise ConfigError(f"{what}: need 0 <= x <= n, got x={x}, n={n}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")


def _check_direction(direction: str) -> None:
    if direction not in ("decrease", "increase"):
        raise ConfigError(f"expected_direction must be 'decrease' or 'increase', got {direction!r}")


# --- intervals ---------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` at level ``1 - alpha``.

    Args:
        successes: Threads where the signal fired (the "successes" of the binomial).
        n: Threads in the cohort (>= 1).
        alpha: Two-sided error rate; 0.05 gives a 95 % interval.

    Returns:
        ``(low, high)``, both within [0, 1].

    Raises:
        ConfigError: on counts outside ``0 <= successes <= n``, ``n < 1`` or a bad alpha.
    """
    _check_counts(successes, n)
    _check_alpha(alpha)
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    # statsmodels can return -1e-17 / 1 + 1e-16 at the edges; clip so callers can rely on [0, 1].
    return max(0.0, float(low)), min(1.0, float(high))


def newcombe_diff_interval(
    x1: int, n1: int, x2: int, n2: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Newcombe hybrid score interval for the difference ``p2 - p1`` at level ``1 - alpha``.

    Group 1 is the *before* cohort and group 2 the *after* cohort, so a negative interval means
    the rate went down. (statsmodels' ``confint_proportions_2indep`` is for ``p1 - p2``; the
    groups are swapped in the call.) Newcombe's method 10 combines the two Wilson intervals;
    it keeps close to nominal coverage even for small cohorts and rates near 0 or 1.

    Returns:
        ``(low, high)``, both within [-1, 1].

    Raises:
        ConfigError: on invalid counts or alpha.
    """
    _check_counts(x1, n1, "group 1")
    _check_counts(x2, n2, "group 2")
    _check_alpha(alpha)
    low, high = confint_proportions_2indep(x2, n2, x1, n1, method="newcomb", alpha=alpha)
    return max(-1.0, float(low)), min(1.0, float(high))


def _two_proportion_p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z (score) test of ``p1 == p2``.

    Written out rather than taken from statsmodels because statsmodels emits divide-by-zero
    warnings when both cohorts are all-0 or all-1 (a real case: a signal that never fired);
    there the data carry no evidence of a difference, so the p-value is 1.
    """
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if var <= 0.0:
        return 1.0
    z = (x2 / n2 - x1 / n1) / math.sqrt(var)
    return float(2.0 * special.ndtr(-abs(z)))


# --- power ---------------------------------------------------------------------------------


def sample_size_per_group(
    p_before: float, effect: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Threads needed in *each* cohort to detect a change of ``effect`` in the rate.

    Uses Cohen's arcsine effect size ``h = 2 asin(sqrt(p_after)) - 2 asin(sqrt(p_before))``
    (statsmodels ``proportion_effectsize``; ``2 asin(sqrt(p_hat))`` has variance ``1/n``, so the
    estimate of ``h`` has variance ``2/n`` with ``n`` per cohort) and the two-sided normal power
    formula ``n = 2 * ((z_{1-alpha/2} + z_{power}) / h) ** 2``, which is what statsmodels
    ``NormalIndPower().solve_power(h, alpha=alpha, power=power)`` solves (it also counts the
    negligible chance of rejecting in the wrong direction, so it can differ by a fraction of a
    thread; the closed form is used because it is exact, instant and cannot fail to converge).

    Args:
        p_before: The current rate, in [0, 1].
        effect: The change to detect, *signed*: ``p_after - p_before`` (``-0.05`` = five points
            lower). ``p_before + effect`` must stay in [0, 1].
        alpha: Two-sided error rate of the test.
        power: Probability of detecting the effect when it is real.

    Returns:
        The per-cohort sample size, rounded up.

    Raises:
        ConfigError: on a zero effect, a target rate outside [0, 1], or a bad alpha / power.
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ConfigError(f"power must be in (0, 1), got {power}")
    if not 0.0 <= p_before <= 1.0:
        raise ConfigError(f"p_before must be in [0, 1], got {p_before}")
    p_after = p_before + effect
    if not 0.0 <= p_after <= 1.0:
        raise ConfigError(f"p_before + effect = {p_after} is not a rate in [0, 1]")
    h = float(proportion_effectsize(p_after, p_before))
    if h == 0.0:
        raise ConfigError("effect must be non-zero to size a comparison")
    z_total = float(special.ndtri(1.0 - alpha / 2.0) + special.ndtri(power))
    return math.ceil(2.0 * (z_total / abs(h)) ** 2)


# --- group-sequential alpha spending -------------------------------------------------------


def obf_alpha_spent(t: float, alpha: float = 0.05) -> float:
    """Cumulative two-sided alpha spent at information fraction ``t`` (Lan-DeMets O'Brien-Fleming).

    ``alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t))``: almost nothing early, exactly ``alpha`` at
    ``t = 1``. ``t <= 0`` spends nothing; ``t >= 1`` spends everything.
    """
    _check_alpha(alpha)
    if t <= 0.0:
        return 0.0
    t = min(t, 1.0)
    z = float(special.ndtri(1.0 - alpha / 2.0))
    return float(2.0 * special.ndtr(-z / math.sqrt(t)))


def information_fraction(after_n: int, max_after_n: int, *, before_n: int | None = None) -> float:
    """How much of the planned statistical information a look has, in [0, 1].

    When both cohorts grow together (``before_n`` omitted) this is ``after_n / max_after_n``.
    When the before cohort is a fixed baseline of ``before_n`` threads and only the after cohort
    grows, information is ``1 / Var(delta)``, proportional to ``1 / (1/before_n + 1/after_n)``,
    so ``t = (1/before_n + 1/max_after_n) / (1/before_n + 1/after_n)``. (The look statistics still
    have independent increments in that design, which the spending boundaries rely on.)
    Values past the plan are capped at 1.
    """
    if max_after_n < 1 or after_n < 0:
        raise ConfigError(f"need after_n >= 0 and max_after_n >= 1, got {after_n}, {max_after_n}")
    if after_n == 0:
        return 0.0
    if before_n is None:
        return min(1.0, after_n / max_after_n)
    if before_n < 1:
        raise ConfigError(f"before_n must be >= 1, got {before_n}")
    t = (1.0 / before_n + 1.0 / max_after_n) / (1.0 / before_n + 1.0 / after_n)
    return min(1.0, t)


# Grid resolution of the recursive integration: fine enough that the crossing probabilities
# match an independent multivariate-normal computation to ~1e-4 (checked in the tests), coarse
# enough that a five-look schedule takes a few tens of milliseconds (and it is cached).
_GRID_MIN = 401
_GRID_MAX = 4001
# A look that gets (numerically) no alpha has an infinite boundary; for the density carried to
# the next look the continuation region is truncated here (mass beyond 10 sd is < 1e-23).
_Z_TRUNCATE = 10.0


def _simpson_grid(half_width: float, n_min: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    n = max(n_min, math.ceil(2.0 * half_width / spacing) + 1)
    n = min(n, _GRID_MAX)
    if n % 2 == 0:
        n += 1
    x = np.linspace(-half_width, half_width, n)
    h = x[1] - x[0]
    w = np.full(n, 2.0)
    w[1::2] = 4.0
    w[0] = w[-1] = 1.0
    return x, w * (h / 3.0)


def _crossing(
    c: float, nodes: np.ndarray, density_w: np.ndarray, sd: float, root_t: float
) -> float:
    """Null probability of continuing to the previous look and then crossing ``|Z| >= c``."""
    upper = special.ndtr((nodes - c * root_t) / sd)
    lower = special.ndtr((-c * root_t - nodes) / sd)
    return float(np.dot(density_w, upper + lower))


@lru_cache(maxsize=256)
def _boundaries_cached(fractions: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    bounds: list[float] = []
    spent_before = 0.0
    # Work on the score scale S_k = Z_k * sqrt(t_k): under the null it is a Brownian motion in
    # information time, so its increments are independent N(0, t_k - t_{k-1}).
    nodes = np.zeros(0)
    density_w = np.zeros(0)  # density * quadrature weight on the continuation region
    t_prev = 0.0
    for k, t in enumerate(fractions):
        spent = obf_alpha_spent(t, alpha)
        increment = spent - spent_before
        if k == 0:
            c = float(special.ndtri(1.0 - spent / 2.0)) if spent > 0 else math.inf
            half = min(c, _Z_TRUNCATE) * math.sqrt(t)
            nodes, weights = _simpson_grid(half, _GRID_MIN, math.sqrt(t) / 40.0)
            density_w = weights * stats.norm.pdf(nodes, scale=math.sqrt(t))
        else:
            delta_t = t - t_prev
            if delta_t <= 1e-12:
                # No new information (callers validate this away): this look cannot decide.
                bounds.append(math.inf)
                continue
            sd = math.sqrt(delta_t)
            root_t = math.sqrt(t)
            args = (nodes, density_w, sd, root_t)
            if increment <= 1e-15:
                c = math.inf  # (numerically) no alpha for this look: it cannot decide
            elif increment >= _crossing(0.0, *args):
                c = 0.0  # more alpha than mass left: reject whatever is seen
            else:
                c = float(
                    optimize.brentq(
                        lambda c, a=args, inc=increment: _crossing(c, *a) - inc,
                        0.0,
                        40.0,
                        xtol=1e-10,
                    )
                )
            half = min(c, _Z_TRUNCATE) * root_t
            new_nodes, new_weights = _simpson_grid(half, _GRID_MIN, sd / 8.0)
            kernel = stats.norm.pdf((new_nodes[:, None] - nodes[None, :]) / sd) / sd
            density_w = new_weights * (kernel @ density_w)
            nodes = new_nodes
        bounds.append(c)
        spent_before = spent
        t_prev = t
    return tuple(bounds)


def sequential_boundaries(fractions: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Two-sided z boundaries of a group-sequential design with O'Brien-Fleming-type spending.

    Look ``k`` rejects "no change" when ``|Z_k| >= c_k``. Each ``c_k`` is solved so that, under
    the null, the probability of crossing for the first time at look ``k`` equals
    ``alpha(t_k) - alpha(t_{k-1})``; the chance of any false rejection over all looks is
    therefore ``alpha(t_last)`` (= ``alpha`` when the last fraction is 1).

    Args:
        fractions: Information fractions of the looks so far, strictly increasing, in (0, 1].
            Only past and current looks matter, so unplanned looks are fine.
        alpha: Total two-sided error rate to spend.

    Returns:
        The boundary of each look (``inf`` for a look that gets no alpha).
    """
    _check_alpha(alpha)
    fr = [float(f) for f in fractions]
    if not fr:
        raise ConfigError("need at least one look")
    if any(not 0.0 < f <= 1.0 for f in fr):
        raise ConfigError(f"information fractions must be in (0, 1], got {fr}")
    if any(b <= a for a, b in itertools.pairwise(fr)):
        raise ConfigError(f"information fractions must strictly increase, got {fr}")
    # Rounding makes the cache hit for schedules that differ by float noise.
    return list(_boundaries_cached(tuple(round(f, 10) for f in fr), float(alpha)))


# --- the comparison ------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateEstimate(_Frozen):
    """One cohort's failure rate with its Wilson interval."""

    x: int
    """Threads where the signal fired."""
    n: int
    """Threads in the cohort."""
    rate: float
    ci_low: float
    ci_high: float
    ci_level: float
    """Confidence level of ``[ci_low, ci_high]``, e.g. 0.95."""


def _rate_estimate(x: int, n: int, alpha: float) -> RateEstimate:
    low, high = wilson_interval(x, n, alpha)
    return RateEstimate(x=x, n=n, rate=x / n, ci_low=low, ci_high=high, ci_level=1.0 - alpha)


class CohortComparison(_Frozen):
    """The outcome of comparing a before cohort with an after cohort at one look."""

    metric: str
    """What the rate counts, e.g. ``failure_rate`` or a signal kind."""
    intent: str | None
    expected_direction: Direction
    before: RateEstimate
    after: RateEstimate
    delta: float
    """``after.rate - before.rate`` (negative = fewer failures)."""
    delta_ci: tuple[float, float]
    """Newcombe interval for ``delta`` at level ``delta_ci_level`` (the look's nominal level)."""
    delta_ci_level: float
    p_value: float
    """Two-sided pooled z-test p-value, *unadjusted* for repeated looks: for display. The
    decision uses ``delta_ci``, whose level is adjusted."""
    decision: Decision
    reason: str
    threads_needed_more: int | None
    """When waiting: extra threads per cohort for the planned (or else the observed) effect to
    be detected at the configured power. ``None`` when not waiting or not computable."""
    required_n_per_group: int | None
    """The per-cohort sample size behind ``threads_needed_more``."""
    look_index: int
    """1-based number of this look."""
    max_looks: int
    information_fraction: float
    alpha: float
    """Overall two-sided error rate across all looks."""
    alpha_spent: float
    """Cumulative alpha spent up to and including this look."""
    nominal_alpha: float
    """Two-sided level this look tests at (``1 - delta_ci_level``)."""
    final_look: bool


def _resolve_looks(
    looks: Sequence[float] | None, look_index: int | None, max_looks: int
) -> tuple[list[float], int]:
    if max_looks < 1:
        raise ConfigError(f"max_looks must be >= 1, got {max_looks}")
    if looks is not None:
        fractions = [float(f) for f in looks]
        if not fractions:
            raise ConfigError("looks must not be empty")
        if look_index is not None and look_index != len(fractions):
            raise ConfigError(
                f"look_index={look_index} disagrees with the {len(fractions)} looks given"
            )
        look_index = len(fractions)
    else:
        look_index = 1 if look_index is None else look_index
        if look_index < 1:
            raise ConfigError(f"look_index must be >= 1, got {look_index}")
        fractions = [j / max_looks for j in range(1, look_index + 1)]
    if look_index > max_looks:
        raise ConfigError(f"look {look_index} is past max_looks={max_looks}")
    if look_index == max_looks:
        # The last planned look spends whatever alpha is left, whatever information it reached.
        fractions[-1] = 1.0
    # Overruns past the plan are capped at 1: that look spends all the alpha left.
    fractions = [min(f, 1.0) for f in fractions]
    if 1.0 in fractions[:-1]:
        done = fractions.index(1.0) + 1
        raise ConfigError(
            f"look {done} already reached the planned information (t = 1) and spent all the "
            "alpha: the sequential comparison is over; start a new one with a new plan"
        )
    return fractions, look_index


def _fmt_pts(value: float) -> str:
    return f"{value * 100:+.1f} pts"


def compare_rates(
    before_x: int,
    before_n: int,
    after_x: int,
    after_n: int,
    *,
    metric: str = "failure_rate",
    intent: str | None = None,
    expected_direction: Direction = "decrease",
    planned_effect: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    min_n: int = 30,
    looks: Sequence[float] | None = None,
    look_index: int | None = None,
    max_looks: int = 1,
) -> CohortComparison:
    """Decide keep / revert / wait for a fix from the before and after cohorts' counts.

    The decision rule, at this look's nominal level ``1 - a_k``:

    * **keep** -- the Newcombe interval for ``after - before`` lies entirely on the good side of
      0 (below it for a failure rate): an improvement, with confidence;
    * **revert** -- it lies entirely on the bad side: worse, with confidence;
    * **wait** -- otherwise, or while either cohort has fewer than ``min_n`` threads (normal
      approximations and a handful of threads do not mix).

    Repeated looks: with ``max_looks = K`` the error rate ``alpha`` is spent across the looks by
    the O'Brien-Fleming-type Lan-DeMets function, so the chance of any false keep/revert over all
    the looks stays at ``alpha``. Give either ``look_index`` (looks assumed equally spaced in
    information, ``t_j = j / K``) or ``looks``, the information fractions of every look so far
    including this one (see :func:`information_fraction`; store them, they fix the boundaries).
    The last planned look spends all the alpha that is left, and so does a look whose information
    fraction reaches 1 early (looking again after that raises). With the default
    ``max_looks=1`` this is an ordinary fixed test at level ``alpha``.

    ``threads_needed_more`` is sized for a fixed design at ``alpha``; an O'Brien-Fleming design
    with a few looks needs about 2-3 % more threads for the same power.

    Args:
        before_x, before_n: Failures and threads before the fix.
        after_x, after_n: Failures and threads after the fix.
        metric: Label for the report.
        intent: Label for the report (the intent the cohorts are restricted to).
        expected_direction: ``decrease`` when lower is better (failure rates).
        planned_effect: The improvement the fix is meant to make, as a positive size in rate
            units (0.05 = five points). Used to size the cohorts when waiting; when omitted the
            observed change is used instead.
        alpha: Overall two-sided error rate (across all looks).
        power: Power for ``threads_needed_more``.
        min_n: Below this many threads in either cohort the answer is ``wait``.
        looks: Information fractions of the looks so far (strictly increasing, in (0, 1]).
        look_index: 1-based number of this look, when ``looks`` is not given.
        max_looks: Planned number of looks.

    Returns:
        A :class:`CohortComparison` with both rates, the difference, its interval, the decision
        and a one-line reason.

    Raises:
        ConfigError: on invalid counts, levels or look schedule.
    """
    _check_counts(before_x, before_n, "before")
    _check_counts(after_x, after_n, "after")
    _check_alpha(alpha)
    _check_direction(expected_direction)
    if planned_effect is not None and not 0.0 < planned_effect < 1.0:
        raise ConfigError(
            f"planned_effect must be a positive rate change < 1, got {planned_effect}"
        )
    if min_n < 0:
        raise ConfigError(f"min_n must be >= 0, got {min_n}")

    fractions, look_index = _resolve_looks(looks, look_index, max_looks)
    bound = sequential_boundaries(fractions, alpha)[-1]
    nominal = float(2.0 * special.ndtr(-bound)) if math.isfinite(bound) else 0.0
    spent = obf_alpha_spent(fractions[-1], alpha)
    final = look_index == max_looks

    before = _rate_estimate(before_x, before_n, alpha)
    after = _rate_estimate(after_x, after_n, alpha)
    delta = after.rate - before.rate
    if nominal > 0.0:
        ci = newcombe_diff_interval(before_x, before_n, after_x, after_n, alpha=nominal)
    else:
        ci = (-1.0, 1.0)  # a look with no alpha cannot exclude anything
    p_value = _two_proportion_p_value(before_x, before_n, after_x, after_n)

    # "good" is the sign of an improvement: -1 when the rate should go down.
    good = -1.0 if expected_direction == "decrease" else 1.0
    good_side = ci[1] < 0.0 if good < 0 else ci[0] > 0.0
    bad_side = ci[0] > 0.0 if good < 0 else ci[1] < 0.0
    where = (
        f"after {after.rate:.3f} vs before {before.rate:.3f} ({_fmt_pts(delta)}, "
        f"{(1 - nominal) * 100:.2f}% CI {_fmt_pts(ci[0])} to {_fmt_pts(ci[1])}; "
        f"look {look_index}/{max_looks})"
    )

    decision: Decision
    needed: int | None = None
    required: int | None = None
    small = min(before_n, after_n)
    if small < min_n:
        decision = "wait"
        reason = f"too few threads (min {min_n} per cohort, smallest has {small}): {where}"
    elif good_side:
        decision, reason = "keep", f"improvement with confidence: {where}"
    elif bad_side:
        decision, reason = "revert", f"worse with confidence: {where}"
    else:
        decision = "wait"
        reason = f"no confident change yet: {where}"

    if decision == "wait":
        # Size the cohorts for the planned effect; without one, for the change actually seen.
        if planned_effect is not None:
            effect, basis = good * planned_effect, "the planned"
        elif delta != 0.0:
            effect, basis = delta, "the observed"
        else:
            effect, basis = 0.0, ""
        if effect != 0.0:
            try:
                required = sample_size_per_group(before.rate, effect, alpha=alpha, power=power)
            except ConfigError:
                required = None  # e.g. the planned drop is larger than the current rate
        if required is not None:
            shortfall = max(required - small, min_n - small)
            if shortfall > 0:
                needed = shortfall
                detect = f"{basis} {_fmt_pts(effect)} at {power:.0%} power"
                # Say which bound sets the goal: the power calculation or the minimum cohort.
                goal = (f"{required} each to detect {detect}" if required >= min_n else
                        f"{required} each would detect {detect}, but a cohort needs at least {min_n}")
                reason += f"; about {needed} more threads per cohort ({goal})"
            else:
                reason += (
                    f"; cohorts already exceed the {required} per cohort needed for {basis} "
                    f"{_fmt_pts(effect)}: any real effect is likely smaller"
                )
        if final and max_looks > 1:
            reason += "; this was the last planned look: the fix has not shown an effect"

    return CohortComparison(
        metric=metric,
        intent=intent,
        expected_direction=expected_direction,
        before=before,
        after=after,
        delta=delta,
        delta_ci=ci,
        delta_ci_level=1.0 - nominal,
        p_value=p_value,
        decision=decision,
        reason=reason,
        threads_needed_more=needed,
        required_n_per_group=required,
        look_index=look_index,
        max_looks=max_looks,
        information_fraction=fractions[-1],
        alpha=alpha,
        alpha_spent=spent,
        nominal_alpha=nominal,
        final_look=final,
    )


# --- intent mix ----------------------------------------------------------------------------


class MixAdjusted(NamedTuple):
    """Overall rates standardised to one intent mix (unpacks as a 3-tuple)."""

    before: float
    after: float
    delta: float
    """``after - before``."""


def mix_adjusted_rates(
    before: Mapping[str, tuple[int, int]],
    after: Mapping[str, tuple[int, int]],
    *,
    on_missing: Literal["drop", "raise"] = "drop",
) -> MixAdjusted:
    """Overall before/after rates by direct standardisation to the pooled intent mix.

    The naive overall rate is a mix-weighted average of per-intent rates, so it "improves"
    whenever traffic shifts toward an intent that fails less, even if nothing changed. Here both
    cohorts are re-weighted to the same standard mix, ``w_i = (n_before_i + n_after_i) / N``, so
    the adjusted delta moves only when per-intent rates move.

    Args:
        before: ``{intent: (failures, threads)}`` for the before cohort.
        after: The same for the after cohort.
        on_missing: Intents without threads on both sides cannot be standardised: ``drop`` leaves
            them out of the standard (and of both rates), ``raise`` refuses.

    Returns:
        ``MixAdjusted(before, after, delta)``.

    Raises:
        ConfigError: on invalid counts, a missing intent with ``on_missing="raise"``, or when no
            intent is present on both sides.
    """
    for name, (x, n) in before.items():
        if n:
            _check_counts(x, n, f"before[{name!r}]")
    for name, (x, n) in after.items():
        if n:
            _check_counts(x, n, f"after[{name!r}]")
    shared = sorted(k for k in before.keys() & after.keys() if before[k][1] > 0 and after[k][1] > 0)
    missing = sorted((before.keys() | after.keys()) - set(shared))
    if missing and on_missing == "raise":
        raise ConfigError(f"intents without threads in both cohorts: {missing}")
    if not shared:
        raise ConfigError("no intent has threads in both cohorts; nothing to standardise")
    weights = np.array([before[k][1] + after[k][1] for k in shared], dtype=float)
    weights /= weights.sum()
    rate_before = np.array([before[k][0] / before[k][1] for k in shared])
    rate_after = np.array([after[k][0] / after[k][1] for k in shared])
    adj_before = float(weights @ rate_before)
    adj_after = float(weights @ rate_after)
    return MixAdjusted(adj_before, adj_after, adj_after - adj_before)


# --- guardrails ----------------------------------------------------------------------------


class GuardrailFlag(_Frozen):
    """An intent other than the targeted one that got worse: flag for revert."""

    intent: str
    before: RateEstimate
    after: RateEstimate
    delta: float
    delta_ci: tuple[float, float]
    reason: str


def guardrail_check(
    per_intent: Mapping[str, tuple[tuple[int, int], tuple[int, int]]],
    target_intent: str,
    harm_threshold: float = 0.05,
    min_n: int = 30,
    alpha: float = 0.05,
    *,
    expected_direction: Direction = "decrease",
    bonferroni: bool = False,
) -> list[GuardrailFlag]:
    """Flag the *other* intents that got worse by at least ``harm_threshold``, with confidence.

    An intent is flagged when (1) both its cohorts have at least ``min_n`` threads, (2) its
    observed change is at least ``harm_threshold`` in the bad direction (so tiny but
    well-measured drifts on huge intents do not block a fix), and (3) its Newcombe interval at
    level ``1 - alpha`` lies entirely on the bad side of zero. Requiring the whole interval to
    clear the threshold instead would need thousands of threads per intent to ever fire.

    Args:
        per_intent: ``{intent: ((before_x, before_n), (after_x, after_n))}``.
        target_intent: The intent the fix aimed at; judged by :func:`compare_rates`, skipped here.
        harm_threshold: Smallest change (rate units) worth a revert.
        min_n: Intents with fewer threads on either side are skipped (too noisy to accuse).
        alpha: Two-sided level of each interval.
        expected_direction: ``decrease`` when lower is better.
        bonferroni: Divide ``alpha`` by the number of intents checked. Off by default: a
            guardrail errs on the side of flagging; turn it on when checking many intents.

    Returns:
        The flagged intents, worst first (empty when nothing got worse).
    """
    _check_alpha(alpha)
    _check_direction(expected_direction)
    if harm_threshold < 0.0:
        raise ConfigError(f"harm_threshold must be >= 0, got {harm_threshold}")
    checked = {
        name: counts
        for name, counts in per_intent.items()
        if name != target_intent and min(counts[0][1], counts[1][1]) >= max(min_n, 1)
    }
    level = alpha / len(checked) if bonferroni and checked else alpha
    bad = 1.0 if expected_direction == "decrease" else -1.0
    flags: list[GuardrailFlag] = []
    for name, ((bx, bn), (ax, an)) in checked.items():
        _check_counts(bx, bn, f"before[{name!r}]")
        _check_counts(ax, an, f"after[{name!r}]")
        delta = ax / an - bx / bn
        low, high = newcombe_diff_interval(bx, bn, ax, an, alpha=level)
        confident = low > 0.0 if bad > 0 else high < 0.0
        if bad * delta >= harm_threshold and confident:
            flags.append(
                GuardrailFlag(
                    intent=name,
                    before=_rate_estimate(bx, bn, level),
                    after=_rate_estimate(ax, an, level),
                    delta=delta,
                    delta_ci=(low, high),
                    reason=(
                        f"{name}: {bx / bn:.3f} -> {ax / an:.3f} ({_fmt_pts(delta)}, "
                        f"{(1 - level) * 100:.1f}% CI {_fmt_pts(low)} to {_fmt_pts(high)}) "
                        f"is worse by at least {harm_threshold * 100:.1f} pts: flag for revert"
                    ),
                )
            )
    flags.sort(key=lambda f: bad * f.delta, reverse=True)
    return flags


# --- Bayesian ------------------------------------------------------------------------------


def beta_binomial_posterior_prob_improvement(
    bx: int,
    bn: int,
    ax: int,
    an: int,
    *,
    prior: tuple[float, float] = (1.0, 1.0),
    expected_direction: Direction = "decrease",
    method: Literal["exact", "draws"] = "exact",
    draws: int = 200_000,
    rng: np.random.Generator | None = None,
) -> float:
    """Posterior probability that the after rate is better than the before rate.

    Each rate gets an independent ``Beta(prior)`` prior, so the posteriors are
    ``Beta(a + x, b + n - x)``; the result is ``P(p_after < p_before | data)`` (or ``>`` for
    ``expected_direction="increase"``). Handy for the report ("92 % likely the fix helped"); the
    keep/revert decision uses :func:`compare_rates`, whose error rate is controlled.

    Args:
        bx, bn, ax, an: Failures and threads, before and after (``n = 0`` means prior only).
        prior: ``(a, b)`` of the Beta prior; ``(1, 1)`` is uniform.
        method: ``exact`` integrates ``E[F_after(p_before)]`` numerically (in the quantile
            domain of ``p_before``, where the integrand is smooth and bounded); ``draws`` is
            Monte Carlo with ``draws`` samples from ``rng``.

    Raises:
        ConfigError: on invalid counts or prior.
    """
    for x, n, what in ((bx, bn, "before"), (ax, an, "after")):
        if n != 0:
            _check_counts(x, n, what)
        elif x != 0:
            raise ConfigError(f"{what}: x must be 0 when n is 0")
    _check_direction(expected_direction)
    a, b = prior
    if a <= 0 or b <= 0:
        raise ConfigError(f"prior parameters must be > 0, got {prior}")
    post_before = stats.beta(a + bx, b + bn - bx)
    post_after = stats.beta(a + ax, b + an - ax)
    if method == "draws":
        if draws < 1:
            raise ConfigError(f"draws must be >= 1, got {draws}")
        gen = rng if rng is not None else np.random.default_rng()
        pb = gen.beta(a + bx, b + bn - bx, size=draws)
        pa = gen.beta(a + ax, b + an - ax, size=draws)
        p_lower = float(np.mean(pa < pb))
    elif method == "exact":
        # P(p_after < p_before) = E[F_after(p_before)] = integral over u in (0,1) of
        # F_after(Q_before(u)). Split at the quartiles so quad sees the steep part.
        def integrand(u: float) -> float:
            return float(post_after.cdf(post_before.ppf(u)))

        pieces = (0.0, 0.25, 0.5, 0.75, 1.0)
        p_lower = sum(
            float(integrate.quad(integrand, lo, hi, epsabs=1e-11, epsrel=1e-9, limit=200)[0])
            for lo, hi in itertools.pairwise(pieces)
        )
        p_lower = min(1.0, max(0.0, p_lower))
    else:
        raise ConfigError(f"method must be 'exact' or 'draws', got {method!r}")
    # Continuous posteriors: P(equal) = 0, so "increase" is the complement.
    return p_lower if expected_direction == "decrease" else 1.0 - p_lower
