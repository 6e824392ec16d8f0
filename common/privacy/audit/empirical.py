"""An empirical lower bound on a partner's ε: the one-run canary audit of Steinke, Nasr and
Jagielski ("Privacy auditing with one (1) training run", NeurIPS 2023, arXiv:2305.08846).

The accounted ε (`common.privacy.budget`, the partner's own accountant) is an UPPER bound that
holds if the mechanism is what the ledger says. This audit measures from the outside: m canary
records are each put into ONE partner's training rows independently with probability 1/2, ONE
DP training run goes through exactly the partner's code path (`calibrate_plan`, then per round
`authorize_round` + `common.learning.training.train` with the authorized DP-SGD event +
`record_round`, as `common.partner.train_round` does, minus ledger and odometer), every canary
is scored, the auditor guesses "in" for the k highest and "out" for the k lowest scores and
abstains on the rest. If the run is (ε, δ)-DP, many correct guesses are unlikely (`p_value`),
so each ε whose p-value is at most β is refuted: `epsilon_lower_bound`. A bound above the
accounted ε is a finding: the mechanism that ran leaks more than the ledger accounts for.

Canary design ("Dirac" input canaries). Each canary gets a feature column of its own that the
partner's rows never use (value 0 in every real row): canary i is the row c·e_(d+i) (zeros on
the d real features, `CANARY_SCALE` on its own column), labels alternating 1, 0, 1, ... Its
per-example gradient (σ(u)-y)·(c·e_(d+i), 1) points along its own weight, where no real row and
no other canary pushes (the alternating labels cancel the canaries' pushes on the shared bias).
This is the strongest canary DP-SGD admits in input space: for a linear model it is the
white-box "Dirac gradient canary" of the paper (Section 6) produced through the ordinary data
path. The model is the partner's model family on its d features plus m canary columns; DP-SGD's
guarantee and its accounting do not depend on the model, so what is audited is the mechanism
that ran: Poisson sampling, clipping, noise, expected batch, the noisy count, the accountant.
Measured on bank (m = 1000, σ/10 at claimed ε = 3): c = 1 gave 194/200 correct guesses, c = 3
185/200, c = 10 170/200: a canary that is fitted stops pushing while Adam's per-coordinate
steps keep the noise walking its weight, and a small c needs a larger weight to be fitted.
Canaries inside the partner's own feature space do NOT work for the logistic model: it has 36
weights, so at most ~36 canaries can be told apart, and only the columns the partner never
uses are free of its data's pull (7 of 35 for bank; measured with noise off, the other columns'
own drift swamps a canary's effect). With r guesses all correct the bound cannot exceed
log(p/(1-p)), p = β^(1/r): about 0.4 for 7 canaries, even for a mechanism with no noise at all.
Score: the canary's logit under the trained model minus under the initial model, signed by its
label (how far training moved the model towards it); the initial model depends on the seed
only, never on which canaries were included.

What a lower bound shows, and what it does not: a bound above the accounted ε proves (at
confidence 1-β) that the run was not as private as accounted, whatever the reason (noise,
clipping, sampling or accounting broken). A bound at or below it proves nothing about the
privacy of real rows: it is a lower bound from one attack, typically well below the true ε.

Membership inference (`membership_inference`): on the same trained model, the loss-threshold
attack (Yeom et al. 2018) on the partner's real training rows (members) against its test rows
(non-members): AUC and TPR at 1% and 0.1% FPR, beside the DP ceiling TPR <= e^ε·FPR + δ at
the accounted ε. A figure a risk officer reads, not a bound: no confidence is attached and the
members and non-members are not independently randomised per record. LiRA (shadow models) is
not built.

Signed results (`sign_result`, `verify_result`): the result, the command's parameters, the
fedcredit version and a UTC timestamp, signed with the auditor's Ed25519 key in the ledgers'
format (the canonical JSON of every field but `signature`, as `common.privacy.ledger`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from common.config import RunConfig
from common.data.tables import PartnerData, Split
from common.privacy.accounting import check_budget

CANARY_SCALE = 1.0
"""The value c of a canary on its own column (see the module docstring for the measured choice)."""
DEFAULT_BETA = 0.05
"""1 - confidence of the lower bound (95%)."""
DEFAULT_CANARIES = 1000
K_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
"""The guess counts swept: k = max(1, round(f·m)) "in" and k "out" for each f (deduplicated,
2k <= m), fixed before the run. β is split evenly across them (Bonferroni), so the best bound
over the sweep holds at confidence 1-β."""
EPSILON_GRID_STEP = 0.01
"""The ε hypotheses tested: 0, 0.01, 0.02, ... (see `epsilon_lower_bound`)."""
EPSILON_GRID_MAX = 50.0
MECHANISM_OVERRIDES = ("none", "no-noise", "noise-div-10")
"""TEST AND DEMONSTRATION DEVICE ONLY: `none` runs the partner's mechanism as accounted;
`no-noise` runs DP-SGD with σ = 0 and `noise-div-10` with σ/10, while the plan, the
accountant and the reported accounted ε keep the claimed σ (a partner whose ledger lies)."""


def p_value(*, guesses: int, correct: int, epsilon: float, delta: float, canaries: int) -> float:
    """P[>= `correct` of `guesses` guesses are right] if the run is (ε, δ)-DP: the bound of
    Steinke, Nasr and Jagielski 2023, Theorem 3 (main result for approximate DP):

        P[W >= v] <= f(v) + 2mδ · max_{i in 1..m} (f(v-i) - f(v)) / i,
        f(v) = P[Binomial(r, e^ε/(1+e^ε)) >= v],

    with m canaries each included independently with probability 1/2, r guesses (abstentions
    excluded), W correct guesses. f(v-i) - f(v) = P[v-i <= Binomial < v]; for i >= v the
    numerator is constant, so the maximum is attained at i <= v. Same as the p-value of the
    paper's reference code (`p_value_DP_audit`) with its δ term kept."""
    from scipy.stats import binom

    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= canaries "
                         f"({canaries})")
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(correct - 1, guesses, q))
    if correct == 0 or delta == 0:
        return min(1.0, tail)
    i = np.arange(1, correct + 1)
    window = binom.cdf(correct - 1, guesses, q) - binom.cdf(correct - i - 1, guesses, q)
    return min(1.0, tail + 2 * canaries * delta * float(np.max(window / i)))


