"""Personalisation that costs no privacy: blend the global DP model with a partner-local model.

A partner that joined the federation keeps the global model and may also train a model on its own
rows alone. Neither the local model nor the blend ever leaves the partner, so neither spends any
privacy budget. The blend weight is chosen by cross-validation on the partner's own training rows:
where the global model helps (small or unusual partners) the blend leans on it, where the partner's
own data suffices it leans on the local model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from common.data.tables import Split
from common.learning.metrics import credit_metrics
from common.learning.model import build_model
from common.learning.training import TrainSettings, predict, train

BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@dataclass
class PersonalModel:
    """σ(w·logit(global) + (1-w)·logit(local)), with w picked by local cross-validation."""

    global_model: object
    local_model: object
    global_weight: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Blended probability of 'bad'."""
        blended = (self.global_weight * _logit(predict(self.global_model, features))
                   + (1 - self.global_weight) * _logit(predict(self.local_model, features)))
        return 1.0 / (1.0 + np.exp(-blended))


def _fit_local(data: Split, hidden: tuple[int, ...], settings: TrainSettings, seed: int):
    model = build_model(data.features.shape[1], hidden, seed)
    train(model, data, settings, seed=seed)
    return model


def personalize(global_model: object, data: Split, *, hidden: tuple[int, ...],
                settings: TrainSettings, seed: int, folds: int = 3) -> PersonalModel:
    """Train a local model on `data` and blend it with `global_model` (weight by local CV)."""
    global_logits = _logit(predict(global_model, data.features))
    local_logits = np.empty(len(data))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit, held_out) in enumerate(splitter.split(data.features, data.labels)):
        model = _fit_local(Split(data.features[fit], data.labels[fit]), hidden, settings,
                           seed + k + 1)
        local_logits[held_out] = _logit(predict(model, data.features[held_out]))
    scores = {w: credit_metrics(data.labels, 1 / (1 + np.exp(-(w * global_logits
                                                               + (1 - w) * local_logits))))["auc"]
              for w in BLEND_WEIGHTS}
    best = max(BLEND_WEIGHTS, key=lambda w: (scores[w], w))
    return PersonalModel(global_model, _fit_local(data, hidden, settings, seed), best)
