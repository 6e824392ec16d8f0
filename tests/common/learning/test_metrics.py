"""Credit-risk metrics on hand-computable examples."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from common.learning.metrics import METRIC_NAMES, credit_metrics


def test_perfect_ranking() -> None:
    metrics = credit_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert list(metrics) == list(METRIC_NAMES)
    assert metrics["auc"] == 1.0
    assert metrics["ks"] == 1.0
    assert metrics["gini"] == 1.0
    assert metrics["pr_auc"] == 1.0
    assert metrics["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)


def test_hand_computed_imperfect_ranking() -> None:
    # Ranked by score: 0.8 (bad), 0.4 (good), 0.35 (bad), 0.1 (good).
    metrics = credit_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert metrics["auc"] == pytest.approx(0.75)  # 3 of 4 bad/good pairs ordered correctly
    assert metrics["gini"] == pytest.approx(0.5)  # 2 * AUC - 1
    assert metrics["ks"] == pytest.approx(0.5)  # max TPR - FPR: 1/2 - 0 at threshold 0.8
    assert metrics["pr_auc"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)  # average precision
    assert metrics["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)


def test_reversed_ranking() -> None:
    metrics = credit_metrics(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert metrics["auc"] == 0.0
    assert metrics["gini"] == -1.0


def test_constant_scores_carry_no_information() -> None:
    metrics = credit_metrics(np.array([0, 1, 0, 1]), np.full(4, 0.3))
    assert metrics["auc"] == pytest.approx(0.5)
    assert metrics["gini"] == pytest.approx(0.0)
    assert metrics["ks"] == pytest.approx(0.0)
    assert metrics["pr_auc"] == pytest.approx(0.5)  # the bad rate
    assert metrics["brier"] == pytest.approx((0.09 + 0.49) / 2)


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_nan_rank_metrics(label: int,
                                             caplog: pytest.LogCaptureFixture) -> None:
    scores = np.array([0.2, 0.6, 0.9])
    with caplog.at_level(logging.DEBUG, logger="common.learning.metrics"):
        metrics = credit_metrics(np.full(3, label), scores)
    assert set(metrics) == set(METRIC_NAMES)
    for name in ("auc", "ks", "gini", "pr_auc"):
        assert math.isnan(metrics[name]), name
    assert metrics["brier"] == pytest.approx(np.mean((scores - label) ** 2))
    assert "one class" in caplog.text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        credit_metrics(np.array([0, 1, 0]), np.array([0.1, bad, 0.3]))


@pytest.mark.parametrize(("labels", "scores"), [
    (np.array([0, 1]), np.array([0.1, 0.2, 0.3])),
    (np.array([[0, 1]]), np.array([[0.1, 0.2]])),
    (np.array([]), np.array([])),
])
def test_shape_mismatch_is_rejected(labels: np.ndarray, scores: np.ndarray) -> None:
    with pytest.raises(ValueError, match="equal-length 1-D"):
        credit_metrics(labels, scores)


def test_accepts_lists_and_float_labels() -> None:
    metrics = credit_metrics([0.0, 1.0], [0.2, 0.7])  # type: ignore[arg-type]
    assert metrics["auc"] == 1.0


@pytest.mark.parametrize("seed", range(12))
def test_metrics_equal_scikit_learns_definitions(seed: int) -> None:
    """The numpy implementation against sklearn's, ties included (scores rounded to 2 digits)."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    labels = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(float)
    labels[:2] = [0.0, 1.0]
    scores = np.round(np.clip(labels * rng.uniform(0, 0.5) + rng.random(n) * 0.7, 0, 1),
                      int(rng.integers(1, 4)))
    metrics = credit_metrics(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["ks"] == pytest.approx(float(np.max(tpr - fpr)), abs=1e-12)
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert metrics["brier"] == pytest.approx(float(np.mean((scores - labels) ** 2)), abs=1e-15)
