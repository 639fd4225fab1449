"""Business categories: map each intent to the category whose description it is most like."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from loop_middleware.errors import ExtractionError
from loop_middleware.extract._embed import Embedder, normalize_rows

__all__ = ["DEFAULT_CATEGORIES", "OTHER", "map_categories"]

FloatArray = npt.NDArray[np.float32]

DEFAULT_CATEGORIES: dict[str, str] = {
    "bug_report": (
        "Something is broken: an error, a crash, a failure or wrong behaviour. "
        "It doesn't work, it stopped working, I get an error when I try."
    ),
    "feature_request": (
        "A request for a new feature or capability that does not exist yet. "
        "Please add support for this, it would be great if you could, can you build."
    ),
    "setup_friction": (
        "Trouble getting started: installing, signing up, logging in, configuring, connecting "
        "or verifying an account. I can't set it up, can't log in, the setup fails."
    ),
    "billing_refund": (
        "Billing, payments, charges and refunds: charged twice, wrong charge, a payment that "
        "failed or is pending, I want my money back, a refund."
    ),
    "pricing_objection": (
        "The price is too high or unclear: it is too expensive, costs too much, fees are too "
        "high, is there a discount or a cheaper plan."
    ),
    "churn_risk": (
        "The customer wants to leave: cancel the subscription, close the account, switch to a "
        "competitor, stop using the service, delete my account."
    ),
    "how_to": (
        "A question about how to do something: how do I, how can I, where do I find, what are "
        "the steps to use a feature or change a setting."
    ),
}
"""Business categories and their descriptions (``other`` is the fallback, not listed)."""

OTHER = "other"


def map_categories(
    centroids: Mapping[int, FloatArray] | Mapping[str, FloatArray],
    embedder: Embedder,
    *,
    categories: Mapping[str, str] | None = None,
    threshold: float = 0.3,
) -> dict[Any, str]:
    """Map each cluster centroid to the business category whose description is most similar.

    Args:
        centroids: Cluster id -> unit centroid in ``embedder``'s space.
        embedder: The embedder that produced the centroids (descriptions are embedded with it).
        categories: ``name -> description``; default :data:`DEFAULT_CATEGORIES`. ``"other"`` is
            always the fallback and need not be listed.
        threshold: Below this cosine similarity the cluster is ``"other"``.
    """
    chosen = DEFAULT_CATEGORIES if categories is None else categories
    cats = {k: v for k, v in chosen.items() if k != OTHER}
    if not centroids:
        return {}
    if not cats:
        return {c: OTHER for c in centroids}
    names = list(cats)
    desc = embedder.embed([cats[k] for k in names])
    keys = list(centroids)
    matrix = normalize_rows(np.stack([centroids[k] for k in keys]))  # type: ignore[index]
    if matrix.shape[1] != desc.shape[1]:
        raise ExtractionError(
            f"centroids have {matrix.shape[1]} dims but {embedder.name} gives {desc.shape[1]}"
        )
    sims = matrix @ desc.T
    out: dict[Any, str] = {}
    for row, key in enumerate(keys):
        j = int(np.argmax(sims[row]))
        out[key] = names[j] if sims[row, j] >= threshold else OTHER
    return out
