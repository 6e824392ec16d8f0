"""A partner's side of a federated round, free of Flower: load data, enforce budget, train, reply.

`clients/app.py` only converts Flower records to and from the plain values used here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import PartnerConfig, RunConfig
from common.data.layout import refusal as layout_refusal
from common.data.scenarios import get_scenario, load_scenario_partner
from common.data.schema import load_schema
from common.data.spec import load_run_partners, load_spec
from common.data.tables import PartnerData, bundled_path, load_partner_csv, record_digests
from common.errors import CryptoError, DatasetNotRecognised, LedgerError, LifetimeBudgetExceeded
from common.learning.model import build_model, get_weights, set_weights
from common.learning.training import TrainSettings, train
from common.privacy.accounting import SubsampledGaussianEvent, within_budget
from common.privacy.budget import (
    COUNT_SENSITIVITY,
    PrivacyPlan,
    PrivacyState,
    authorize_round,
    calibrate_plan,
    count_release,
    record_round,
)
from common.privacy.crypto import hash_weights, load_private_key
from common.privacy.ledger import COUNT_EVENT, PartnerLedger, entry_hash, ledger_event
from common.privacy.odometer import RELEASE_COUNT, RELEASE_DP_SGD, PrivacyOdometer
from common.privacy.randomness import noise_seed, split_key
from common.protocol import (
    DATASET_NOT_RECOGNISED,
    DELTA,
    EPSILON_BUDGET,
    EPSILON_SPENT,
    IGNORED_MECHANISM_KEYS,
    LEARNING_RATE,
    LEDGER_UNTRUSTED,
    LIFETIME_BUDGET_EXHAUSTED,
    LOCAL_EPOCHS,
    NOISE_MULTIPLIER,
    NUM_EXAMPLES,
    PLAN_UNREACHABLE,
    REFUSED,
    ROUNDS_TRAINED,
    SAMPLE_RATE,
    SIGNING_KEY_UNUSABLE,
    STEPS,
    TRAIN_LOSS,
)
from common.replay import keep as keep_replay_inputs
from common.replay import replay_opening

log = logging.getLogger(__name__)


def load_data(partner: PartnerConfig, run: RunConfig) -> PartnerData:
    """The partner's private train/test splits: its own CSV, or its simulated share."""
    if partner.data_path:
        key = split_key(partner=partner.partner, signing_key=partner.signing_key, seed=run.seed,
                        deployed=partner.deployed)
        # A deployed partner's own test fraction: the coordinator must not choose which share
        # of the records DP-SGD protects.
        fraction = partner.test_fraction if partner.test_fraction is not None else run.test_fraction
        return load_partner_csv(partner.partner, partner.data_path, partner.schema_path,
                                test_fraction=fraction, split_key=key)
    if run.data_spec:
        return load_run_partners(run, only=partner.partner)[0]
    return load_scenario_partner(run.scenario, partner.partition_id, split=run.split,
                                 seed=run.seed, alpha=run.dirichlet_alpha,
                                 test_fraction=run.test_fraction, num_partners=run.num_partners)


def check_layout(partner: PartnerConfig, run: RunConfig,
                 requested: Mapping[str, Any]) -> tuple[str, str]:
    """(the SHA-256 of this partner's encoded feature layout, why it refuses the instruction
    whose config is `requested`, or ''). It takes part only when the instruction announces a
    layout identical to its own schema's (a deployed partner also refuses one that announces
    none). Reads its schema only: nothing is loaded, released or spent before this check."""
    path = (partner.schema_path if partner.data_path
            else load_spec(run.data_spec).schema if run.data_spec
            else bundled_path(get_scenario(run.scenario).dataset)[1])
    own = load_schema(path).layout()
    reason = layout_refusal(own, dict(requested), required=partner.deployed)
    if reason:
        log.error("partner %s refuses: %s", partner.partner, reason)
    return own.sha256, reason


def limits_refusal(partner: PartnerConfig, run: RunConfig, requested: Mapping[str, Any],
                   weights: Mapping[str, np.ndarray], server_round: int) -> str:
    """Why the partner refuses this train instruction by its own bounds (`common.limits`), or
    ''. Looks only at what the coordinator sent: nothing is loaded or spent before it."""
    reason = partner.limits.refusal(
        learning_rate=train_settings(run, dict(requested)).learning_rate,
        local_epochs=float(requested.get(LOCAL_EPOCHS, run.local_epochs)),
        planned_rounds=run.num_server_rounds, server_round=server_round,
        model_parameters=sum(int(np.size(w)) for w in weights.values()))
    if reason:
        log.error("partner %s refuses: %s", partner.partner, reason)
    return reason


