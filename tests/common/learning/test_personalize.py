"""Personalisation: the blend weight follows the partner's own cross-validation."""

from __future__ import annotations

import numpy as np

from common.data.tables import Split
from common.learning.metrics import credit_metrics
from common.learning.model import build_model
from common.learning.personalize import personalize
from common.learning.training import TrainSettings, train

SETTINGS = TrainSettings(epochs=20, batch_size=32, learning_rate=0.05)


def _problem(seed: int, n: int = 400, flip: bool = False) -> Split:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 5)).astype(np.float32)
    logits = 2.0 * features[:, 0] - 1.5 * features[:, 1]
    labels = (rng.random(n) < 1 / (1 + np.exp(logits if flip else -logits))).astype(np.float32)
    return Split(features, labels)


def test_misleading_global_model_gets_no_weight() -> None:
    data, test = _problem(0), _problem(1)
    global_model = build_model(5, (), seed=3)
    train(global_model, _problem(5, flip=True), SETTINGS, seed=0)  # ranks exactly backwards
    personal = personalize(global_model, data, hidden=(), settings=SETTINGS, seed=0)
    assert personal.global_weight == 0.0
    local = build_model(5, (), seed=0)
    train(local, data, SETTINGS, seed=0)
    auc = credit_metrics(test.labels, personal.predict(test.features))["auc"]
    assert auc > 0.8


def test_good_global_model_is_used_when_local_data_is_scarce() -> None:
    big, small, test = _problem(0, n=2000), _problem(1, n=60), _problem(2)
    global_model = build_model(5, (), seed=3)
    train(global_model, big, SETTINGS, seed=0)
    personal = personalize(global_model, small, hidden=(), settings=SETTINGS, seed=0)
    assert personal.global_weight >= 0.5
    probabilities = personal.predict(test.features)
    assert np.all((probabilities > 0) & (probabilities < 1))
    again = personalize(global_model, small, hidden=(), settings=SETTINGS, seed=0)
    np.testing.assert_array_equal(again.predict(test.features), probabilities)
