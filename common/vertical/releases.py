"""The accounted releases of a vertical run: calibration, noise, and each party's signed ledger."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.learning.training import (
    num_steps,
    steps_per_epoch,
)
from common.privacy.accounting import (
    ACCOUNTANT_NAME,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    rdp_epsilon,
)
from common.privacy.budget import CONVERSION, check_budget
from common.privacy.crypto import sha256_hex
from common.privacy.ledger import MECHANISM, SAMPLING, PartnerLedger
from common.vertical.settings import VerticalSettings, private_seeds

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


STAGE_LABELS, STAGE_BOTTOM, STAGE_EMBEDDINGS = 1, 2, 3
RELEASES = {STAGE_LABELS: "noisy-labels", STAGE_BOTTOM: "bottom-training",
            STAGE_EMBEDDINGS: "embeddings"}
_EPSILON_SLACK = 1e-9


@dataclass(frozen=True)
class Release:
    """One accounted mechanism event of a party, in ledger terms."""

    stage: int
    event: SubsampledGaussianEvent
    sensitivity: float
    received_sha256: str
    sent_sha256: str

    @property
    def name(self) -> str:
        """The release's label in the ledger (`calibration.release`)."""
        return RELEASES[self.stage]


def gaussian_release_event(noise_multiplier: float) -> SubsampledGaussianEvent:
    """A one-shot Gaussian release: every row once (q = 1), one step."""
    return SubsampledGaussianEvent(1.0, noise_multiplier, 1)


def calibrate_release(*, target_epsilon: float, delta: float,
                      prior: Sequence[SubsampledGaussianEvent] = (),
                      tolerance: float = 1e-4) -> float:
    """Smallest z (within `tolerance`) such that `prior` + one Gaussian release at z stays within
    `target_epsilon` (RDP composition, the project's conversion)."""
    check_budget(target_epsilon, delta, source="vertical settings")

    def spent(z: float) -> float:
        return rdp_epsilon([*prior, gaussian_release_event(z)], delta=delta,
                           conversion=CONVERSION)

    if prior and rdp_epsilon(prior, delta=delta, conversion=CONVERSION) >= target_epsilon:
        raise ValueError(f"earlier events already spend epsilon >= {target_epsilon}: no budget "
                         f"left for the release")
    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, high * 2.0
        if high > 1e5:
            raise ValueError(f"cannot reach epsilon {target_epsilon} with one release")
    while high - low > tolerance:
        mid = (low + high) / 2.0
        low, high = (mid, high) if spent(mid) > target_epsilon else (low, mid)
    return high


def calibrate_dp_sgd(*, target_epsilon: float, delta: float, sample_rate: float,
                     steps: int) -> float:
    """σ of the stage-2 DP-SGD so that it alone spends `target_epsilon`."""
    return calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                                      sample_rate=sample_rate, steps=steps,
                                      conversion=CONVERSION)


def releases_epsilon(releases: Sequence[Release], delta: float) -> float:
    """ε of a party's releases composed (RDP, the project's conversion)."""
    return rdp_epsilon([r.event for r in releases], delta=delta, conversion=CONVERSION)


class VerticalLedger(PartnerLedger):
    """A party's ledger of vertical releases: one signed entry per stage, in the ledger format.

    Entries are `train` events of mechanism `subsampled_gaussian` (q = 1 for one-shot releases),
    noise_multiplier = noise std / L2 sensitivity and clipping_norm = L2 sensitivity, so the
    audit recomputes ε unchanged; `round` is the stage and `calibration.release` names it.
    """

    def append_release(self, release: Release, *, epsilon_budget: float, delta: float,
                       epsilon_cumulative: float, planned: int) -> dict[str, Any]:
        """Sign and append the entry of one release."""
        event = release.event
        return self._append({
            "round": release.stage, "partner": self.partner, "event": "train",
            "mechanism": {"name": MECHANISM, "sampling": SAMPLING,
                          "sample_rate": event.sample_rate,
                          "noise_multiplier": event.noise_multiplier,
                          "steps": int(event.steps), "clipping_norm": release.sensitivity},
            "delta": delta, "epsilon_budget": epsilon_budget,
            "epsilon_cumulative": float(epsilon_cumulative),
            "accountant": ACCOUNTANT_NAME, "conversion": CONVERSION,
            "calibration": {"planned_rounds": planned, "steps_per_round": int(event.steps),
                            "release": release.name, "neighbouring": (
                                "label change" if release.stage == STAGE_LABELS
                                else "zero-out of one record")},
            "model_received_sha256": release.received_sha256,
            "update_sent_sha256": release.sent_sha256, "refusal_reason": "",
        })


