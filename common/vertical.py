"""Vertical federated learning with accounted DP: the same customers, columns split by party.

The lender holds the label and its own columns; the e-commerce platform and the bank ("passive"
parties) hold other columns of the same customers, lined up by private set intersection
(`common.psi`). The model is a split network: each passive party's bottom model turns its columns
into a 1-D embedding (a linear score), and the lender's top model, a logistic regression over its
own columns and the embeddings, holds the label. This module is the Flower-free core: every stage
is a plain function that ONE party calls on its own arrays (numpy in, numpy out), so a ClientApp
or ServerApp can call it later; `run_vertical_in_memory` drives all parties in one process and
keeps a transcript of every array that crosses a party boundary.

Private mode: two-stage split learning with one-shot releases
-------------------------------------------------------------
Naive split training releases embeddings and gradients at every step of every epoch; accounted
honestly (the bottom weights carry every record into every later embedding) it needs noise
multipliers of 5-11 at ε=3 and loses most of the utility. Instead each party releases once:

1. Lender -> passive parties, ``noisy-labels`` (stage 1): ỹ = y + N(0, (z_L·Δ)²) for the aligned
   TRAINING rows, Δ = 1 (one label changed 0 <-> 1 moves the vector by 1 in L2). One Gaussian
   release (the same vector goes to both partners: it is one release, not two). This is the
   gradient sent back for the label: ỹ is minus the gradient of the squared loss at a zero
   prediction, and everything a passive party does with it is post-processing. Test labels never
   leave the lender. Ledger: q = 1, σ = z_L, steps = 1 (the lender's "label ε", reported apart
   from the passive parties' feature ε).
2. Each passive party, ``bottom-training`` (stage 2, nothing leaves the party): DP-SGD through
   `common.training.train` on (its columns, ỹ), a linear logistic model (BCE with soft targets:
   its gradient is linear in ỹ, so the label noise only adds variance). Poisson sampling the
   party draws itself, so amplification is real. Needed because the released embeddings depend
   on ALL the party's records through the bottom weights. Ledger: (q, σ, steps) as usual.
3. Each passive party -> lender, ``embeddings`` (stage 3): for its aligned training rows,
   h = clip(s - m, -C, C) + N(0, (z_E·C)²), where s is the bottom model's logit, m = logit of the
   mean of ỹ (post-processing of stage 1) centres it, and C = `embedding_clip`. One Gaussian
   release of the whole vector (each row depends on its own record given the DP bottom weights).
   Ledger: q = 1, σ = z_E, steps = 1, clipping_norm = C.
4. Lender, top model (nothing leaves): logistic regression via `common.training.train` over its
   own columns and the noisy embeddings, non-private (its own data never leaves), then corrected
   for errors in variables: the lender knows the noise variances (z_E·C)², so it replaces the
   covariance of the noisy inputs by that of the clean ones (β ← Σ_clean⁻¹ Σ_noisy β, regression
   calibration), undoing the attenuation noise causes in the embedding coefficients.
5. Scoring (test rows, and any customer scored later): passive parties send CLEAN embeddings
   clip(s - m, -C, C) of the scored customers. NOT covered by ε (see below).

Each passive party's budget is split by `bottom_epsilon` (default ε/4): σ of stage 2 spends that
much on its own, then z_E is the smallest noise that keeps stages 2 and 3 composed (RDP, one
accountant) within the party's ε; the lender's z_L spends its whole ε on stage 1.

The exact privacy claim
-----------------------
Unit: one customer record of one party. The customer set of the alignment is public among the
parties after PSI (as in any vertical FL), so a record cannot be "removed" from the release
without revealing it; the neighbouring relation is therefore *zero-out* (Kairouz et al. 2021),
the vertical analogue of the horizontal add/remove unit: one customer's columns at this party
are replaced by a null record ⊥ whose gradient and embedding are 0.

- Passive party P: everything P releases (its stage-3 embeddings of training rows, and the
  bottom weights they are computed with, which never leave P) is (ε_P, δ)-DP under zero-out of
  one of P's records, ε_P composed by RDP over stage 2 (Poisson subsampled Gaussian: removal and
  zero-out coincide for DP-SGD since a zero gradient adds nothing and Opacus divides by a fixed
  expected batch size) and stage 3 (Gaussian, L2 sensitivity C). Changing a record's columns to
  any other value (replace-one) is covered as a group of two zero-outs.
- Lender: the noisy labels are (ε_L, δ)-label-DP: changing one training customer's label changes
  the release by at most 1. This is the lender's "label ε", reported separately.
- Both go into each party's signed ledger in the ledger format of `common.ledger` (mechanism
  `subsampled_gaussian` with sample_rate 1.0 for the one-shot releases, noise_multiplier = noise
  std / L2 sensitivity, clipping_norm = L2 sensitivity), so `fedcredit audit verify` recomputes
  every ε from (q, σ, steps). The ledger `round` is the stage number (1, 2, 3) and
  `calibration.release` names the release.

NOT covered by ε, stated plainly:
- Scoring: the clean embedding of every customer scored (the test rows here) is revealed to the
  lender. Consented scoring: a customer who applies is scored on all parties' data. (A single
  ε=3 release of a 1-D score needs noise of ~1.5x its range: scoring under DP was measured to fall
  back to the lender's own AUC.)
- The PSI outcome: which customers are common, and which aligned rows are training vs test (the
  lender tells passive parties which rows to release). The split is label-independent (uniform);
  a stratified split (`stratify=True`, simulation only) would reveal label counts per part.
- Sizes of the training and test parts; the mechanism parameters (public by design).
- Non-private mode (`private=False`) exchanges exact embeddings and gradients: no DP at all.

Non-private mode
----------------
The same stages with true labels and unclipped, noiseless embeddings (stacking), then joint
fine-tuning: per minibatch, passive parties send exact embeddings and receive the exact gradient
of the lender's loss w.r.t. them, so the linear split model converges to the centralized logistic
regression over all columns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from common.accounting import (
    ACCOUNTANT_NAME,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    rdp_epsilon,
)
from common.crypto import hash_weights, sha256_hex
from common.data import Split, load_bundled, subset
from common.ledger import MECHANISM, SAMPLING, PartnerLedger
from common.metrics import credit_metrics
from common.model import build_model, get_weights, set_weights
from common.privacy import CONVERSION, check_budget
from common.psi import customer_id, run_psi_in_memory, sample_known_ids
from common.schema import Schema, encode_table
from common.training import (
    DPSettings,
    TrainSettings,
    num_steps,
    steps_per_epoch,
    train,
)

log = logging.getLogger(__name__)

LENDER = "lender"
PASSIVE = ("ecommerce", "bank")
PARTIES = (LENDER, *PASSIVE)
PARTY_COLUMNS: dict[str, tuple[str, ...]] = {
    LENDER: ("Amount", "Time", "Records"),
    "ecommerce": ("Price", "Expenses", "Age", "Marital", "Home"),
    "bank": ("Income", "Assets", "Debt", "Seniority", "Job"),
}
SCENARIO = "credit_data_vertical"
DATASET = "credit_data"
SETTINGS: tuple[tuple[str, ...], ...] = (
    (LENDER,), (LENDER, "ecommerce"), (LENDER, "bank"), (LENDER, "ecommerce", "bank"))
STAGE_LABELS, STAGE_BOTTOM, STAGE_EMBEDDINGS = 1, 2, 3
RELEASES = {STAGE_LABELS: "noisy-labels", STAGE_BOTTOM: "bottom-training",
            STAGE_EMBEDDINGS: "embeddings"}
_EPSILON_SLACK = 1e-9


# ---------------------------------------------------------------------------- scenario


def party_feature_indices(schema: Schema,
                          columns: Mapping[str, Sequence[str]] = PARTY_COLUMNS
                          ) -> dict[str, list[int]]:
    """Each party's encoded feature positions (every encoded feature of its schema columns)."""
    names = {spec.name for spec in schema.columns if spec.feature}
    claimed = [c for cols in columns.values() for c in cols]
    unknown = sorted(set(claimed) - names)
    if unknown:
        raise ValueError(f"schema {schema.name!r} has no feature columns {unknown}")
    if len(set(claimed)) != len(claimed):
        raise ValueError("a column is given to more than one party")
    positions: dict[str, list[int]] = {party: [] for party in columns}
    owner = {c: party for party, cols in columns.items() for c in cols}
    start = 0
    for spec in schema.columns:
        width = len(spec.feature_names())
        if spec.name in owner:
            positions[owner[spec.name]].extend(range(start, start + width))
        start += width
    return positions


