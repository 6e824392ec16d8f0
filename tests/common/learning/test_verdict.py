"""The verdict (issue 13 section 2): a paired bootstrap of AUC differences per partner, its words
following the interval, and the sentence a risk officer reads."""

from __future__ import annotations

import numpy as np
import pytest

from common.learning.metrics import credit_metrics
from common.learning.verdict import (
    BASELINE,
    COST,
    NO_CLEAR,
    PAID_OFF,
    UNDEFINED,
    partner_verdict,
    resample_counts,
    verdict_report,
    verdict_sentence,
    verdict_word,
    weighted_aucs,
)


def _population(n: int, seed: int, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the scores of a model that separates them with `strength` (plus ties)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(float)
    return labels, np.round(strength * labels + rng.normal(size=n), 1)


def _models(n: int, seed: int, gap: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(float)
    return labels, {"local_only": labels + rng.normal(size=n),
                    "federated_dp": (1 + gap) * labels + rng.normal(size=n)}


def test_resampled_auc_equals_auc_of_the_resampled_rows() -> None:
    labels, scores = _population(300, 0, 1.0)  # rounded scores: many ties
    counts = next(resample_counts(300, 8, seed=1))
    fast = weighted_aucs(labels, scores, counts)
    for row, auc in zip(counts, fast, strict=True):
        rows = np.repeat(np.arange(300), row)
        assert auc == pytest.approx(credit_metrics(labels[rows], scores[rows])["auc"], abs=1e-12)


def test_interval_covers_the_true_difference_of_a_known_gap() -> None:
    labels, scores = _models(200_000, 0, gap=0.5)  # the population: its difference is the truth
    truth = (credit_metrics(labels, scores["federated_dp"])["auc"]
             - credit_metrics(labels, scores["local_only"])["auc"])
    test_labels, test_scores = _models(800, 1, gap=0.5)
    d = partner_verdict(test_labels, test_scores, seed=2)["differences"]["federated_dp"]
    assert d["low"] < truth < d["high"]
    assert d["low"] < d["difference"] < d["high"]
    assert d["verdict"] == PAID_OFF  # a gap of ~0.07 AUC on 800 rows is clear


@pytest.mark.parametrize(("gap", "word"), [(0.8, PAID_OFF), (-0.5, COST), (0.0, NO_CLEAR)])
def test_verdict_words_follow_the_interval(gap: float, word: str) -> None:
    labels, scores = _models(1000, 3, gap)
    d = partner_verdict(labels, scores, seed=0)["differences"]["federated_dp"]
    assert d["verdict"] == word == verdict_word(d["low"], d["high"])


def test_identical_models_make_no_difference() -> None:
    labels, scores = _population(400, 4, 1.0)
    d = partner_verdict(labels, {"local_only": scores, "federated_dp": scores.copy()},
                        seed=0)["differences"]["federated_dp"]
    assert d == {"difference": 0.0, "low": 0.0, "high": 0.0, "verdict": NO_CLEAR}


def test_deterministic_for_a_seed_and_partners_resampled_apart() -> None:
    labels, scores = _models(500, 5, 0.2)
    first = verdict_report({"a": (labels, scores), "b": (labels, scores)}, seed=7)
    again = verdict_report({"a": (labels, scores), "b": (labels, scores)}, seed=7)
    assert first == again
    a, b = (first["partners"][p]["differences"]["federated_dp"] for p in ("a", "b"))
    assert a["difference"] == b["difference"] and (a["low"], a["high"]) != (b["low"], b["high"])


def test_sentence_states_rows_numbers_and_words() -> None:
    labels, scores = _models(527, 6, 0.0)
    scores["federated_dp_personalized"] = scores["local_only"] + 0.01
    v = partner_verdict(labels, scores, seed=0)
    said = verdict_sentence("bank", v, epsilon=3.0)
    d = v["differences"]["federated_dp"]
    assert said.startswith("bank: joining the federation under ε=3 changed AUC on its own 527 "
                           f"test rows by {d['difference']:+.3f} (95% interval {d['low']:+.3f} "
                           f"to {d['high']:+.3f}): {d['verdict']}; its personalised model ")
    assert said.count(NO_CLEAR) == 2 and said.endswith(".")


def test_scores_must_match_the_rows() -> None:
    labels, scores = _models(100, 0, 0.0)
    with pytest.raises(ValueError, match="baseline"):
        partner_verdict(labels, {"federated_dp": scores["federated_dp"]})
    with pytest.raises(ValueError, match="federated_dp"):
        partner_verdict(labels, {**scores, "federated_dp": scores["federated_dp"][:-1]})


def test_a_partner_whose_test_rows_hold_one_class_gets_no_verdict() -> None:
    labels = np.zeros(20)
    scores = {BASELINE: np.linspace(0, 1, 20), "federated_dp": np.linspace(1, 0, 20)}
    d = partner_verdict(labels, scores, resamples=50)["differences"]["federated_dp"]
    assert d["verdict"] == UNDEFINED and np.isnan(d["difference"])