def write_ledger(path: Path, key: Ed25519PrivateKey, party: str, run_id: str,
                 releases: Sequence[Release], *, epsilon_budget: float,
                 delta: float) -> list[dict[str, Any]]:
    """Write a party's releases to its signed ledger; refuses a release that would take the
    ledger (every entry already in it, then these releases) over the budget."""
    ledger = VerticalLedger(path, key, party, run_id)
    earlier = ledger.events()
    done: list[Release] = []
    for release in releases:
        spent = rdp_epsilon([*earlier, *(r.event for r in done), release.event], delta=delta,
                            conversion=CONVERSION)
        if spent > epsilon_budget * (1 + _EPSILON_SLACK):
            raise ValueError(f"{party}: {release.name} would spend epsilon {spent:.4f} over "
                             f"its budget {epsilon_budget:g}")
        done.append(release)
        ledger.append_release(release, epsilon_budget=epsilon_budget, delta=delta,
                              epsilon_cumulative=spent, planned=len(releases))
    return ledger.entries


def array_sha256(values: np.ndarray) -> str:
    """SHA-256 of an array's float64 little-endian bytes (what a release hash names)."""
    return sha256_hex(np.ascontiguousarray(values, dtype="<f8").tobytes())


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0xD9]))


def release_noisy_labels(labels: np.ndarray, *, noise_multiplier: float,
                         seed: int) -> np.ndarray:
    """Lender, stage 1: labels plus N(0, z²) noise (L2 sensitivity 1); one release."""
    labels = np.asarray(labels, dtype=np.float64)
    if noise_multiplier <= 0:
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    return labels + _rng(seed).normal(0.0, noise_multiplier, size=labels.shape)


def release_embeddings(clean: np.ndarray, *, clip: float, noise_multiplier: float,
                       seed: int) -> np.ndarray:
    """Passive party, stage 3: clipped embeddings plus N(0, (z·C)²) noise; one release."""
    if noise_multiplier <= 0:
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if np.max(np.abs(clean), initial=0.0) > clip * (1 + 1e-12):
        raise ValueError(f"embeddings exceed the clipping bound {clip}: clip before releasing")
    return clean + _rng(seed).normal(0.0, noise_multiplier * clip, size=clean.shape)


def lender_release(train_labels: np.ndarray, *, settings: VerticalSettings, seed: int,
                   psi_run_id: str) -> tuple[np.ndarray, Release]:
    """Lender, stage 1: the noisy labels of the training rows (one release to both partners)."""
    z_label = calibrate_release(target_epsilon=settings.lender_epsilon, delta=settings.delta)
    noisy = release_noisy_labels(train_labels, noise_multiplier=z_label,
                                 seed=private_seeds(seed)[0])
    return noisy, Release(STAGE_LABELS, gaussian_release_event(z_label), 1.0,
                          sha256_hex(psi_run_id.encode()), array_sha256(noisy))


@dataclass(frozen=True)
class BottomPlan:
    """A passive party's stage-2 DP-SGD (q, σ, steps) and its stage-3 noise multiplier."""

    sample_rate: float
    sigma: float
    steps: int
    embedding_noise_multiplier: float


def bottom_plan(num_train: int, settings: VerticalSettings) -> BottomPlan:
    """Calibrate stage 2 to `stage2_epsilon`, then stage 3 to what is left of `epsilon`."""
    s = settings
    sample_rate = min(1.0, s.bottom.batch_size / num_train)
    steps = num_steps(s.bottom.epochs, steps_per_epoch(num_train, sample_rate=sample_rate))
    sigma = calibrate_dp_sgd(target_epsilon=s.stage2_epsilon, delta=s.delta,
                             sample_rate=sample_rate, steps=steps)
    z_embed = calibrate_release(target_epsilon=s.epsilon, delta=s.delta,
                                prior=[SubsampledGaussianEvent(sample_rate, sigma, steps)])
    return BottomPlan(sample_rate, sigma, steps, z_embed)


def plan_mechanisms(z_label: float, plans: Mapping[str, BottomPlan]) -> dict[str, float]:
    """The mechanism parameters of a run; a passive party's own when the parties differ."""
    mechanisms = {"label_noise_multiplier": z_label}
    fields = {"bottom_sigma": "sigma", "bottom_sample_rate": "sample_rate",
              "bottom_steps": "steps", "embedding_noise_multiplier": "embedding_noise_multiplier"}
    for key, attr in fields.items():
        values = {p: getattr(plan, attr) for p, plan in plans.items()}
        if len(set(values.values())) == 1:
            mechanisms[key] = next(iter(values.values()))
        else:
            mechanisms.update({f"{key}[{p}]": v for p, v in values.items()})
    return mechanisms
