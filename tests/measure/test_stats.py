"""Simulation tests for the stage-6 statistics (keep / revert / wait).

All randomness comes from seeded numpy Generators, so the numbers are reproducible; the
tolerances are set from the Monte-Carlo standard errors, not from a past run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import special, stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
)

from loop_middleware.errors import ConfigError
from loop_middleware.measure._stats import (
    CohortComparison,
    beta_binomial_posterior_prob_improvement,
    compare_rates,
    guardrail_check,
    information_fraction,
    mix_adjusted_rates,
    newcombe_diff_interval,
    obf_alpha_spent,
    sample_size_per_group,
    sequential_boundaries,
    wilson_interval,
)

ALPHA = 0.05


def _mc_se(p: float, reps: int) -> float:
    return math.sqrt(p * (1 - p) / reps)


# --- decisions on simulated cohorts with a known true effect ---------------------------------


def _decisions(p_before: float, p_after: float, n: int, reps: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    bx = rng.binomial(n, p_before, size=reps)
    ax = rng.binomial(n, p_after, size=reps)
    return [compare_rates(int(b), n, int(a), n).decision for b, a in zip(bx, ax, strict=True)]


def test_keep_for_a_real_improvement() -> None:
    decisions = _decisions(0.30, 0.15, 600, reps=200, seed=1)
    # Power here is > 0.9999 (z ~ 6.3), so every simulated cohort pair should be a keep.
    assert decisions.count("keep") == len(decisions)


def test_revert_for_a_real_regression() -> None:
    decisions = _decisions(0.15, 0.30, 600, reps=200, seed=2)
    assert decisions.count("revert") == len(decisions)


def test_single_comparison_reports_rates_interval_and_reason() -> None:
    rng = np.random.default_rng(3)
    bx, ax = int(rng.binomial(600, 0.30)), int(rng.binomial(600, 0.15))
    result = compare_rates(bx, 600, ax, 600, metric="frustration", intent="refunds")
    assert isinstance(result, CohortComparison)
    assert result.decision == "keep"
    assert result.before.rate == pytest.approx(bx / 600)
    assert result.after.rate == pytest.approx(ax / 600)
    assert result.delta == pytest.approx(ax / 600 - bx / 600)
    assert result.delta_ci[0] <= result.delta <= result.delta_ci[1] < 0
    # The true effect (-0.15) should sit inside the reported interval for this draw.
    assert result.delta_ci[0] <= -0.15 <= result.delta_ci[1]
    assert result.before.ci_low <= result.before.rate <= result.before.ci_high
    assert result.p_value < 1e-6
    assert result.threads_needed_more is None
    assert "improvement" in result.reason
    assert result.nominal_alpha == pytest.approx(ALPHA)
    assert result.alpha_spent == pytest.approx(ALPHA)


def test_wait_when_underpowered_and_says_how_many_more_threads() -> None:
    rng = np.random.default_rng(4)
    n, reps = 40, 200
    waits = 0
    for _ in range(reps):
        bx, ax = int(rng.binomial(n, 0.30)), int(rng.binomial(n, 0.25))
        result = compare_rates(bx, n, ax, n, planned_effect=0.05, min_n=30)
        if result.decision != "wait":
            continue  # with ~7% power a lucky draw can still be a (correct) keep
        waits += 1
        # Sized at the observed before rate, for the planned 5-point drop, at 80% power.
        required = sample_size_per_group(bx / n, -0.05)
        assert result.required_n_per_group == required
        assert result.threads_needed_more == required - n > 0
        assert f"about {required - n} more threads" in result.reason
    assert waits / reps > 0.85
    # At the true rates, the power formula asks for ~1,250 threads per cohort.
    true_required = sample_size_per_group(0.30, -0.05)
    assert 1200 < true_required < 1300


def test_wait_below_min_n_even_with_a_big_change() -> None:
    result = compare_rates(9, 10, 0, 10, min_n=30)
    assert result.decision == "wait"
    assert result.threads_needed_more is not None and result.threads_needed_more >= 20
    assert "too few threads" in result.reason


def test_wait_uses_observed_change_without_a_planned_effect() -> None:
    result = compare_rates(30, 100, 24, 100)
    assert result.decision == "wait"
    assert result.required_n_per_group == sample_size_per_group(0.30, -0.06)
    assert result.threads_needed_more == result.required_n_per_group - 100


def test_increase_direction_flips_keep_and_revert() -> None:
    # A success rate going up is good.
    up = compare_rates(90, 600, 180, 600, expected_direction="increase")
    down = compare_rates(180, 600, 90, 600, expected_direction="increase")
    assert (up.decision, down.decision) == ("keep", "revert")


def test_degenerate_counts_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero = compare_rates(0, 50, 0, 50)
        full = compare_rates(50, 50, 50, 50)
    assert zero.decision == full.decision == "wait"
    assert zero.p_value == full.p_value == 1.0
    assert zero.threads_needed_more is None


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((5, 0, 1, 10), {}),
        ((11, 10, 1, 10), {}),
        ((-1, 10, 1, 10), {}),
        ((1, 10, 1, 10), {"alpha": 1.5}),
        ((1, 10, 1, 10), {"planned_effect": -0.1}),
        ((1, 10, 1, 10), {"look_index": 6, "max_looks": 5}),
        ((1, 10, 1, 10), {"looks": [0.5, 0.4], "max_looks": 5}),
        ((1, 10, 1, 10), {"looks": [0.2, 0.4], "look_index": 3, "max_looks": 5}),
        ((1, 10, 1, 10), {"expected_direction": "sideways"}),
        ((1, 10, 1, 10), {"looks": [0.5, 1.0, 1.0], "max_looks": 5}),  # design already over
    ],
)
def test_invalid_arguments_raise_config_error(
    args: tuple[int, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        compare_rates(*args, **kwargs)  # type: ignore[arg-type]


# --- power formula -----------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "effect"), [(0.30, -0.05), (0.30, -0.15), (0.10, 0.05), (0.5, -0.2)])
def test_sample_size_matches_statsmodels_and_textbook_formula(p: float, effect: float) -> None:
    n = sample_size_per_group(p, effect)
    h = proportion_effectsize(p + effect, p)
    solved = NormalIndPower().solve_power(effect_size=h, alpha=ALPHA, power=0.8)
    assert abs(n - solved) <= 1
    # Textbook unpooled/pooled normal formula on the raw scale: agrees within a few percent.
    p2 = p + effect
    za, zb = special.ndtri(1 - ALPHA / 2), special.ndtri(0.8)
    pbar = (p + p2) / 2
    raw = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p * (1 - p) + p2 * (1 - p2))) ** 2
    raw /= effect**2
    assert n == pytest.approx(raw, rel=0.05)


def test_sample_size_gives_the_promised_power_by_simulation() -> None:
    n = sample_size_per_group(0.30, -0.10)
    rng = np.random.default_rng(5)
    reps = 600
    bx = rng.binomial(n, 0.30, size=reps)
    ax = rng.binomial(n, 0.20, size=reps)
    keeps = sum(
        compare_rates(int(b), n, int(a), n).decision == "keep" for b, a in zip(bx, ax, strict=True)
    )
    power = keeps / reps
    assert abs(power - 0.8) < 4 * _mc_se(0.8, reps), power


def test_sample_size_rejects_impossible_targets() -> None:
    with pytest.raises(ConfigError):
        sample_size_per_group(0.03, -0.05)
    with pytest.raises(ConfigError):
        sample_size_per_group(0.3, 0.0)


# --- coverage of the intervals --------------------------------------------------------------


WILSON_CASES = [(0.30, 50), (0.50, 30), (0.15, 400), (0.20, 60), (0.10, 100)]


def test_wilson_matches_statsmodels_and_clips() -> None:
    assert wilson_interval(7, 40) == pytest.approx(proportion_confint(7, 40, method="wilson"))
    low, high = wilson_interval(0, 25)
    assert low == 0.0 and 0 < high < 0.2
    assert wilson_interval(25, 25)[1] == 1.0


@pytest.mark.parametrize(("p", "n"), WILSON_CASES)
def test_wilson_coverage_is_near_nominal(p: float, n: int) -> None:
    reps = 2000
    rng = np.random.default_rng(int(p * 1000) + n)
    xs = rng.binomial(n, p, size=reps)
    covered = 0
    for x in xs:
        low, high = wilson_interval(int(x), n)
        covered += low <= p <= high
    coverage = covered / reps
    # The exact coverage (binomial sum) is what the simulation should reproduce.
    k = np.arange(n + 1)
    lo, hi = proportion_confint(k, n, method="wilson")
    exact = float(stats.binom.pmf(k, n, p)[(lo <= p) & (p <= hi)].sum())
    print(f"Wilson p={p} n={n}: simulated {coverage:.4f}, exact {exact:.4f}")
    assert abs(coverage - exact) < 4 * _mc_se(exact, reps)
    if (p, n) != (0.10, 100):
        assert 0.93 <= coverage <= 0.97
    else:
        # Wilson's coverage oscillates with n; here it dips to ~0.936 exactly. Still close.
        assert 0.92 <= coverage <= 0.97


def test_newcombe_orientation_and_statsmodels_agreement() -> None:
    low, high = newcombe_diff_interval(30, 100, 15, 100)  # before 0.30, after 0.15
    assert low < -0.15 + 1e-12 < high < 0
    ref = confint_proportions_2indep(15, 100, 30, 100, method="newcomb")
    assert (low, high) == pytest.approx(ref)


@pytest.mark.parametrize(
    ("p1", "n1", "p2", "n2"),
    [(0.30, 100, 0.15, 100), (0.20, 80, 0.20, 120), (0.10, 200, 0.25, 150), (0.05, 300, 0.08, 300)],
)
def test_newcombe_coverage_is_near_nominal(p1: float, n1: int, p2: float, n2: int) -> None:
    reps = 2000
    rng = np.random.default_rng(n1 * 7 + n2)
    x1 = rng.binomial(n1, p1, size=reps)
    x2 = rng.binomial(n2, p2, size=reps)
    true_diff = p2 - p1
    covered = 0
    for a, b in zip(x1, x2, strict=True):
        low, high = newcombe_diff_interval(int(a), n1, int(b), n2)
        covered += low <= true_diff <= high
    coverage = covered / reps
    print(f"Newcombe {p1}/{n1} -> {p2}/{n2}: coverage {coverage:.4f}")
    assert 0.93 <= coverage <= 0.97


# --- alpha spending and sequential looks -----------------------------------------------------


def test_obf_spending_function() -> None:
    assert obf_alpha_spent(1.0, ALPHA) == pytest.approx(ALPHA)
    assert obf_alpha_spent(0.0, ALPHA) == 0.0
    assert obf_alpha_spent(0.2, ALPHA) < 1e-4  # almost nothing early
    spent = [obf_alpha_spent(t, ALPHA) for t in (0.2, 0.4, 0.6, 0.8, 1.0)]
    assert spent == sorted(spent)
    # First boundary is the spending function inverted directly: z_{alpha/2} / sqrt(t).
    assert sequential_boundaries([0.2, 1.0])[0] == pytest.approx(1.959964 / math.sqrt(0.2))
    assert sequential_boundaries([1.0]) == pytest.approx([1.959964])


def test_boundaries_match_multivariate_normal_probabilities() -> None:
    # An independent check of the recursive integration: the joint null distribution of the look
    # statistics is multivariate normal with corr(Z_i, Z_j) = sqrt(t_i / t_j).
    fractions = [0.3, 0.65, 1.0]
    bounds = sequential_boundaries(fractions)
    t = np.array(fractions)
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, len(t) + 1):
        mvn = stats.multivariate_normal(mean=np.zeros(k), cov=cov[:k, :k])
        c = np.array(bounds[:k])
        no_cross = mvn.cdf(c, lower_limit=-c, rng=np.random.default_rng(0))
        assert 1 - no_cross == pytest.approx(obf_alpha_spent(fractions[k - 1]), abs=2e-4)


def test_boundaries_by_brownian_motion_simulation() -> None:
    rng = np.random.default_rng(6)
    fractions = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    bounds = np.array(sequential_boundaries(list(fractions)))
    steps = rng.standard_normal((400_000, 5)) * np.sqrt(np.diff(fractions, prepend=0.0))
    z = np.cumsum(steps, axis=1) / np.sqrt(fractions)
    crossed = np.maximum.accumulate(np.abs(z) >= bounds, axis=1).mean(axis=0)
    expected = [obf_alpha_spent(t) for t in fractions]
    assert crossed == pytest.approx(expected, abs=4 * _mc_se(ALPHA, 400_000))


def _null_false_decision_rates(
    p: float, looks_n: list[int], reps: int, seed: int, *, fixed_before: int | None = None
) -> tuple[float, float]:
    """Any false keep/revert over the looks: (alpha spending, naive fixed-alpha at every look)."""
    rng = np.random.default_rng(seed)
    max_n = looks_n[-1]
    false_seq = false_naive = 0
    for _ in range(reps):
        # Cumulative cohorts: each look adds threads to what was already seen.
        after = np.cumsum(rng.random(max_n) < p)
        if fixed_before is None:
            before = np.cumsum(rng.random(max_n) < p)
        else:
            bx_fixed = int(rng.binomial(fixed_before, p))
        fractions: list[float] = []
        seq_hit = naive_hit = False
        for n in looks_n:
            if fixed_before is None:
                bx, bn = int(before[n - 1]), n
                fractions.append(information_fraction(n, max_n))
            else:
                bx, bn = bx_fixed, fixed_before
                fractions.append(information_fraction(n, max_n, before_n=fixed_before))
            ax = int(after[n - 1])
            if not seq_hit:
                seq = compare_rates(bx, bn, ax, n, looks=fractions, max_looks=len(looks_n), min_n=0)
                seq_hit = seq.decision != "wait"
            if not naive_hit:
                naive = compare_rates(bx, bn, ax, n, min_n=0)  # fixed alpha every time
                naive_hit = naive.decision != "wait"
            if seq_hit and naive_hit:
                break
        false_seq += seq_hit
        false_naive += naive_hit
    return false_seq / reps, false_naive / reps


def test_sequential_looks_keep_false_decisions_at_alpha_while_naive_inflates() -> None:
    reps = 1000
    seq, naive = _null_false_decision_rates(0.2, [80, 160, 240, 320, 400], reps, seed=7)
    print(f"null, 5 looks, both cohorts growing: alpha-spending {seq:.3f}, naive {naive:.3f}")
    margin = 3 * _mc_se(ALPHA, reps)  # ~0.021
    assert seq <= ALPHA + margin
    assert naive > ALPHA + margin
    assert naive - seq > 0.04


def test_sequential_looks_with_a_fixed_baseline_cohort() -> None:
    # The common case: "before" is a fixed historical cohort and only "after" grows.
    reps = 1000
    seq, naive = _null_false_decision_rates(
        0.25, [60, 120, 180, 240, 300], reps, seed=8, fixed_before=300
    )
    print(f"null, 5 looks, fixed baseline: alpha-spending {seq:.3f}, naive {naive:.3f}")
    assert seq <= ALPHA + 3 * _mc_se(ALPHA, reps)
    assert naive > seq


def test_sequential_design_still_detects_a_real_improvement() -> None:
    rng = np.random.default_rng(9)
    reps, looks_n = 300, [120, 240, 360, 480, 600]
    kept = 0
    first_look: list[int] = []
    for _ in range(reps):
        before = np.cumsum(rng.random(600) < 0.30)
        after = np.cumsum(rng.random(600) < 0.20)
        for k, n in enumerate(looks_n, start=1):
            result = compare_rates(
                int(before[n - 1]), n, int(after[n - 1]), n, look_index=k, max_looks=5
            )
            assert result.decision != "revert"
            if result.decision == "keep":
                kept += 1
                first_look.append(k)
                break
    # A fixed test at n=600 has ~99.7% power for 0.30 -> 0.20; spending loses very little.
    assert kept / reps > 0.97
    assert np.mean(first_look) < 4  # and usually stops early


def test_look_schedule_resolution() -> None:
    mid = compare_rates(30, 100, 20, 100, look_index=2, max_looks=5)
    assert mid.information_fraction == pytest.approx(0.4)
    assert mid.alpha_spent == pytest.approx(obf_alpha_spent(0.4))
    assert mid.nominal_alpha < mid.alpha_spent < ALPHA
    assert mid.delta_ci_level > 0.99
    assert not mid.final_look
    # The last planned look spends what is left even if the plan was not reached.
    last = compare_rates(30, 100, 20, 100, looks=[0.2, 0.5], max_looks=2)
    assert last.final_look and last.information_fraction == 1.0
    assert last.alpha_spent == pytest.approx(ALPHA)


def test_information_fraction() -> None:
    assert information_fraction(150, 600) == pytest.approx(0.25)
    assert information_fraction(900, 600) == 1.0
    # Fixed baseline of 300: Var ~ 1/300 + 1/n, so t = (1/300 + 1/300) / (1/300 + 1/100) = 0.5.
    assert information_fraction(100, 300, before_n=300) == pytest.approx(0.5)


# --- intent mix -------------------------------------------------------------------------------


def test_mix_shift_toward_easy_intent_does_not_fake_an_improvement() -> None:
    rng = np.random.default_rng(10)
    rates = {"billing": 0.40, "how_to": 0.05}  # identical before and after
    before_n = {"billing": 600, "how_to": 400}
    after_n = {"billing": 200, "how_to": 800}  # traffic moved toward the easy intent
    reps = 300
    naive_deltas, adjusted_deltas = [], []
    for _ in range(reps):
        before = {k: (int(rng.binomial(n, rates[k])), n) for k, n in before_n.items()}
        after = {k: (int(rng.binomial(n, rates[k])), n) for k, n in after_n.items()}
        naive_before = sum(x for x, _ in before.values()) / sum(before_n.values())
        naive_after = sum(x for x, _ in after.values()) / sum(after_n.values())
        naive_deltas.append(naive_after - naive_before)
        adjusted = mix_adjusted_rates(before, after)
        adj_before, adj_after, delta = adjusted  # unpacks as a 3-tuple
        assert delta == pytest.approx(adj_after - adj_before)
        adjusted_deltas.append(delta)
    naive_mean, adjusted_mean = float(np.mean(naive_deltas)), float(np.mean(adjusted_deltas))
    adjusted_sd = float(np.std(adjusted_deltas))
    print(
        f"mix shift: naive delta {naive_mean:+.4f}, adjusted {adjusted_mean:+.4f} (sd {adjusted_sd:.4f})"
    )
    # Naive: 0.6*0.40+0.4*0.05 = 0.26 -> 0.2*0.40+0.8*0.05 = 0.12, a fake 14-point "improvement".
    assert naive_mean == pytest.approx(-0.14, abs=0.005)
    assert max(naive_deltas) < -0.08  # and it shows up in every single draw
    # Adjusted: centred on zero (unbiased) and each draw only moves by sampling noise.
    assert abs(adjusted_mean) < 4 * adjusted_sd / math.sqrt(reps)
    assert adjusted_sd < 0.025


def test_mix_adjustment_keeps_a_real_per_intent_change() -> None:
    before = {"a": (100, 500), "b": (50, 500)}
    after = {"a": (50, 500), "b": (25, 500)}  # both halved, same mix
    adjusted = mix_adjusted_rates(before, after)
    assert adjusted.before == pytest.approx(0.15)
    assert adjusted.after == pytest.approx(0.075)


def test_mix_adjustment_missing_intents() -> None:
    before = {"a": (10, 100), "gone": (5, 10)}
    after = {"a": (10, 100), "new": (0, 10)}
    assert mix_adjusted_rates(before, after).delta == pytest.approx(0.0)
    with pytest.raises(ConfigError):
        mix_adjusted_rates(before, after, on_missing="raise")
    with pytest.raises(ConfigError):
        mix_adjusted_rates({"x": (1, 10)}, {"y": (1, 10)})


# --- guardrails --------------------------------------------------------------------------------


def test_guardrail_flags_an_intent_that_got_worse() -> None:
    rng = np.random.default_rng(11)
    true = {  # intent: (before rate, after rate)
        "refunds": (0.30, 0.15),  # the target, improved
        "shipping": (0.10, 0.22),  # collateral damage
        "login": (0.20, 0.20),  # unchanged
        "tiny": (0.10, 0.60),  # much worse but too few threads to accuse
    }
    sizes = {"refunds": 500, "shipping": 400, "login": 400, "tiny": 12}
    per_intent = {
        k: (
            (int(rng.binomial(sizes[k], pb)), sizes[k]),
            (int(rng.binomial(sizes[k], pa)), sizes[k]),
        )
        for k, (pb, pa) in true.items()
    }
    flags = guardrail_check(per_intent, target_intent="refunds")
    assert [f.intent for f in flags] == ["shipping"]
    flag = flags[0]
    assert flag.delta >= 0.05 and flag.delta_ci[0] > 0
    assert "flag for revert" in flag.reason


def test_guardrail_ignores_small_or_uncertain_changes() -> None:
    per_intent = {
        "target": ((100, 400), (40, 400)),
        "big_but_small_change": ((2000, 10000), (2150, 10000)),  # +1.5 pts, confident, < 5 pts
        "noisy": ((6, 40), (10, 40)),  # +10 pts but the interval includes 0
    }
    assert guardrail_check(per_intent, "target") == []
    # The threshold is the knob: at 1 point the confident small change is flagged.
    assert [f.intent for f in guardrail_check(per_intent, "target", harm_threshold=0.01)] == [
        "big_but_small_change"
    ]


def test_guardrail_false_flag_rate_under_the_null() -> None:
    rng = np.random.default_rng(12)
    reps, flagged = 400, 0
    for _ in range(reps):
        per_intent = {
            f"i{j}": ((int(rng.binomial(200, 0.2)), 200), (int(rng.binomial(200, 0.2)), 200))
            for j in range(4)
        }
        flagged += bool(guardrail_check(per_intent, "none", bonferroni=True))
    # Bonferroni over 4 intents, one-sided harm only: at most ~alpha/2 runs with any flag.
    assert flagged / reps <= ALPHA / 2 + 3 * _mc_se(ALPHA / 2, reps)


# --- Bayesian helper ---------------------------------------------------------------------------


def _closed_form_prob_after_lower(bx: int, bn: int, ax: int, an: int) -> float:
    """P(p_after < p_before) for Beta(1,1) priors, by the integer-parameter series (E. Miller)."""
    # X ~ Beta(a1, b1) (after), Y ~ Beta(a2, b2) (before):
    # P(Y > X) = sum_{i < a2} B(a1 + i, b1 + b2) / ((b2 + i) B(1 + i, b2) B(a1, b1)).
    a1, b1 = 1 + ax, 1 + an - ax
    a2, b2 = 1 + bx, 1 + bn - bx
    i = np.arange(a2)
    terms = special.betaln(a1 + i, b1 + b2) - np.log(b2 + i) - special.betaln(1 + i, b2)
    terms -= special.betaln(a1, b1)
    return float(np.exp(terms).sum())


@pytest.mark.parametrize(
    "counts", [(30, 100, 20, 100), (12, 40, 10, 40), (300, 1000, 200, 1000), (5, 50, 9, 60)]
)
def test_posterior_probability_exact_matches_closed_form_and_draws(
    counts: tuple[int, int, int, int],
) -> None:
    exact = beta_binomial_posterior_prob_improvement(*counts)
    assert exact == pytest.approx(_closed_form_prob_after_lower(*counts), abs=1e-6)
    drawn = beta_binomial_posterior_prob_improvement(
        *counts, method="draws", draws=100_000, rng=np.random.default_rng(13)
    )
    assert drawn == pytest.approx(exact, abs=4 * _mc_se(0.5, 100_000))
    up = beta_binomial_posterior_prob_improvement(*counts, expected_direction="increase")
    assert up == pytest.approx(1 - exact)


def test_posterior_probability_is_symmetric_and_sensible() -> None:
    assert beta_binomial_posterior_prob_improvement(20, 100, 20, 100) == pytest.approx(0.5)
    assert beta_binomial_posterior_prob_improvement(0, 0, 0, 0) == pytest.approx(0.5)
    assert beta_binomial_posterior_prob_improvement(180, 600, 90, 600) > 0.999