def epsilon_lower_bound(*, guesses: int, correct: int, delta: float, canaries: int,
                        beta: float = DEFAULT_BETA) -> float:
    """The largest grid ε (step `EPSILON_GRID_STEP`) such that every grid hypothesis
    "(ε', δ)-DP" with ε' <= ε has `p_value` <= β; 0.0 when even ε = 0 is not refuted.

    Valid at confidence 1-β without assuming `p_value` monotone in ε: a run that is (ε*, δ)-DP
    is (g, δ)-DP at the first grid point g >= ε*, so a bound above ε* means that true
    hypothesis was refuted, which happens with probability at most β."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if p_value(guesses=guesses, correct=correct, epsilon=0.0, delta=delta,
               canaries=canaries) > beta:
        return 0.0
    bound = 0.0
    for step in range(1, int(round(EPSILON_GRID_MAX / EPSILON_GRID_STEP)) + 1):
        epsilon = step * EPSILON_GRID_STEP
        if p_value(guesses=guesses, correct=correct, epsilon=epsilon, delta=delta,
                   canaries=canaries) > beta:
            break
        bound = epsilon
    return round(bound, 10)


def guess_counts(canaries: int) -> tuple[int, ...]:
    """The k swept for m canaries (`K_FRACTIONS`), ascending, each with 2k <= m."""
    ks = {max(1, round(f * canaries)) for f in K_FRACTIONS}
    return tuple(sorted(k for k in ks if 2 * k <= canaries))


def correct_guesses(scores: np.ndarray, included: np.ndarray, k: int) -> int:
    """Correct guesses when the k highest scores are guessed "in" and the k lowest "out" (ties
    broken by canary index, which does not depend on inclusion)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    included = np.asarray(included, dtype=bool)
    return int(included[order[:k]].sum() + (~included[order[len(order) - k:]]).sum())


