"""The accounted releases of a vertical run: each party's mechanisms, their noise, its ledger.

The lender releases noisy labels once (stage 1); a passive party trains its bottom with DP-SGD
(stage 2) and releases noisy embeddings once (stage 3). Each is one `SubsampledGaussianEvent`
(a one-shot release: q = 1, one step), calibrated by `calibrate_noise_multiplier` and written as
a `Release` to the party's signed ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.learning.steps import num_steps, steps_per_epoch
from common.privacy.accounting import (
    ACCOUNTANT,
    ACCOUNTANT_NAME,
    CONVERSION,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    composed_epsilon,
    within_budget,
)
from common.privacy.crypto import sha256_hex
from common.privacy.ledger import PartnerLedger, mechanism_fields
from common.vertical.settings import VerticalSettings, private_seeds

STAGE_LABELS, STAGE_BOTTOM, STAGE_EMBEDDINGS = 1, 2, 3
RELEASES = {STAGE_LABELS: "noisy-labels", STAGE_BOTTOM: "bottom-training",
            STAGE_EMBEDDINGS: "embeddings"}
RELEASE_TOLERANCE = 1e-4
"""Bisection tolerance on the noise multiplier of a one-shot release (DP-SGD's is 1e-3)."""


@dataclass(frozen=True)
class Release:
    """One accounted mechanism event of a party (its clipping norm is the L2 sensitivity), with
    the hashes of what it was computed from and of what was sent."""

    stage: int
    event: SubsampledGaussianEvent
    received_sha256: str
    sent_sha256: str

    @property
    def name(self) -> str:
        """The release's label in the ledger (`calibration.release`)."""
        return RELEASES[self.stage]


def gaussian_release_event(noise_multiplier: float, *,
                           sensitivity: float = 1.0) -> SubsampledGaussianEvent:
    """A one-shot Gaussian release: every row once (q = 1), one step, noise std σ·sensitivity."""
    return SubsampledGaussianEvent(1.0, noise_multiplier, 1, sensitivity)


def releases_epsilon(releases: Sequence[Release], delta: float) -> float:
    """ε of a party's releases composed (`ACCOUNTANT`, the project's accountant)."""
    return composed_epsilon([r.event for r in releases], delta=delta, accountant=ACCOUNTANT)


class VerticalLedger(PartnerLedger):
    """A party's ledger of vertical releases: one signed entry per stage, in the ledger format.

    Entries are `train` events of mechanism `subsampled_gaussian` (q = 1 for one-shot releases),
    noise_multiplier = noise std / L2 sensitivity and clipping_norm = L2 sensitivity (the event's
    clipping norm), so the audit recomputes ε unchanged; `round` is the stage and
    `calibration.release` names it.
    """

    def append_release(self, release: Release, *, epsilon_budget: float, delta: float,
                       epsilon_cumulative: float, planned: int) -> dict[str, Any]:
        """Sign and append the entry of one release."""
        event = release.event
        return self._append({
            "round": release.stage, "partner": self.partner, "event": "train",
            "mechanism": mechanism_fields(event),
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
        spent = composed_epsilon([*earlier, *(r.event for r in done), release.event],
                                 delta=delta, accountant=ACCOUNTANT)
        if not within_budget(spent, epsilon_budget):
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
    event = gaussian_release_event(calibrate_noise_multiplier(
        target_epsilon=settings.lender_epsilon, delta=settings.delta, sample_rate=1.0, steps=1,
        tolerance=RELEASE_TOLERANCE))
    noisy = release_noisy_labels(train_labels, noise_multiplier=event.noise_multiplier,
                                 seed=private_seeds(seed)[0])
    return noisy, Release(STAGE_LABELS, event, sha256_hex(psi_run_id.encode()),
                          array_sha256(noisy))


def calibrate_passive_releases(num_train: int, settings: VerticalSettings
                               ) -> tuple[SubsampledGaussianEvent, SubsampledGaussianEvent]:
    """A passive party's two mechanisms: the stage-2 DP-SGD, calibrated to `stage2_epsilon`, and
    the stage-3 embedding release, calibrated to what is left of `epsilon` after it."""
    s = settings
    sample_rate = min(1.0, s.bottom.batch_size / num_train)
    steps = num_steps(s.bottom.epochs, steps_per_epoch(num_train, sample_rate=sample_rate))
    sigma = calibrate_noise_multiplier(target_epsilon=s.stage2_epsilon, delta=s.delta,
                                       sample_rate=sample_rate, steps=steps)
    bottom = SubsampledGaussianEvent(sample_rate, sigma, steps, s.bottom_clip_norm)
    z_embed = calibrate_noise_multiplier(target_epsilon=s.epsilon, delta=s.delta, sample_rate=1.0,
                                         steps=1, prior=[bottom], tolerance=RELEASE_TOLERANCE)
    return bottom, gaussian_release_event(z_embed, sensitivity=s.embedding_clip)


def plan_mechanisms(labels: SubsampledGaussianEvent,
                    bottoms: Mapping[str, SubsampledGaussianEvent],
                    embeddings: Mapping[str, SubsampledGaussianEvent]) -> dict[str, float]:
    """The mechanism parameters of a run (report.json's `mechanisms`): the label release's, and
    each passive party's stage-2 DP-SGD and stage-3 release (`key[party]` when parties differ)."""
    mechanisms: dict[str, float] = {"label_noise_multiplier": labels.noise_multiplier}
    per_party = {
        "bottom_sigma": {p: e.noise_multiplier for p, e in bottoms.items()},
        "bottom_sample_rate": {p: e.sample_rate for p, e in bottoms.items()},
        "bottom_steps": {p: e.steps for p, e in bottoms.items()},
        "embedding_noise_multiplier": {p: e.noise_multiplier for p, e in embeddings.items()},
    }
    for key, values in per_party.items():
        if len(set(values.values())) == 1:
            mechanisms[key] = next(iter(values.values()))
        else:
            mechanisms.update({f"{key}[{p}]": v for p, v in values.items()})
    return mechanisms