@dataclass(frozen=True)
class PartyView:
    """One party's aligned columns, training and test rows (never leave the party)."""

    party: str
    feature_names: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class VerticalScenario:
    """Aligned vertical data: each party's view, the lender's labels, and PSI bookkeeping."""

    seed: int
    views: dict[str, PartyView]
    train_labels: np.ndarray
    test_labels: np.ndarray
    known_customers: dict[str, int]
    psi_run_id: str

    @property
    def num_aligned(self) -> int:
        """Customers every party knows."""
        return len(self.train_labels) + len(self.test_labels)


def split_aligned(num_rows: int, *, test_fraction: float, seed: int,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train/test positions of the aligned rows (seeded); stratified only when `labels` given."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(num_rows)
        cut = round(num_rows * test_fraction)
        return np.sort(order[cut:]), np.sort(order[:cut])
    test = []
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        test.append(rows[:round(len(rows) * test_fraction)])
    test_rows = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(num_rows), test_rows), test_rows


def _scenario_seeds(seed: int) -> list[int]:
    """[split seed, one known-ID seed per passive party] of the scenario (seeded)."""
    return [int(x) for x in
            np.random.SeedSequence([seed, 0x5e71]).generate_state(len(PASSIVE) + 1)]


def split_seed(seed: int) -> int:
    """Seed of the lender's train/test split of the aligned rows."""
    return _scenario_seeds(seed)[0]


