"""Credit-risk metrics: AUC, KS, Gini, Brier and PR-AUC of predicted probabilities of 'bad'."""

from __future__ import annotations

import logging

import numpy as np

METRIC_NAMES = ("auc", "ks", "gini", "brier", "pr_auc")
log = logging.getLogger(__name__)


def credit_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics of probabilities `scores` against 0/1 `labels` (1 = bad).

    Rank metrics are NaN when only one class is present; Brier is always defined.
    """
    # scikit-learn loads on first use: a partner process that does not evaluate never pays for it.
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels and scores must be equal-length 1-D arrays, got "
                         f"{labels.shape} and {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or Inf")
    result = {"brier": float(brier_score_loss(labels, scores))}
    if len(np.unique(labels)) < 2:
        log.warning("only one class among %d labels: AUC, KS, Gini, PR-AUC undefined", len(labels))
        result.update(auc=float("nan"), ks=float("nan"), gini=float("nan"), pr_auc=float("nan"))
        return result
    auc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    result.update(auc=auc, ks=float(np.max(tpr - fpr)), gini=2.0 * auc - 1.0,
                  pr_auc=float(average_precision_score(labels, scores)))
    return {name: result[name] for name in METRIC_NAMES}