@dataclass(frozen=True)
class GuessResult:
    """One k of the sweep: 2k guesses, how many were right, and the bound at β/len(sweep)."""

    k: int
    guesses: int
    correct: int
    epsilon_lower_bound: float


MIA_FPRS = (0.01, 0.001)
"""The false-positive rates at which the membership-inference TPR is reported."""
MIA_ROC_FPRS = tuple(float(f) for f in np.round(np.logspace(-3, 0, 16), 6))
"""The FPR grid of the stored ROC curve (log-spaced, 0.001 to 1): enough to draw it."""


def dp_ceiling(fpr: float, *, epsilon: float, delta: float) -> float:
    """The most TPR an (ε, δ)-DP training run admits at `fpr` for any membership test of one
    record: min(1, e^ε·FPR + δ) (Kairouz, Oh and Viswanath 2015)."""
    return min(1.0, math.exp(epsilon) * fpr + delta)


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, fpr: float) -> float:
    """The TPR of the threshold rule "member iff score > t" at the lowest t whose empirical FPR
    on the non-members is at most `fpr` (ties never split: a threshold admits whole tie
    groups). With n non-members, FPRs below 1/n can only be met by t = the highest
    non-member score."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.sort(np.asarray(non_member_scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(fpr * len(others) + 1e-9))
    if allowed >= len(others):
        return 1.0
    threshold = others[allowed]  # the (allowed+1)-th highest: must not be called a member
    return float(np.mean(members > threshold))


def auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """P[member score > non-member score] + P[tie]/2 (Mann-Whitney, the ROC AUC)."""
    from scipy.stats import rankdata

    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    ranks = rankdata(np.concatenate([members, others]))
    n, m = len(members), len(others)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


@dataclass(frozen=True)
class MiaPoint:
    """The attack's TPR at one FPR, beside the DP ceiling there."""

    fpr: float
    tpr: float
    ceiling: float
    above_ceiling: bool


@dataclass(frozen=True)
class MembershipInference:
    """Loss-threshold membership inference on real members vs non-members of one model."""

    attack: str
    members: int
    non_members: int
    auc: float
    epsilon: float
    delta: float
    points: tuple[MiaPoint, ...]
    roc: tuple[tuple[float, float], ...]
    """(FPR, TPR) on `MIA_ROC_FPRS`."""

    def tpr(self, fpr: float) -> float:
        """The TPR at one of `MIA_FPRS`."""
        return next(p.tpr for p in self.points if p.fpr == fpr)


def membership_inference(model, members: Split, non_members: Split, *, epsilon: float,
                         delta: float) -> MembershipInference:
    """The loss-threshold attack (score = -BCE loss of the row under `model`; "member" when the
    loss is low) with the DP ceiling at (ε, δ). The model is evaluated, not trained."""
    def scores(split: Split) -> np.ndarray:
        logits = _logits(model, split.features)
        labels = split.labels.astype(np.float64)
        # -BCE with logits, stably: -(softplus(u) - y·u)
        return -(np.logaddexp(0.0, logits) - labels * logits)

    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("membership inference needs members and non-members")
    inside, outside = scores(members), scores(non_members)
    points = []
    for fpr in MIA_FPRS:
        tpr = tpr_at_fpr(inside, outside, fpr)
        ceiling = dp_ceiling(fpr, epsilon=epsilon, delta=delta)
        points.append(MiaPoint(fpr, tpr, ceiling, tpr > ceiling))
    roc = tuple((f, tpr_at_fpr(inside, outside, f)) for f in MIA_ROC_FPRS)
    return MembershipInference(attack="loss-threshold", members=len(inside),
                               non_members=len(outside), auc=auc(inside, outside),
                               epsilon=epsilon, delta=delta, points=tuple(points), roc=roc)


