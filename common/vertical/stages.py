"""Each party's stages on its own arrays (numpy in, numpy out): the code every transport shares.

Passive party: its bottom model (stage 2, DP-SGD in the private pipeline), its embeddings
(stages 3 and 5) and `passive_release`, its whole private part. Lender: the top models
(stage 4, EIV-corrected on noisy embeddings) and the pooled metrics of each setting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.data.scenarios import PASSIVE
from common.data.tables import Split
from common.learning.metrics import credit_metrics
from common.learning.model import build_model, get_weights
from common.learning.training import TrainSettings, train
from common.privacy.accounting import SubsampledGaussianEvent
from common.privacy.crypto import hash_weights
from common.vertical.parties import SETTINGS, passives_of, setting_name
from common.vertical.releases import (
    STAGE_BOTTOM,
    STAGE_EMBEDDINGS,
    Release,
    array_sha256,
    calibrate_passive_releases,
    release_embeddings,
)
from common.vertical.settings import VerticalSettings, non_private_seeds, private_seeds


def train_bottom(features: np.ndarray, targets: np.ndarray, *, settings: TrainSettings,
                 seed: int, dp: SubsampledGaussianEvent | None = None) -> tuple[nn.Module, int]:
    """Passive party, stage 2: a linear logistic score on its columns; returns (model, steps).

    With `dp` it is DP-SGD (the one training loop, `common.learning.training.train`); `targets`
    may be noisy labels (soft targets: the loss gradient is linear in them).
    """
    model = build_model(features.shape[1], (), seed)
    outcome = train(model, Split(features.astype(np.float32), targets.astype(np.float32)),
                    settings, seed=seed, dp=dp)
    if not math.isfinite(outcome.mean_loss):
        raise RuntimeError(f"bottom training diverged (mean loss {outcome.mean_loss})")
    return model, outcome.steps


@torch.no_grad()
def bottom_logits(bottom: nn.Module, features: np.ndarray) -> np.ndarray:
    """The bottom model's raw score of each row (stays with the party)."""
    bottom.eval()
    return bottom(torch.as_tensor(features, dtype=torch.float32)).numpy().astype(np.float64)


def label_centre(targets: np.ndarray) -> float:
    """Logit of the mean (noisy) label: centres the embedding; post-processing of stage 1."""
    rate = float(np.clip(np.mean(targets), 0.02, 0.98))
    return math.log(rate / (1.0 - rate))


def embed(bottom: nn.Module, features: np.ndarray, *, centre: float,
          clip: float | None) -> np.ndarray:
    """Passive party: clean embedding s - centre, clipped to [-clip, clip] (None: unclipped)."""
    scores = bottom_logits(bottom, features) - centre
    return scores if clip is None else np.clip(scores, -clip, clip)


@dataclass
class TopModel:
    """The lender's logistic top model: weights over [own columns, embeddings...] and a bias."""

    weights: np.ndarray
    bias: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Log-odds of 'bad' for each row of the concatenated inputs."""
        return features @ self.weights + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probability of 'bad'."""
        return 1.0 / (1.0 + np.exp(-self.logits(features)))


def _stack(own: np.ndarray, embeddings: Sequence[np.ndarray]) -> np.ndarray:
    return np.column_stack([own, *[np.reshape(e, (len(own), -1)) for e in embeddings]])


def eiv_correct(weights: np.ndarray, bias: float, inputs: np.ndarray,
                noise_var: np.ndarray) -> tuple[np.ndarray, float]:
    """Regression calibration: β ← Σ_clean⁻¹ Σ_noisy β, Σ_clean = Σ_noisy - diag(noise var).

    The clean covariance is floored (eigenvalues >= 5% of the noisy ones' scale) so that a noisy
    variance estimate below the known noise cannot blow the coefficients up; the bias keeps the
    mean logit.
    """
    noisy = np.cov(inputs, rowvar=False)
    clean = noisy - np.diag(noise_var)
    values, vectors = np.linalg.eigh(clean)
    floor = 0.05 * np.min(np.diag(noisy)[noise_var > 0]) if np.any(noise_var > 0) else 0.0
    values = np.maximum(values, max(floor, 1e-9))
    clean = (vectors * values) @ vectors.T
    corrected = np.linalg.solve(clean, noisy @ weights)
    mean = inputs.mean(axis=0)
    return corrected, float(bias + mean @ (weights - corrected))


def fit_top(own: np.ndarray, embeddings: Sequence[np.ndarray], labels: np.ndarray, *,
            settings: TrainSettings, seed: int,
            embedding_noise_std: Sequence[float] | None = None) -> TopModel:
    """Lender, stage 4: logistic regression on its columns + embeddings (non-private, local),
    corrected for the known noise of released embeddings when `embedding_noise_std` is given."""
    inputs = _stack(own, embeddings)
    model = build_model(inputs.shape[1], (), seed)
    train(model, Split(inputs.astype(np.float32), labels.astype(np.float32)), settings, seed=seed)
    weights = get_weights(model)
    w = weights["net.0.weight"].reshape(-1).astype(np.float64)
    b = float(weights["net.0.bias"][0])
    if embedding_noise_std is not None and len(embeddings):
        noise_var = np.zeros(inputs.shape[1])
        noise_var[own.shape[1]:] = np.square(np.asarray(embedding_noise_std, dtype=np.float64))
        w, b = eiv_correct(w, b, inputs, noise_var)
    return TopModel(w, b)