@dataclass(frozen=True)
class PartyData:
    """One party's own table: the customer IDs it knows, its encoded columns, (lender) labels."""

    party: str
    ids: tuple[str, ...]
    feature_names: tuple[str, ...]
    features: np.ndarray
    labels: np.ndarray | None = None

    def row_of(self, customer: str) -> int:
        """Position of `customer` in this party's table; KeyError if the party does not know it."""
        try:
            return self.ids.index(customer)
        except ValueError:
            raise KeyError(f"{self.party} does not know customer {customer!r}") from None


def known_ids(party: str, seed: int, num_customers: int) -> list[str]:
    """The customer IDs `party` knows: the lender all, a passive party a seeded 85-95%."""
    if party == LENDER:
        return [customer_id(i) for i in range(num_customers)]
    if party not in PASSIVE:
        raise ValueError(f"unknown party {party!r}; parties are {PARTIES}")
    return sample_known_ids(num_customers, seed=_scenario_seeds(seed)[1 + PASSIVE.index(party)])


def load_party(party: str, seed: int) -> PartyData:
    """ONE party's table: its own known customers and its own columns, nothing of the others'.

    The simulated party reads the bundled CSV and keeps only its rows and columns (encoding is
    row by row, so this equals slicing the encoded whole); only the lender keeps the label.
    """
    if party not in PARTIES:
        raise ValueError(f"unknown party {party!r}; parties are {PARTIES}")
    table, schema = load_bundled(DATASET)
    ids = known_ids(party, seed, len(table.rows))
    rows = np.array([int(c.split("-")[1]) for c in ids])
    features, labels = encode_table(subset(table, rows, party), schema)
    cols = party_feature_indices(schema)[party]
    return PartyData(party, tuple(ids), tuple(schema.feature_names[i] for i in cols),
                     features[:, cols].astype(np.float64),
                     labels.astype(np.float64) if party == LENDER else None)


def lender_row_order(lender_rows: Sequence[int]) -> np.ndarray:
    """The lender's choice of aligned order: by its own row (PSI's order is random)."""
    return np.argsort(np.asarray(lender_rows), kind="stable")


def party_view(data: PartyData, aligned: Sequence[int], train_pos: np.ndarray,
               test_pos: np.ndarray) -> PartyView:
    """A party's aligned training and test rows from its own table and its PSI alignment."""
    block = data.features[np.asarray(aligned, dtype=int)]
    return PartyView(data.party, data.feature_names, block[train_pos], block[test_pos])


