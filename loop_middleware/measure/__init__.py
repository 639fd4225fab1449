"""Stage 6: measure the next cohort against the last one, per intent, and keep or revert."""

from ._stats import (
    CohortComparison,
    GuardrailFlag,
    MixAdjusted,
    RateEstimate,
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

__all__ = [
    "CohortComparison",
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