def score(top: TopModel, own: np.ndarray, embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Lender: probability of 'bad' from its columns and the scored customers' embeddings."""
    return top.predict(_stack(own, embeddings))


def _metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    result = credit_metrics(labels, scores)
    return {"auc": result["auc"], "ks": result["ks"]}


@dataclass
class PassiveOutcome:
    """A passive party's stages 2-3: its bottom (kept), its released embeddings, its releases."""

    bottom: nn.Module
    centre: float
    released: np.ndarray
    releases: list[Release]

    def _event(self, stage: int) -> SubsampledGaussianEvent:
        return next(r.event for r in self.releases if r.stage == stage)

    @property
    def bottom_event(self) -> SubsampledGaussianEvent:
        """Stage 2: the DP-SGD the bottom was trained with."""
        return self._event(STAGE_BOTTOM)

    @property
    def embedding_event(self) -> SubsampledGaussianEvent:
        """Stage 3: the one-shot release of the training rows' embeddings."""
        return self._event(STAGE_EMBEDDINGS)

    @property
    def noise_std(self) -> float:
        """Std of the noise on the released embeddings (the lender's EIV correction needs it)."""
        return self.embedding_event.noise_multiplier * self.embedding_event.clipping_norm


def passive_release(party: str, features: np.ndarray, noisy_labels: np.ndarray, *,
                    settings: VerticalSettings, seed: int) -> PassiveOutcome:
    """Passive party, stages 2-3: DP-SGD bottom on the noisy labels, then one noisy release of
    its training rows' embeddings (`settings.epsilon` is this party's budget)."""
    s, k, seeds = settings, PASSIVE.index(party), private_seeds(seed)
    bottom_event, embedding_event = calibrate_passive_releases(len(noisy_labels), s)
    bottom, _ = train_bottom(features, noisy_labels, settings=s.bottom, seed=seeds[1 + k],
                             dp=bottom_event)
    centre = label_centre(noisy_labels)
    clean = embed(bottom, features, centre=centre, clip=s.embedding_clip)
    released = release_embeddings(clean, clip=embedding_event.clipping_norm,
                                   noise_multiplier=embedding_event.noise_multiplier,
                                   seed=seeds[4 + k])
    weights_hash = hash_weights(get_weights(bottom))
    releases = [Release(STAGE_BOTTOM, bottom_event, array_sha256(noisy_labels), weights_hash),
                Release(STAGE_EMBEDDINGS, embedding_event, weights_hash, array_sha256(released))]
    return PassiveOutcome(bottom, centre, released, releases)


def scoring_embeddings(bottom: nn.Module, features: np.ndarray, *, centre: float,
                       settings: VerticalSettings) -> np.ndarray:
    """Passive party, stage 5: clean embeddings of scored customers (NOT covered by ε)."""
    return embed(bottom, features, centre=centre, clip=settings.embedding_clip)


def fit_private_tops(own: np.ndarray, embeddings: Mapping[str, np.ndarray],
                     noise_std: Mapping[str, float], labels: np.ndarray, *,
                     settings: VerticalSettings, seed: int) -> dict[str, TopModel]:
    """Lender, stage 4: one EIV-corrected top model per setting on the noisy embeddings."""
    tops = {}
    for parties in SETTINGS:
        passive = passives_of(parties)
        tops[setting_name(parties)] = fit_top(
            own, [embeddings[p] for p in passive], labels, settings=settings.top,
            seed=private_seeds(seed)[7], embedding_noise_std=[noise_std[p] for p in passive])
    return tops


def setting_metrics(tops: Mapping[str, TopModel], own: np.ndarray,
                    embeddings: Mapping[str, Mapping[str, np.ndarray]],
                    labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Pooled test AUC/KS per setting; `embeddings[setting][party]` are the scored rows'."""
    return {setting_name(parties): _metrics(labels, score(
        tops[setting_name(parties)], own,
        [embeddings[setting_name(parties)][p] for p in passives_of(parties)]))
        for parties in SETTINGS}


def non_private_bottom(party: str, parties: Sequence[str], features: np.ndarray,
                       labels: np.ndarray, *, settings: VerticalSettings,
                       seed: int) -> nn.Module:
    """Passive party, non-private: its bottom for one setting, trained on the true labels."""
    k = passives_of(parties).index(party)
    return train_bottom(features, labels, settings=settings.top,
                        seed=non_private_seeds(seed)[1 + k])[0]


def exact_embeddings(bottom: nn.Module, features: np.ndarray) -> np.ndarray:
    """Non-private: unclipped, noiseless, uncentred embeddings."""
    return embed(bottom, features, centre=0.0, clip=None)