def load_vertical_scenario(seed: int, *, test_fraction: float = 0.25,
                           stratify: bool = False) -> VerticalScenario:
    """The credit_data_vertical scenario: PSI-aligned party views and a seeded train/test split.

    Each party's table comes from `load_party` (the lender knows every customer, each passive
    party a seeded random 85-95%). Rows are aligned by `common.psi.run_psi_in_memory`, ordered
    by the lender's row and split uniformly at random (`stratify=True` stratifies on the label:
    simulation only).
    """
    data = {p: load_party(p, seed) for p in PARTIES}
    psi = run_psi_in_memory({p: list(data[p].ids) for p in PARTIES}, lender=LENDER)
    # The lender fixes the aligned order (here: by its own row) and tells each partner.
    order = lender_row_order(psi.aligned_rows[LENDER])
    aligned = {p: np.asarray(psi.aligned_rows[p])[order] for p in PARTIES}
    lender_ids = [data[LENDER].ids[i] for i in aligned[LENDER]]
    assert data[LENDER].labels is not None
    y = data[LENDER].labels[aligned[LENDER]]
    train_pos, test_pos = split_aligned(len(y), test_fraction=test_fraction,
                                        seed=split_seed(seed), labels=y if stratify else None)
    views = {}
    for party in PARTIES:
        if [data[party].ids[i] for i in aligned[party]] != lender_ids:
            raise RuntimeError(f"PSI misaligned {party}'s rows")  # guards the in-memory driver
        views[party] = party_view(data[party], aligned[party], train_pos, test_pos)
    return VerticalScenario(seed=seed, views=views, train_labels=y[train_pos],
                            test_labels=y[test_pos],
                            known_customers={p: len(data[p].ids) for p in PARTIES},
                            psi_run_id=psi.run_id)


# ---------------------------------------------------------------------------- privacy


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


# ---------------------------------------------------------------------------- party stages


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0xD9]))


def release_noisy_labels(labels: np.ndarray, *, noise_multiplier: float,
                         seed: int) -> np.ndarray:
    """Lender, stage 1: labels plus N(0, z²) noise (L2 sensitivity 1); one release."""
    labels = np.asarray(labels, dtype=np.float64)
    if noise_multiplier <= 0:
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    return labels + _rng(seed).normal(0.0, noise_multiplier, size=labels.shape)


def train_bottom(features: np.ndarray, targets: np.ndarray, *, settings: TrainSettings,
                 seed: int, dp: DPSettings | None = None,
                 steps: int | None = None) -> tuple[nn.Module, int]:
    """Passive party, stage 2: a linear logistic score on its columns; returns (model, steps).

    With `dp` it is DP-SGD (the one training loop, `common.training.train`); `targets` may be
    noisy labels (soft targets: the loss gradient is linear in them).
    """
    model = build_model(features.shape[1], (), seed)
    outcome = train(model, Split(features.astype(np.float32), targets.astype(np.float32)),
                    settings, seed=seed, dp=dp, steps=steps)
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


def release_embeddings(clean: np.ndarray, *, clip: float, noise_multiplier: float,
                       seed: int) -> np.ndarray:
    """Passive party, stage 3: clipped embeddings plus N(0, (z·C)²) noise; one release."""
    if noise_multiplier <= 0:
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if np.max(np.abs(clean), initial=0.0) > clip * (1 + 1e-12):
        raise ValueError(f"embeddings exceed the clipping bound {clip}: clip before releasing")
    return clean + _rng(seed).normal(0.0, noise_multiplier * clip, size=clean.shape)


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


# ---------------------------------------------------------------------------- transcript


@dataclass(frozen=True)
class Message:
    """One array that crossed a party boundary."""

    stage: str
    sender: str
    recipient: str
    kind: str
    payload: np.ndarray


@dataclass
class Transcript:
    """Every array sent between parties, in order (what the tests inspect)."""

    messages: list[Message] = field(default_factory=list)

    def send(self, stage: str, sender: str, recipient: str, kind: str,
             payload: np.ndarray) -> np.ndarray:
        """Record `payload` going from `sender` to `recipient`; returns a copy, as received."""
        received = np.array(payload, dtype=np.float64, copy=True)
        self.messages.append(Message(stage, sender, recipient, kind, received))
        return received.copy()


# ---------------------------------------------------------------------------- non-private joint


def finetune_batches(num_rows: int, settings: TrainSettings, seed: int) -> list[np.ndarray]:
    """The lender's minibatch schedule of joint fine-tuning: a fresh permutation per epoch."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = steps_per_epoch(num_rows, batch_size=settings.batch_size)
    batches = []
    for step in range(num_steps(settings.epochs, per_epoch)):
        if step % per_epoch == 0:
            order = torch.randperm(num_rows, generator=generator)
        start = (step % per_epoch) * settings.batch_size
        batches.append(order[start:start + settings.batch_size].numpy())
    return batches


def optimizer_arrays(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """An optimizer's state as named arrays (to keep it between messages)."""
    return {f"{index}.{name}": value.detach().numpy().copy()
            for index, state in optimizer.state_dict()["state"].items()
            for name, value in state.items()}