@dataclass(frozen=True)
class EmpiricalAudit:
    """The outcome of one canary audit of one partner."""

    scenario: str
    partner: str
    epsilon_budget: float
    delta: float
    epsilon_accounted: float
    epsilon_lower_bound: float
    confidence: float
    canaries: int
    canaries_included: int
    k: int
    guesses: int
    correct: int
    finding: bool
    mechanism_override: str
    noise_multiplier_claimed: float
    noise_multiplier_used: float
    sample_rate: float
    steps: int
    seed: int
    sweep: tuple[GuessResult, ...]
    membership: MembershipInference | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(asdict(self), allow_nan=False))


def make_canaries(num_features: int, canaries: int, scale: float | None = None) -> Split:
    """The m Dirac canaries over `num_features` real features plus m canary columns; labels
    alternate 1, 0, 1, ... so that their pushes on the shared bias cancel."""
    features = np.zeros((canaries, num_features + canaries), dtype=np.float32)
    features[np.arange(canaries), num_features + np.arange(canaries)] = (
        CANARY_SCALE if scale is None else scale)
    return Split(features, (np.arange(canaries) % 2 == 0).astype(np.float32))


def _with_canary_columns(split: Split, canaries: int) -> Split:
    zeros = np.zeros((len(split), canaries), dtype=np.float32)
    return Split(np.hstack([split.features.astype(np.float32), zeros]), split.labels)


def _logits(model, features: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(features, dtype=torch.float32)).double().numpy()


def run_empirical_audit(data: PartnerData, run: RunConfig, *, epsilon: float, delta: float,
                        canaries: int = DEFAULT_CANARIES, seed: int = 0,
                        beta: float = DEFAULT_BETA, mechanism_override: str = "none",
                        scenario: str = "", membership: bool = True) -> EmpiricalAudit:
    """Audit `data.partner` with budget (ε, δ) under `run` (rounds, local epochs, batch rule,
    clipping, optimiser, learning-rate schedule): insert the canaries, train once as the
    partner does, score, guess, bound. `seed` draws the inclusion, the initial model and the
    run's sampling and noise. `mechanism_override` is a TEST AND DEMONSTRATION DEVICE
    (`MECHANISM_OVERRIDES`): it changes the σ DP-SGD runs with, never the accounting.
    `membership`: also run `membership_inference` on the trained model, members = the
    partner's training rows, non-members = its test rows (canary columns 0), ceiling at the
    accounted ε."""
    from common.learning.model import build_model
    from common.learning.training import train
    from common.partner import train_settings
    from common.privacy.budget import (
        PrivacyState,
        authorize_round,
        calibrate_plan,
        record_round,
    )
    from common.protocol import LEARNING_RATE

    if mechanism_override not in MECHANISM_OVERRIDES:
        raise ValueError(f"mechanism override must be one of {MECHANISM_OVERRIDES}, got "
                         f"{mechanism_override!r}")
    if canaries < 2:
        raise ValueError(f"need at least 2 canaries, got {canaries}")
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    check_budget(epsilon, delta, source="audit")
    inclusion, count_seed, run_seeds = np.random.SeedSequence([seed, 0xCA7A]).spawn(3)
    included = np.random.default_rng(inclusion).random(canaries) < 0.5
    rng = np.random.default_rng(run_seeds)  # sampling and noise: independent of the inclusion
    num_features = data.train.features.shape[1]
    probe = make_canaries(num_features, canaries)
    real = _with_canary_columns(data.train, canaries)
    rows = Split(np.vstack([real.features, probe.features[included]]),
                 np.concatenate([real.labels, probe.labels[included]]).astype(np.float32))

    model = build_model(num_features + canaries, run.hidden, seed)
    before = _logits(model, probe.features)
    plan = calibrate_plan(epsilon=epsilon, delta=delta, num_train_rows=len(rows),
                          batch_size=run.batch_size, local_epochs=run.local_epochs,
                          planned_rounds=run.num_server_rounds, max_grad_norm=run.clip_norm,
                          seed=int(count_seed.generate_state(1)[0]))
    claimed = plan.round_event.noise_multiplier
    used = {"none": claimed, "no-noise": 0.0, "noise-div-10": claimed / 10.0}[mechanism_override]
    state = PrivacyState(count=plan.count_event)
    steps = 0
    for server_round in range(1, run.num_server_rounds + 1):
        decision = authorize_round(plan, state, requested_epochs=run.local_epochs)
        if not decision.allowed:  # the plan's own rounds always fit; kept as train_round does
            break
        settings = train_settings(run, {LEARNING_RATE: run.learning_rate_at(server_round)})
        outcome = train(model, rows, settings, seed=int(rng.integers(1 << 62)),
                        dp=replace(decision.event, noise_multiplier=used),
                        expected_batch_size=plan.expected_batch_size)
        record_round(state, decision, outcome.steps)  # accounted with the CLAIMED event
        steps += outcome.steps
    sign = 2.0 * probe.labels.astype(np.float64) - 1.0
    scores = sign * (_logits(model, probe.features) - before)
    accounted = state.epsilon(delta)

    ks = guess_counts(canaries)
    sweep = []
    for k in ks:
        correct = correct_guesses(scores, included, k)
        sweep.append(GuessResult(k, 2 * k, correct, epsilon_lower_bound(
            guesses=2 * k, correct=correct, delta=delta, canaries=canaries,
            beta=beta / len(ks))))
    best = max(sweep, key=lambda g: (g.epsilon_lower_bound, -g.k))
    mia = (membership_inference(model, real, _with_canary_columns(data.test, canaries),
                                epsilon=accounted, delta=delta)
           if membership and len(data.test) else None)
    return EmpiricalAudit(
        scenario=scenario, partner=data.partner, epsilon_budget=epsilon, delta=delta,
        epsilon_accounted=accounted, epsilon_lower_bound=best.epsilon_lower_bound,
        confidence=1.0 - beta, canaries=canaries, canaries_included=int(included.sum()),
        k=best.k, guesses=best.guesses, correct=best.correct,
        finding=best.epsilon_lower_bound > accounted, mechanism_override=mechanism_override,
        noise_multiplier_claimed=claimed, noise_multiplier_used=used,
        sample_rate=plan.round_event.sample_rate, steps=steps, seed=seed, sweep=tuple(sweep),
        membership=mia)


