"""Credit-risk metrics: AUC, KS, Gini, Brier and PR-AUC of predicted probabilities of 'bad'."""

from __future__ import annotations

import logging

import numpy as np

METRIC_NAMES = ("auc", "ks", "gini", "brier", "pr_auc")
log = logging.getLogger(__name__)


def credit_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics of probabilities `scores` against 0/1 `labels` (1 = bad).

    Rank metrics are NaN when only one class is present; Brier is always defined. Computed with
    numpy alone, exactly as scikit-learn defines them (`roc_auc_score`, KS as max(TPR - FPR) over
    `roc_curve`, `average_precision_score`; ties share a threshold; the tests compare the two):
    a partner that evaluates in its own short-lived process does not pay for importing sklearn.
    """
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels and scores must be equal-length 1-D arrays, got "
                         f"{labels.shape} and {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or Inf")
    result = {"brier": float(np.mean((scores - labels) ** 2))}
    positives = float(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        log.debug("only one class among %d labels: AUC, KS, Gini, PR-AUC undefined", len(labels))
        result.update(auc=float("nan"), ks=float("nan"), gini=float("nan"), pr_auc=float("nan"))
        return {name: result[name] for name in METRIC_NAMES}
    true_pos, false_pos = _cumulative_counts(labels, scores)
    tpr = np.r_[0.0, true_pos / positives]
    fpr = np.r_[0.0, false_pos / negatives]
    auc = float(np.trapezoid(tpr, fpr))
    precision = true_pos / (true_pos + false_pos)
    average_precision = float(np.sum(np.diff(tpr) * precision))
    result.update(auc=auc, ks=float(np.max(tpr - fpr)), gini=2.0 * auc - 1.0,
                  pr_auc=average_precision)
    return {name: result[name] for name in METRIC_NAMES}


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when calling 'bad' every score at or above each distinct score,
    thresholds from the highest down (tied scores form one threshold)."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    true_pos = np.cumsum(sorted_labels)[last_of_tie]
    return true_pos, 1.0 + last_of_tie - true_pos