def train_settings(run: RunConfig, requested: dict[str, float | int | str | bool]) -> TrainSettings:
    """Local optimiser settings: run config, with the coordinator's per-round learning rate."""
    return TrainSettings(epochs=float(requested.get(LOCAL_EPOCHS, run.local_epochs)),
                         batch_size=run.nonprivate_batch_size,
                         learning_rate=float(requested.get(LEARNING_RATE, run.learning_rate)),
                         optimizer=run.optimizer)


@dataclass
class PartnerState:
    """What a partner keeps between rounds (persisted by the ClientApp in its Context)."""

    plan: PrivacyPlan | None = None
    privacy: PrivacyState = field(default_factory=PrivacyState)
    ledger_entries: int = 0
    ledger_last_hash: str = ""

    def to_dict(self) -> dict[str, list[float] | list[int] | float | int | str]:
        """Flat dict of numbers and number lists (fits a Flower ConfigRecord)."""
        out: dict[str, list[float] | list[int] | float | int | str] = {
            "events-sample-rate": [e.sample_rate for e in self.privacy.events],
            "events-noise-multiplier": [e.noise_multiplier for e in self.privacy.events],
            "events-steps": [e.steps for e in self.privacy.events],
            "ledger-entries": self.ledger_entries, "ledger-last-hash": self.ledger_last_hash,
        }
        if self.plan is not None:
            planned = self.plan.round_event
            out.update({
                "plan-epsilon-budget": self.plan.epsilon_budget, "plan-delta": self.plan.delta,
                "plan-sample-rate": planned.sample_rate,
                "plan-noise-multiplier": planned.noise_multiplier,
                "plan-max-grad-norm": planned.clipping_norm,
                "plan-steps-per-round": planned.steps,
                "plan-planned-rounds": self.plan.planned_rounds,
                "plan-count-noise-multiplier": self.plan.count_event.noise_multiplier,
                "plan-released-rows": self.plan.released_rows})
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> PartnerState:
        """Inverse of `to_dict`; an empty dict gives a fresh state. Every round ran the plan's
        mechanism, so the spent events take the plan's clipping norm; a plan exists only once
        its noisy count was released, so the count is spent with it."""
        plan = None
        if "plan-noise-multiplier" in raw:
            plan = PrivacyPlan(
                epsilon_budget=float(raw["plan-epsilon-budget"]), delta=float(raw["plan-delta"]),
                round_event=SubsampledGaussianEvent(
                    float(raw["plan-sample-rate"]), float(raw["plan-noise-multiplier"]),
                    int(raw["plan-steps-per-round"]), float(raw["plan-max-grad-norm"])),
                planned_rounds=int(raw["plan-planned-rounds"]),
                count_event=SubsampledGaussianEvent(
                    1.0, float(raw["plan-count-noise-multiplier"]), 1, COUNT_SENSITIVITY),
                released_rows=int(raw["plan-released-rows"]))
        clipping_norm = 1.0 if plan is None else plan.round_event.clipping_norm
        events = [SubsampledGaussianEvent(float(q), float(s), int(n), clipping_norm)
                  for q, s, n in zip(raw.get("events-sample-rate", []),
                                     raw.get("events-noise-multiplier", []),
                                     raw.get("events-steps", []), strict=True)]
        return cls(plan=plan, privacy=PrivacyState(
                       events, count=plan.count_event if plan is not None else None),
                   ledger_entries=int(raw.get("ledger-entries", 0)),
                   ledger_last_hash=str(raw.get("ledger-last-hash", "")))


@dataclass(frozen=True)
class TrainReply:
    """A partner's answer to a train request: new weights (None if refused) and metrics."""

    weights: dict[str, np.ndarray] | None
    metrics: dict[str, float]
    refusal: str = ""
    ledger_entry_sha256: str = ""