def audit_partner(scenario: str, partner: str, *, epsilon: float, delta: float = 1e-5,
                  canaries: int = DEFAULT_CANARIES, seed: int = 0, beta: float = DEFAULT_BETA,
                  mechanism_override: str = "none", run: RunConfig | None = None,
                  membership: bool = True) -> EmpiricalAudit:
    """`run_empirical_audit` on a bundled scenario partner's training rows (natural split,
    `run`'s defaults otherwise: the rounds, epochs and batch rule of a default federation)."""
    from common.data.scenarios import get_scenario, load_scenario

    spec = get_scenario(scenario)
    if partner not in spec.partners:
        raise ValueError(f"unknown partner {partner!r} of scenario {scenario!r}; choose from "
                         f"{spec.partners}")
    run = run or RunConfig(scenario=scenario, seed=seed)
    data = load_scenario(scenario, split=run.split, seed=run.seed, alpha=run.dirichlet_alpha,
                         test_fraction=run.test_fraction, only=partner)[0]
    return run_empirical_audit(data, run, epsilon=epsilon, delta=delta, canaries=canaries,
                               seed=seed, beta=beta, mechanism_override=mechanism_override,
                               scenario=scenario, membership=membership)


def reading(result: EmpiricalAudit) -> str:
    """One sentence on what this result does and does not show."""
    confidence = f"{result.confidence:.0%}"
    if result.finding:
        return (f"FINDING: with {confidence} confidence the run leaked more than epsilon="
                f"{result.epsilon_lower_bound:.2f}, above the accounted "
                f"{result.epsilon_accounted:.2f}: the mechanism that ran is not the one "
                f"accounted for.")
    return (f"No violation found: the mechanism that ran is at least epsilon="
            f"{result.epsilon_lower_bound:.2f} leaky (at {confidence} confidence), consistent "
            f"with the accounted {result.epsilon_accounted:.2f}; this is one attack's lower "
            f"bound, not a proof that the accounted epsilon holds.")