def load_optimizer_arrays(optimizer: torch.optim.Optimizer,
                          arrays: Mapping[str, np.ndarray]) -> None:
    """Inverse of `optimizer_arrays` (nothing to load before the first step)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = torch.tensor(np.asarray(value))
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})


class FinetuneTop:
    """Lender side of joint fine-tuning: the top model and its Adam state.

    `step` takes the exact embeddings of one batch and returns the exact gradient of the
    lender's loss w.r.t. each; `arrays`/`from_arrays` keep the state between messages.
    """

    def __init__(self, top: TopModel, settings: TrainSettings) -> None:
        self.weights = torch.tensor(top.weights, dtype=torch.float32, requires_grad=True)
        self.bias = torch.tensor([top.bias], dtype=torch.float32, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.weights, self.bias], lr=settings.learning_rate)

    def step(self, own: np.ndarray, labels: np.ndarray,
             embeddings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One Adam step of the top model on a batch; the gradients to send back."""
        received = [torch.tensor(e, dtype=torch.float32, requires_grad=True) for e in embeddings]
        inputs = torch.cat([torch.as_tensor(own, dtype=torch.float32),
                            torch.stack(received, dim=1)], dim=1)
        self.optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            inputs @ self.weights + self.bias, torch.as_tensor(labels, dtype=torch.float32))
        loss.backward()
        self.optimizer.step()
        return [emb.grad.numpy().copy() for emb in received]

    def top(self) -> TopModel:
        """The current top model."""
        return TopModel(self.weights.detach().numpy().astype(np.float64), float(self.bias.item()))

    def arrays(self) -> dict[str, np.ndarray]:
        """Weights and optimizer state."""
        return {"top.weights": self.weights.detach().numpy().copy(),
                "top.bias": self.bias.detach().numpy().copy(),
                **{f"adam.{k}": v for k, v in optimizer_arrays(self.optimizer).items()}}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray],
                    settings: TrainSettings) -> FinetuneTop:
        """Inverse of `arrays`."""
        tuner = cls(TopModel(np.asarray(arrays["top.weights"], dtype=np.float64),
                             float(np.asarray(arrays["top.bias"])[0])), settings)
        load_optimizer_arrays(tuner.optimizer, {k[5:]: v for k, v in arrays.items()
                                                if k.startswith("adam.")})
        return tuner


class FinetuneBottom:
    """Passive side of joint fine-tuning: its bottom model and the bottom's Adam state."""

    def __init__(self, bottom: nn.Module, settings: TrainSettings) -> None:
        self.bottom = bottom
        self.optimizer = torch.optim.Adam(bottom.parameters(), lr=settings.learning_rate)

    def forward(self, features: np.ndarray) -> np.ndarray:
        """Exact embeddings of a batch (what the party sends)."""
        with torch.no_grad():
            self.bottom.train()
            return self.bottom(torch.as_tensor(features, dtype=torch.float32)).numpy().copy()

    def backward(self, features: np.ndarray, grad: np.ndarray) -> None:
        """One Adam step from the lender's gradient w.r.t. this batch's embeddings (the bottom
        is unchanged since `forward`, so recomputing the batch gives the same graph)."""
        self.bottom.train()
        self.optimizer.zero_grad()
        outputs = self.bottom(torch.as_tensor(features, dtype=torch.float32))
        outputs.backward(torch.as_tensor(grad, dtype=torch.float32))
        self.optimizer.step()

    def arrays(self) -> dict[str, np.ndarray]:
        """Weights and optimizer state."""
        return {**{f"bottom.{k}": v for k, v in get_weights(self.bottom).items()},
                **{f"adam.{k}": v for k, v in optimizer_arrays(self.optimizer).items()}}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray],
                    settings: TrainSettings) -> FinetuneBottom:
        """Inverse of `arrays`."""
        weights = {k[7:]: np.asarray(v) for k, v in arrays.items() if k.startswith("bottom.")}
        bottom = build_model(weights["net.0.weight"].shape[1], (), 0)
        set_weights(bottom, weights)
        tuner = cls(bottom, settings)
        load_optimizer_arrays(tuner.optimizer, {k[5:]: v for k, v in arrays.items()
                                                if k.startswith("adam.")})
        return tuner