def open_privacy_logs(partner: PartnerConfig, run_id: str, records: np.ndarray | None = None
                      ) -> tuple[PartnerLedger | None, PrivacyOdometer | None]:
    """The partner's verified ledger of this run and lifetime odometer of its data set (None
    for what it does not keep), both under its one signing key, read once; raises
    LedgerError/CryptoError when either fails verification or the key is unusable
    (DatasetNotRecognised: its data is not its odometer's data set). `records`: the data's
    `record_digest`s (`PartnerData.records`); None reads the data file again for them."""
    if not partner.ledger_path and not partner.odometer_path:
        return None, None
    key = load_private_key(Path(partner.signing_key))
    ledger = (PartnerLedger(Path(partner.ledger_path), key, partner.partner, run_id)
              if partner.ledger_path else None)
    if not partner.odometer_path:
        return ledger, None
    assert partner.lifetime_epsilon is not None and partner.delta is not None
    if records is None:
        records = record_digests(partner.data_path, split_key(
            partner=partner.partner, signing_key=partner.signing_key, deployed=partner.deployed))
    return ledger, PrivacyOdometer.of_records(
        partner.odometer_path, key, partner.partner, records, partner.lifetime_epsilon,
        partner.delta, files=(partner.data_path, partner.schema_path))


def update_problem(weights: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                   value_bound: float | None = None) -> str:
    """Why a partner must not send this update ('' if it may): non-finite values, keys or shapes
    that differ from the global model, or (with `value_bound`, under secure aggregation) values
    outside +-value_bound, which the quantizer would clip silently. Names no values."""
    if not all(np.all(np.isfinite(w)) for w in weights.values()):
        return "local training diverged (non-finite weights)"
    if set(weights) != set(reference) or any(
            np.shape(weights[k]) != np.shape(reference[k]) for k in reference):
        return "update keys or shapes differ from the global model"
    if value_bound is not None:
        outside = sorted(k for k, w in weights.items() if np.any(np.abs(w) > value_bound))
        if outside:
            return (f"update has values outside +-{value_bound:g} in {outside} "
                    f"(run config key 'secagg-clipping-range'): secure aggregation would clip "
                    f"them; not sent")
    return ""