def joint_finetune(top: TopModel, bottoms: Mapping[str, nn.Module], own: np.ndarray,
                   features: Mapping[str, np.ndarray], labels: np.ndarray, *,
                   settings: TrainSettings, seed: int,
                   transcript: Transcript | None = None) -> TopModel:
    """Non-private split learning: exact embeddings forward, exact gradients back, per batch.

    Passive parties update their bottoms in place; returns the lender's updated top model.
    """
    parties = list(bottoms)
    lender = FinetuneTop(top, settings)
    tuners = {p: FinetuneBottom(bottoms[p], settings) for p in parties}
    for batch in finetune_batches(len(labels), settings, seed):
        received = []
        for p in parties:  # passive side: forward its bottom, send the embeddings
            sent = tuners[p].forward(features[p][batch])
            if transcript is not None:
                sent = transcript.send("finetune", p, LENDER, "embeddings", sent)
            received.append(sent)
        grads = lender.step(own[batch], labels[batch], received)
        for p, grad in zip(parties, grads, strict=True):  # gradients back to each party
            if transcript is not None:
                grad = transcript.send("finetune", LENDER, p, "embedding-gradients", grad)
            tuners[p].backward(features[p][batch], grad)
    return lender.top()


# ---------------------------------------------------------------------------- in-memory run


@dataclass(frozen=True)
class VerticalSettings:
    """Settings of a vertical run (privacy per party, stage-2 DP-SGD, top model)."""

    epsilon: float = 3.0
    delta: float = 1e-5
    label_epsilon: float | None = None
    bottom_epsilon: float | None = None
    embedding_clip: float = 1.0
    bottom: TrainSettings = TrainSettings(epochs=10.0, batch_size=1280, learning_rate=0.05)
    bottom_clip_norm: float = 1.0
    top: TrainSettings = TrainSettings(epochs=40.0, batch_size=128, learning_rate=0.02)
    finetune: TrainSettings = TrainSettings(epochs=40.0, batch_size=128, learning_rate=0.01)
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        check_budget(self.epsilon, self.delta, source="vertical settings")
        if not 0 < self.stage2_epsilon < self.epsilon:
            raise ValueError(f"bottom epsilon must be in (0, epsilon={self.epsilon}), got "
                             f"{self.bottom_epsilon}")
        if self.embedding_clip <= 0 or self.bottom_clip_norm <= 0:
            raise ValueError("embedding clip and bottom clip norm must be > 0")

    @property
    def stage2_epsilon(self) -> float:
        """ε the stage-2 DP-SGD spends on its own (default: a quarter of the party's ε)."""
        return self.epsilon / 4 if self.bottom_epsilon is None else self.bottom_epsilon

    @property
    def lender_epsilon(self) -> float:
        """The lender's label budget (defaults to the per-party ε)."""
        return self.epsilon if self.label_epsilon is None else self.label_epsilon


FULL_BATCH = 2**31 - 1


def full_batch_finetune(steps: int, learning_rate: float = 0.02) -> TrainSettings:
    """Joint fine-tuning in `steps` full-batch Adam steps (what the Flower transport runs: two
    message rounds per step; 40 steps at 0.02 reach the per-batch result within ~0.001 AUC)."""
    return TrainSettings(epochs=float(steps), batch_size=FULL_BATCH, learning_rate=learning_rate)


@dataclass
class VerticalResult:
    """Metrics per setting and mode, ε per party, the ledgers' entries and the transcript."""

    seed: int
    metrics: dict[str, dict[str, dict[str, float]]]
    centralized: dict[str, float]
    epsilon: dict[str, float]
    releases: dict[str, list[Release]]
    mechanisms: dict[str, float]
    transcript: Transcript
    ledgers: dict[str, Path] = field(default_factory=dict)


def setting_name(parties: Sequence[str]) -> str:
    """'lender', 'lender+bank', ..."""
    return "+".join(parties)