def train_round(partner: PartnerConfig, run: RunConfig, state: PartnerState,
                global_weights: dict[str, np.ndarray], requested: dict, server_round: int,
                data: PartnerData, run_id: str = "", *,
                value_bound: float | None = None, max_weight: float | None = None) -> TrainReply:
    """Train one round on the partner's data under its budget; mutates `state` on success.

    A private partner releases its training-set size only as the plan's noisy count (the FedAvg
    weight `num-examples`, and q); the exact size never leaves it. With a ledger configured,
    spent privacy is restored from the verified ledger (not from `state`), and the count (once)
    and the round, trained or refused, are appended to it before replying.
    `value_bound` (secure aggregation): an update with a value outside +-value_bound is withheld,
    like one that diverged. `max_weight` (secure aggregation): a round whose weight would exceed
    it is refused before training.
    """
    for key in IGNORED_MECHANISM_KEYS:
        if key in requested:
            log.warning("partner %s ignores coordinator key %r: the privacy mechanism is the "
                        "partner's own calibrated plan", partner.partner, key)
    settings = train_settings(run, requested)
    model = build_model(data.train.features.shape[1], run.hidden, run.seed)
    set_weights(model, global_weights)
    seed = round_seed(run.seed, partner, server_round)
    metrics: dict[str, float] = {}
    if not partner.private:
        metrics[NUM_EXAMPLES] = float(len(data.train))  # no DP claimed: the exact size
        if max_weight is not None and len(data.train) > max_weight:
            return TrainReply(None, {**metrics, REFUSED: 1.0}, _weight_refusal(max_weight))
        outcome = train(model, data.train, settings, seed=seed)
        metrics.update({STEPS: float(outcome.steps), REFUSED: 0.0,
                        **_loss_metric(partner, outcome.mean_loss)})
        weights = get_weights(model)
        problem = "" if value_bound is None else update_problem(weights, global_weights,
                                                                value_bound)
        if problem:
            return TrainReply(None, {**metrics, REFUSED: 1.0}, problem)
        return TrainReply(weights, metrics)

    assert partner.epsilon is not None and partner.delta is not None
    try:
        ledger, odometer = open_privacy_logs(partner, run_id, data.records)
    except (LedgerError, CryptoError) as exc:
        # The details (file paths, OS errors, findings) stay in the partner's own log.
        log.error("partner %s refuses to train: %s", partner.partner, exc)
        reason = (DATASET_NOT_RECOGNISED if isinstance(exc, DatasetNotRecognised)
                  else LEDGER_UNTRUSTED if isinstance(exc, LedgerError) else SIGNING_KEY_UNUSABLE)
        return TrainReply(None, {**metrics, REFUSED: 1.0}, reason)
    if ledger is not None:
        reason = _ledger_mismatch(ledger, state, partner, server_round)
        if reason:
            log.error("partner %s refuses to train (ledger %s): %s", partner.partner,
                      ledger.path, reason)
            return TrainReply(None, {**metrics, REFUSED: 1.0}, reason)
        state.plan = ledger.plan()
        state.privacy = PrivacyState(ledger.events(), count=ledger.count_event())
        if odometer is not None:  # reserved, then lost to a crash before the ledger entry
            state.privacy.events += _unlogged_releases(odometer, ledger, run_id)
    received = hash_weights(global_weights)
    if state.plan is None:
        reason = _begin_run(partner, run, state, data, ledger, odometer, run_id, server_round,
                            received)
        if reason:
            return TrainReply(None, {REFUSED: 1.0}, reason)
    plan = state.plan
    assert plan is not None
    metrics[NUM_EXAMPLES] = float(plan.released_rows)
    if max_weight is not None and plan.released_rows > max_weight:
        reason = _weight_refusal(max_weight)
        metrics.update({**_privacy_metrics(plan, state.privacy), REFUSED: 1.0})
        entry_hash_ = _log(ledger, server_round, plan, 0, metrics[EPSILON_SPENT], received,
                           None, reason)
        _remember_ledger(state, ledger)
        return TrainReply(None, metrics, reason, entry_hash_)
    decision = authorize_round(plan, state.privacy, requested_epochs=settings.epochs)
    if not decision.allowed:
        metrics.update({**_privacy_metrics(plan, state.privacy), REFUSED: 1.0})
        entry_hash_ = _log(ledger, server_round, plan, 0, decision.epsilon_before, received,
                           None, decision.reason)
        _remember_ledger(state, ledger)
        return TrainReply(None, metrics, decision.reason, entry_hash_)
    if odometer is not None and not _reserve(odometer, partner, run_id, server_round,
                                             RELEASE_DP_SGD, decision.event):
        metrics.update({**_privacy_metrics(plan, state.privacy), REFUSED: 1.0})
        entry_hash_ = _log(ledger, server_round, plan, 0, decision.epsilon_before, received,
                           None, LIFETIME_BUDGET_EXHAUSTED)
        _remember_ledger(state, ledger)
        return TrainReply(None, metrics, LIFETIME_BUDGET_EXHAUSTED, entry_hash_)
    opening = (None if ledger is None else
               replay_opening(partner, run, ledger.path, run_id, server_round, seed, settings,
                              data, received))
    outcome = train(model, data.train, settings, seed=seed, dp=decision.event,
                    expected_batch_size=plan.expected_batch_size)
    record_round(state.privacy, decision, outcome.steps)
    weights = get_weights(model)
    metrics.update(_privacy_metrics(plan, state.privacy))
    reason = update_problem(weights, global_weights, value_bound)
    if reason:
        # The noisy steps happened, so their privacy is spent and logged; no update is sent.
        entry_hash_ = _log(ledger, server_round, plan, outcome.steps,
                           metrics[EPSILON_SPENT], received, None, reason)
        _remember_ledger(state, ledger)
        return TrainReply(None, {**metrics, REFUSED: 1.0}, reason, entry_hash_)
    if opening is not None:  # durable before the entry that commits to it is signed
        keep_replay_inputs(ledger.path, opening, global_weights, received)
    entry_hash_ = _log(ledger, server_round, plan, outcome.steps, metrics[EPSILON_SPENT],
                       received, hash_weights(weights),
                       replay_commitment=opening.commitment if opening is not None else "")
    _remember_ledger(state, ledger)
    metrics.update({STEPS: float(outcome.steps), REFUSED: 0.0,
                    **_loss_metric(partner, outcome.mean_loss)})
    return TrainReply(weights, metrics, "", entry_hash_)


def _loss_metric(partner: PartnerConfig, mean_loss: float) -> dict[str, float]:
    """The round's training loss, only for a partner that releases metrics (`release-metrics`):
    a mean over its own records without noise, which a coordinator-chosen model can turn into a
    membership test (issue 21)."""
    return {TRAIN_LOSS: mean_loss} if partner.release_metrics else {}


def _begin_run(partner: PartnerConfig, run: RunConfig, state: PartnerState, data: PartnerData,
               ledger: PartnerLedger | None, odometer: PrivacyOdometer | None, run_id: str,
               server_round: int, received: str) -> str:
    """A run's first round: reserve and release the noisy count, calibrate the plan into
    `state`. '' when the partner may go on, else the refusal it replies (nothing released).

    With an odometer, the run starts only if what the data set has spent plus this run's whole
    budget fits the lifetime budget (ε added: a data-independent, conservative test), and never
    twice in one run (a run that already reserved its count lost its ledger). The count's
    mechanism depends on the budget only, so it is reserved before the data is looked at.
    """
    assert partner.epsilon is not None and partner.delta is not None
    try:
        count = count_release(epsilon=partner.epsilon, delta=partner.delta,
                              count_epsilon_share=partner.count_epsilon_share)
    except ValueError as exc:  # a budget too small to certify: public values only
        log.error("partner %s refuses to train: %s", partner.partner, exc)
        return f"the partner cannot calibrate a plan for this run: {exc}"
    if odometer is not None:
        if any(e["run_id"] == run_id and e["release"] == RELEASE_COUNT
               for e in odometer.entries):
            log.error("partner %s refuses to train: its odometer shows run %s already released "
                      "a count, but the ledger %s holds none (lost or replaced)",
                      partner.partner, run_id, partner.ledger_path)
            return LEDGER_UNTRUSTED
        spent, lifetime = odometer.spent(), odometer.lifetime_epsilon
        if not within_budget(spent + partner.epsilon, lifetime):
            log.error("partner %s refuses to train: lifetime epsilon spent %.4f plus this run's "
                      "budget %g exceeds the lifetime budget %g", partner.partner, spent,
                      partner.epsilon, lifetime)
            return LIFETIME_BUDGET_EXHAUSTED
        if not _reserve(odometer, partner, run_id, server_round, RELEASE_COUNT, count):
            return LIFETIME_BUDGET_EXHAUSTED
    try:
        plan = calibrate_plan(
            epsilon=partner.epsilon, delta=partner.delta, num_train_rows=len(data.train),
            batch_size=run.batch_size, local_epochs=run.local_epochs,
            planned_rounds=run.num_server_rounds, max_grad_norm=run.clip_norm,
            seed=round_seed(run.seed, partner, 0),
            count_epsilon_share=partner.count_epsilon_share)
    except ValueError as exc:  # σ out of reach for the plan; its message names q, from ñ
        log.error("partner %s refuses to train: %s", partner.partner, exc)
        return PLAN_UNREACHABLE
    state.plan, state.privacy = plan, PrivacyState(count=plan.count_event)
    if ledger is not None:
        ledger.append_count(server_round=server_round, plan=plan,
                            epsilon_cumulative=state.privacy.epsilon(partner.delta),
                            model_received_sha256=received)
        _remember_ledger(state, ledger)
    planned = plan.round_event
    log.info("partner %s released its noisy count %d, calibrated sigma=%.4f for q=%.4f, "
             "%d steps/round, %d rounds, budget eps=%g delta=%g", partner.partner,
             plan.released_rows, planned.noise_multiplier, planned.sample_rate, planned.steps,
             plan.planned_rounds, partner.epsilon, partner.delta)
    return ""


def _unlogged_releases(odometer: PrivacyOdometer, ledger: PartnerLedger,
                       run_id: str) -> list[SubsampledGaussianEvent]:
    """Rounds of this run reserved in the odometer but absent from the ledger (a crash between
    the two, or a ledger cut short): counted as spent, at their reserved steps."""
    logged = {e["round"] for e in ledger.entries
              if e["event"] != COUNT_EVENT and int(e["mechanism"]["steps"]) > 0}
    return [ledger_event(e) for e in odometer.entries
            if e["run_id"] == run_id and e["release"] == RELEASE_DP_SGD
            and e["round"] not in logged]