def centralized_logistic(scenario: VerticalScenario) -> dict[str, float]:
    """Reference: one logistic regression on all parties' columns pooled (simulation only)."""
    from sklearn.linear_model import LogisticRegression
    train_x = np.column_stack([scenario.views[p].train for p in PARTIES])
    test_x = np.column_stack([scenario.views[p].test for p in PARTIES])
    model = LogisticRegression(max_iter=5000).fit(train_x, scenario.train_labels)
    return credit_metrics(scenario.test_labels, model.predict_proba(test_x)[:, 1])


def _metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    result = credit_metrics(labels, scores)
    return {"auc": result["auc"], "ks": result["ks"]}


def private_seeds(seed: int) -> list[int]:
    """Seeds of the DP pipeline: [labels, bottoms (one per passive party), -, embedding noise
    (one per passive party), -, -, top]; each party derives its own from the run seed."""
    return [int(x) for x in np.random.SeedSequence([seed, 0xDB]).generate_state(8)]


def non_private_seeds(seed: int) -> list[int]:
    """Seeds of the non-private pipeline: [top, bottoms (by position in a setting), -, finetune]."""
    return [int(x) for x in np.random.SeedSequence([seed, 0x0D]).generate_state(4)]


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


@dataclass
class PassiveOutcome:
    """A passive party's stages 2-3: its bottom (kept), its released embeddings, its releases."""

    bottom: nn.Module
    centre: float
    released: np.ndarray
    releases: list[Release]
    plan: BottomPlan

    def noise_std(self, settings: VerticalSettings) -> float:
        """Std of the noise on the released embeddings (the lender's EIV correction needs it)."""
        return self.plan.embedding_noise_multiplier * settings.embedding_clip


def passive_release(party: str, features: np.ndarray, noisy_labels: np.ndarray, *,
                    settings: VerticalSettings, seed: int) -> PassiveOutcome:
    """Passive party, stages 2-3: DP-SGD bottom on the noisy labels, then one noisy release of
    its training rows' embeddings (`settings.epsilon` is this party's budget)."""
    s, k, seeds = settings, PASSIVE.index(party), private_seeds(seed)
    plan = bottom_plan(len(noisy_labels), s)
    bottom, taken = train_bottom(features, noisy_labels, settings=s.bottom, seed=seeds[1 + k],
                                 dp=DPSettings(plan.sample_rate, plan.sigma, s.bottom_clip_norm),
                                 steps=plan.steps)
    centre = label_centre(noisy_labels)
    clean = embed(bottom, features, centre=centre, clip=s.embedding_clip)
    released = release_embeddings(clean, clip=s.embedding_clip,
                                   noise_multiplier=plan.embedding_noise_multiplier,
                                   seed=seeds[4 + k])
    weights_hash = hash_weights(get_weights(bottom))
    releases = [
        Release(STAGE_BOTTOM, SubsampledGaussianEvent(plan.sample_rate, plan.sigma, taken),
                s.bottom_clip_norm, array_sha256(noisy_labels), weights_hash),
        Release(STAGE_EMBEDDINGS, gaussian_release_event(plan.embedding_noise_multiplier),
                s.embedding_clip, weights_hash, array_sha256(released))]
    return PassiveOutcome(bottom, centre, released, releases, plan)


def scoring_embeddings(bottom: nn.Module, features: np.ndarray, *, centre: float,
                       settings: VerticalSettings) -> np.ndarray:
    """Passive party, stage 5: clean embeddings of scored customers (NOT covered by ε)."""
    return embed(bottom, features, centre=centre, clip=settings.embedding_clip)


def passives_of(parties: Sequence[str]) -> list[str]:
    """The passive parties of a setting, in order."""
    return [p for p in parties if p != LENDER]


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


def run_private(scenario: VerticalScenario, settings: VerticalSettings, *, seed: int,
                transcript: Transcript) -> tuple[dict[str, dict[str, float]],
                                                 dict[str, list[Release]], dict[str, float]]:
    """The DP pipeline (stages 1-5); returns metrics per setting, releases and mechanisms."""
    s = settings
    lender = scenario.views[LENDER]
    noisy, label_release = lender_release(scenario.train_labels, settings=s, seed=seed,
                                          psi_run_id=scenario.psi_run_id)
    releases = {LENDER: [label_release]}
    received = {p: transcript.send("labels", LENDER, p, "noisy-labels", noisy) for p in PASSIVE}
    train_emb, test_emb, outcomes = {}, {}, {}
    for party in PASSIVE:
        view = scenario.views[party]
        outcome = outcomes[party] = passive_release(party, view.train, received[party],
                                                    settings=s, seed=seed)
        train_emb[party] = transcript.send("embeddings", party, LENDER, "embeddings",
                                           outcome.released)
        releases[party] = outcome.releases
        test_emb[party] = transcript.send("scoring", party, LENDER, "scoring-embeddings",
                                          scoring_embeddings(outcome.bottom, view.test,
                                                             centre=outcome.centre, settings=s))
    tops = fit_private_tops(lender.train, train_emb,
                            {p: o.noise_std(s) for p, o in outcomes.items()},
                            scenario.train_labels, settings=s, seed=seed)
    metrics = setting_metrics(tops, lender.test, dict.fromkeys(tops, test_emb),
                              scenario.test_labels)
    return metrics, releases, plan_mechanisms(label_release.event.noise_multiplier,
                                              {p: o.plan for p, o in outcomes.items()})


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


def run_non_private(scenario: VerticalScenario, settings: VerticalSettings, *, seed: int,
                    transcript: Transcript | None = None) -> dict[str, dict[str, float]]:
    """Stacking with true labels and exact embeddings, then joint fine-tuning (no DP)."""
    s, seeds = settings, non_private_seeds(seed)
    lender, y = scenario.views[LENDER], scenario.train_labels
    tops, test_emb = {}, {}
    for parties in SETTINGS:
        name, passive = setting_name(parties), passives_of(parties)
        bottoms = {p: non_private_bottom(p, parties, scenario.views[p].train, y, settings=s,
                                         seed=seed) for p in passive}
        emb = [exact_embeddings(bottoms[p], scenario.views[p].train) for p in passive]
        tops[name] = fit_top(lender.train, emb, y, settings=s.top, seed=seeds[0])
        if passive:
            tops[name] = joint_finetune(tops[name], bottoms, lender.train,
                                        {p: scenario.views[p].train for p in passive}, y,
                                        settings=s.finetune, seed=seeds[3],
                                        transcript=transcript)
        test_emb[name] = {p: exact_embeddings(bottoms[p], scenario.views[p].test)
                          for p in passive}
    return setting_metrics(tops, lender.test, test_emb, scenario.test_labels)


def run_vertical_in_memory(seed: int = 0, settings: VerticalSettings | None = None, *,
                           scenario: VerticalScenario | None = None,
                           ledger_dir: Path | None = None,
                           keys: Mapping[str, Ed25519PrivateKey] | None = None,
                           non_private: bool = True,
                           transcript_finetune: bool = False) -> VerticalResult:
    """Run credit_data_vertical in one process: DP and non-private, every party combination.

    Reports pooled test AUC/KS per setting ('dp' and 'non_private'), the centralized logistic
    regression reference, each party's ε from its releases, and, with `ledger_dir` and `keys`,
    writes each party's signed ledger `<party>.jsonl` there (run id = the PSI run id).
    """
    settings = settings or VerticalSettings()
    scenario = scenario or load_vertical_scenario(seed, test_fraction=settings.test_fraction)
    transcript = Transcript()
    dp_metrics, releases, mechanisms = run_private(scenario, settings, seed=seed,
                                                   transcript=transcript)
    metrics = {"dp": dp_metrics}
    if non_private:
        metrics["non_private"] = run_non_private(
            scenario, settings, seed=seed, transcript=transcript if transcript_finetune else None)
    budgets = {p: settings.lender_epsilon if p == LENDER else settings.epsilon for p in PARTIES}
    epsilon = {p: releases_epsilon(releases[p], settings.delta) for p in PARTIES}
    result = VerticalResult(seed=seed, metrics=metrics, centralized=centralized_logistic(scenario),
                            epsilon=epsilon, releases=releases, mechanisms=mechanisms,
                            transcript=transcript)
    if ledger_dir is not None:
        if keys is None:
            raise ValueError("writing ledgers needs each party's signing key")
        for party in PARTIES:
            path = Path(ledger_dir) / f"{party}.jsonl"
            write_ledger(path, keys[party], party, scenario.psi_run_id, releases[party],
                         epsilon_budget=budgets[party], delta=settings.delta)
            result.ledgers[party] = path
    log.info("vertical seed %d: %s", seed, {k: v["auc"] for k, v in dp_metrics.items()})
    return result