def _reserve(odometer: PrivacyOdometer, partner: PartnerConfig, run_id: str, server_round: int,
             release: str, event: SubsampledGaussianEvent) -> bool:
    """Record `release` in the lifetime odometer before it happens; False (logged) if it would
    take the lifetime ε over the lifetime budget."""
    try:
        odometer.record(run_id=run_id, server_round=server_round, release=release, event=event,
                        ledger_path=partner.ledger_path)
    except LifetimeBudgetExceeded as exc:
        log.error("partner %s refuses to train: %s", partner.partner, exc)
        return False
    return True


def signing_key_refusal(partner: PartnerConfig, error: CryptoError) -> TrainReply:
    """The refusal of a partner whose signing key is unusable (it keys the ledger and the
    train/test split); the details (paths, OS errors) stay in the partner's own log."""
    log.error("partner %s refuses to train: %s", partner.partner, error)
    return TrainReply(None, {REFUSED: 1.0}, SIGNING_KEY_UNUSABLE)


def _weight_refusal(max_weight: float) -> str:
    return (f"the training-set size exceeds secagg-max-weight={max_weight:g}: the weight would "
            f"overflow the secure sum's quantized weighting (run config key "
            f"'secagg-max-weight')")


def _ledger_mismatch(ledger: PartnerLedger, state: PartnerState, partner: PartnerConfig,
                     server_round: int) -> str:
    """Why the verified ledger cannot be this partner's privacy state now ('' if it can)."""
    if len(ledger.entries) < state.ledger_entries or (
            state.ledger_entries and entry_hash(ledger.entries[state.ledger_entries - 1])
            != state.ledger_last_hash):
        return (f"the partner's ledger holds {len(ledger.entries)} entries but this node wrote "
                f"{state.ledger_entries} in this run: it was truncated or replaced; refusing "
                f"rather than under-count privacy spent")
    if ledger.entries and ledger.count_event() is None:
        return ("the partner's ledger holds no count entry: a ledger of this run opens with the "
                "release of its noisy count; refusing rather than under-count privacy spent")
    plan = ledger.plan()
    if plan is not None and (plan.epsilon_budget, plan.delta) != (partner.epsilon,
                                                                   partner.delta):
        return (f"node config budget (epsilon={partner.epsilon}, delta={partner.delta}) differs "
                f"from the budget in the ledger (epsilon={plan.epsilon_budget}, "
                f"delta={plan.delta}); a budget cannot change within a run")
    if ledger.entries and server_round <= ledger.entries[-1]["round"]:
        return (f"round {server_round} is not after round {ledger.entries[-1]['round']}, the "
                f"last one in the partner's ledger")
    return ""


def _log(ledger: PartnerLedger | None, server_round: int, plan: PrivacyPlan, steps: int,
         epsilon: float, received: str, sent: str | None, refusal: str = "", *,
         replay_commitment: str = "") -> str:
    """Append the round to the ledger (if any); the new entry's hash, or ''."""
    if ledger is None:
        return ""
    entry = ledger.append(server_round=server_round, plan=plan, steps=steps,
                          epsilon_cumulative=epsilon, model_received_sha256=received,
                          update_sent_sha256=sent, refusal_reason=refusal,
                          replay_commitment=replay_commitment)
    return entry_hash(entry)


def _remember_ledger(state: PartnerState, ledger: PartnerLedger | None) -> None:
    if ledger is not None and ledger.entries:
        state.ledger_entries = len(ledger.entries)
        state.ledger_last_hash = ledger.last_hash


def _privacy_metrics(plan: PrivacyPlan, privacy: PrivacyState) -> dict[str, float]:
    return {EPSILON_SPENT: privacy.epsilon(plan.delta), EPSILON_BUDGET: plan.epsilon_budget,
            DELTA: plan.delta, NOISE_MULTIPLIER: plan.round_event.noise_multiplier,
            SAMPLE_RATE: plan.round_event.sample_rate,
            ROUNDS_TRAINED: float(privacy.rounds_trained)}


def round_seed(seed: int, partner: PartnerConfig, server_round: int) -> int:
    """The seed of this round's Poisson sampling and DP noise (`noise_seed`'s policy); a
    simulated partner's is derived from the run seed, its name and the round."""
    digest = hashlib.sha256(f"{seed}|{partner.partner}|{server_round}".encode()).digest()
    return noise_seed(deployed=partner.deployed, simulated=int.from_bytes(digest[:8], "big") >> 1)
