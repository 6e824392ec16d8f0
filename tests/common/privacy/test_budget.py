"""Partner-side budget: release a noisy count, calibrate once, compose every round, refuse rounds
that would overspend."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.partner import PartnerState
from common.privacy.accounting import (
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    check_budget,
    composed_epsilon,
)
from common.privacy.budget import (
    COUNT_EPSILON_SHARE,
    PrivacyPlan,
    PrivacyState,
    RoundDecision,
    authorize_round,
    calibrate_plan,
    count_release,
    noisy_count,
    record_round,
)
from common.privacy.crypto import generate_signing_key
from common.privacy.ledger import PartnerLedger

ROWS, BATCH, EPOCHS, ROUNDS, DELTA, BUDGET = 200, 20, 1.0, 3, 1e-5, 1.0


@pytest.fixture(scope="module")
def plan() -> PrivacyPlan:
    return calibrate_plan(epsilon=BUDGET, delta=DELTA, num_train_rows=ROWS, batch_size=BATCH,
                          local_epochs=EPOCHS, planned_rounds=ROUNDS, max_grad_norm=1.5, seed=4)


def _spent(plan: PrivacyPlan) -> PrivacyState:
    """The state right after the plan's noisy count was released."""
    return PrivacyState(count=plan.count_event)


def _run_round(plan: PrivacyPlan, state: PrivacyState, epochs: float = EPOCHS) -> RoundDecision:
    decision = authorize_round(plan, state, requested_epochs=epochs)
    if decision.allowed:
        record_round(state, decision, decision.event.steps)
    return decision


# --- budgets and calibration ------------------------------------------------------------------


@pytest.mark.parametrize(("epsilon", "delta", "key"), [
    (0.0, 1e-5, "'epsilon'"), (-1.0, 1e-5, "'epsilon'"), (math.nan, 1e-5, "'epsilon'"),
    (1.0, 0.0, "'delta'"), (1.0, 1.0, "'delta'"), (1.0, 1.5, "'delta'"),
])
def test_check_budget_names_the_key(epsilon: float, delta: float, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        check_budget(epsilon, delta)


def test_check_budget_accepts_a_valid_budget() -> None:
    check_budget(0.5, 1e-6)


def test_plan_calibrates_sigma_for_the_count_and_all_planned_steps(plan: PrivacyPlan) -> None:
    event, count = plan.round_event, plan.count_event
    assert plan.released_rows != ROWS  # the seed draws a visible amount of noise
    assert event.sample_rate == pytest.approx(BATCH / plan.released_rows)
    assert event.steps == round(plan.released_rows / BATCH)  # one epoch at q = batch/ñ
    assert event.clipping_norm == 1.5
    assert plan.planned_rounds == ROUNDS
    assert (plan.epsilon_budget, plan.delta) == (BUDGET, DELTA)
    assert event.noise_multiplier == calibrate_noise_multiplier(
        target_epsilon=BUDGET, delta=DELTA, sample_rate=event.sample_rate,
        steps=event.steps * ROUNDS, prior=[count])
    assert composed_epsilon(plan.planned_events(), delta=DELTA) == pytest.approx(BUDGET, rel=2e-3)
    assert composed_epsilon(plan.planned_events(), delta=DELTA) <= BUDGET


def test_count_is_a_gaussian_release_of_sensitivity_one(plan: PrivacyPlan) -> None:
    assert plan.count_event == SubsampledGaussianEvent(1.0, plan.count_event.noise_multiplier, 1,
                                                       1.0)
    assert plan.count_event.noise_multiplier == calibrate_noise_multiplier(
        target_epsilon=COUNT_EPSILON_SHARE * BUDGET, delta=DELTA, sample_rate=1.0, steps=1)
    assert plan.expected_batch_size == round(plan.round_event.sample_rate * plan.released_rows)


def test_noisy_count_has_the_calibrated_noise() -> None:
    """Unbiased, with standard deviation σ: fails if the noise is off or mis-scaled."""
    sigma = 30.0
    draws = np.array([noisy_count(5000, sigma, seed) for seed in range(4000)])
    assert abs(draws.mean() - 5000) < 4 * sigma / np.sqrt(len(draws))
    assert draws.std() == pytest.approx(sigma, rel=0.05)
    assert noisy_count(3, 1000.0, 1) >= 1


def test_nothing_public_depends_on_the_exact_row_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neighbouring data sets (n, n+1) whose noisy counts coincide get the same public plan:
    q, steps, σ and the normaliser derive from the noisy count, never from n."""
    monkeypatch.setattr("common.privacy.budget.noisy_count", lambda count, sigma, seed: 187)
    plans = [calibrate_plan(epsilon=BUDGET, delta=DELTA, num_train_rows=rows, batch_size=BATCH,
                            local_epochs=EPOCHS, planned_rounds=ROUNDS, max_grad_norm=1.0,
                            seed=0) for rows in (ROWS, ROWS + 1)]
    assert plans[0] == plans[1]
    assert plans[0].released_rows == 187


def test_plan_is_frozen(plan: PrivacyPlan) -> None:
    with pytest.raises(AttributeError):
        plan.planned_rounds = 5  # type: ignore[misc]


def test_plan_caps_sample_rate_and_handles_fractional_epochs() -> None:
    full = calibrate_plan(epsilon=4.0, delta=DELTA, num_train_rows=30, batch_size=64,
                          local_epochs=2.0, planned_rounds=2, max_grad_norm=1.0, seed=0)
    assert full.released_rows < 64
    assert full.round_event.sample_rate == 1.0 and full.round_event.steps == 2
    half = calibrate_plan(epsilon=4.0, delta=DELTA, num_train_rows=200, batch_size=20,
                          local_epochs=0.5, planned_rounds=2, max_grad_norm=1.0, seed=0)
    assert half.round_event.steps == max(1, round(0.5 * round(half.released_rows / 20)))


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"epsilon": 0.0}, "'epsilon'"), ({"delta": 2.0}, "'delta'"),
    ({"planned_rounds": 0}, "planned rounds"), ({"count_epsilon_share": 0.0}, "count epsilon"),
    ({"count_epsilon_share": 1.0}, "count epsilon"),
])
def test_plan_rejects_bad_inputs(kwargs: dict[str, float], pattern: str) -> None:
    args = {"epsilon": 1.0, "delta": DELTA, "num_train_rows": ROWS, "batch_size": BATCH,
            "local_epochs": EPOCHS, "planned_rounds": ROUNDS, "max_grad_norm": 1.0, "seed": 0,
            **kwargs}
    with pytest.raises(ValueError, match=pattern):
        calibrate_plan(**args)  # type: ignore[arg-type]


# --- composition across rounds ----------------------------------------------------------------


def test_empty_state_has_spent_nothing() -> None:
    state = PrivacyState()
    assert state.epsilon(DELTA) == 0.0 and state.rounds_trained == 0


def test_rounds_compose_like_one_accountant_over_all_steps(plan: PrivacyPlan) -> None:
    state = _spent(plan)
    previous = composed_epsilon([plan.count_event], delta=DELTA)
    assert state.epsilon(DELTA) == pytest.approx(previous)
    for r in range(1, ROUNDS + 1):
        decision = _run_round(plan, state)
        assert decision.allowed, decision.reason
        spent = state.epsilon(DELTA)
        event = plan.round_event
        one_run = composed_epsilon([plan.count_event, SubsampledGaussianEvent(
            event.sample_rate, event.noise_multiplier, r * event.steps)], delta=DELTA)
        assert spent == pytest.approx(one_run, rel=1e-9)
        assert spent > previous, "epsilon must strictly increase every round"
        assert decision.epsilon_before == pytest.approx(previous, abs=1e-12)
        assert decision.epsilon_after == pytest.approx(spent, rel=1e-12)
        assert state.rounds_trained == r
        previous = spent


def test_planned_rounds_fit_the_budget_and_one_more_is_refused(
        plan: PrivacyPlan, caplog: pytest.LogCaptureFixture) -> None:
    state = _spent(plan)
    for _ in range(plan.planned_rounds):
        assert _run_round(plan, state).allowed
    spent = state.epsilon(DELTA)
    assert spent <= BUDGET
    assert spent > 0.95 * BUDGET  # the calibration actually uses the budget

    events_before = copy.deepcopy(state.events)
    with caplog.at_level(logging.WARNING, logger="common.privacy.budget"):
        extra = authorize_round(plan, state, requested_epochs=EPOCHS)
    assert not extra.allowed
    assert "budget" in extra.reason
    assert extra.epsilon_after == extra.epsilon_before == pytest.approx(spent)
    assert state.events == events_before and state.epsilon(DELTA) == spent
    assert any("budget" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="refused"):
        record_round(state, extra, extra.event.steps)
    assert state.events == events_before


def test_more_epochs_than_planned_is_refused_not_overspent(plan: PrivacyPlan) -> None:
    state = _spent(plan)
    decision = authorize_round(plan, state, requested_epochs=50.0)
    assert not decision.allowed and "budget" in decision.reason
    assert decision.event.steps == 50 * plan.round_event.steps
    assert state.events == [] and state.epsilon(DELTA) == composed_epsilon([plan.count_event],
                                                                      delta=DELTA)


def test_a_greedy_coordinator_cannot_exceed_the_total_budget(plan: PrivacyPlan) -> None:
    state = _spent(plan)
    # Front-loading steps is allowed while the composed epsilon stays within budget ...
    assert _run_round(plan, state, epochs=2.0).allowed
    assert _run_round(plan, state, epochs=1.0).allowed
    # ... but the total never exceeds what the plan allowed for all rounds.
    assert not _run_round(plan, state, epochs=1.0).allowed
    assert not _run_round(plan, state, epochs=0.1).allowed
    assert sum(e.steps for e in state.events) == ROUNDS * plan.round_event.steps
    assert state.epsilon(DELTA) <= BUDGET


@pytest.mark.parametrize("epochs", [0.1, 1.0, 3.0, 1000.0])
def test_decision_always_carries_the_plans_mechanism(plan: PrivacyPlan, epochs: float) -> None:
    decision = authorize_round(plan, _spent(plan), requested_epochs=epochs)
    assert decision.event == replace(plan.round_event, steps=decision.event.steps)
    assert decision.event.steps == max(1, round(epochs * plan.round_event.steps / EPOCHS))
    assert decision.allowed == (epochs <= ROUNDS * EPOCHS)


def test_recorded_event_uses_plan_mechanism_and_steps_taken(plan: PrivacyPlan) -> None:
    state = _spent(plan)
    decision = authorize_round(plan, state, requested_epochs=1.0)
    record_round(state, decision, 7)
    assert state.events == [replace(plan.round_event, steps=7)]
    with pytest.raises(ValueError, match="more than the"):
        record_round(state, decision, decision.event.steps + 1)


# --- persistence: the partner's Context state and its ledger ----------------------------------


def test_partner_state_round_trips_through_its_context_dict(plan: PrivacyPlan) -> None:
    state = PartnerState(plan=plan, privacy=_spent(plan), ledger_entries=1,
                         ledger_last_hash="f" * 64)
    _run_round(plan, state.privacy)
    raw = state.to_dict()
    event = plan.round_event
    assert raw == {
        "events-sample-rate": [event.sample_rate],
        "events-noise-multiplier": [event.noise_multiplier],
        "events-steps": [event.steps], "ledger-entries": 1, "ledger-last-hash": "f" * 64,
        "plan-epsilon-budget": BUDGET, "plan-delta": DELTA, "plan-sample-rate": event.sample_rate,
        "plan-noise-multiplier": event.noise_multiplier, "plan-max-grad-norm": 1.5,
        "plan-steps-per-round": event.steps, "plan-planned-rounds": ROUNDS,
        "plan-count-noise-multiplier": plan.count_event.noise_multiplier,
        "plan-released-rows": plan.released_rows}
    assert PartnerState.from_dict(raw) == state
    assert PartnerState.from_dict({}) == PartnerState()


def test_ledger_records_the_plans_mechanism_and_restores_plan_and_events(
        tmp_path: Path, plan: PrivacyPlan) -> None:
    ledger = PartnerLedger(tmp_path / "bank.jsonl", generate_signing_key(), "bank", "run")
    count = ledger.append_count(server_round=1, plan=plan, epsilon_cumulative=0.05,
                                model_received_sha256="a" * 64)
    assert (count["event"], count["update_sent_sha256"]) == ("count", None)
    assert count["mechanism"] == {
        "name": "subsampled_gaussian", "sampling": "poisson", "sample_rate": 1.0,
        "noise_multiplier": plan.count_event.noise_multiplier, "steps": 1, "clipping_norm": 1.0}
    assert ledger.plan() == plan and ledger.events() == []
    entry = ledger.append(server_round=1, plan=plan, steps=7, epsilon_cumulative=0.25,
                          model_received_sha256="a" * 64, update_sent_sha256="b" * 64)
    assert entry["mechanism"] == {
        "name": "subsampled_gaussian", "sampling": "poisson",
        "sample_rate": plan.round_event.sample_rate,
        "noise_multiplier": plan.round_event.noise_multiplier, "steps": 7, "clipping_norm": 1.5}
    assert entry["calibration"] == {
        "planned_rounds": ROUNDS, "steps_per_round": plan.round_event.steps,
        "sample_rate": plan.round_event.sample_rate,
        "noise_multiplier": plan.round_event.noise_multiplier, "clipping_norm": 1.5,
        "released_rows": plan.released_rows,
        "count_noise_multiplier": plan.count_event.noise_multiplier}
    assert (entry["epsilon_budget"], entry["delta"], entry["conversion"]) == (BUDGET, DELTA,
                                                                              "balle2020")
    assert ledger.plan() == plan
    assert ledger.events() == [replace(plan.round_event, steps=7)]
    assert ledger.count_event() == plan.count_event


def test_a_budget_too_small_to_calibrate_says_why() -> None:
    """Issue 21 item 7: a tiny ε fails on its noisy count's share, and says so (not 'noise
    multiplier would exceed 100000')."""
    with pytest.raises(ValueError, match=r"epsilon 0.05 is too small: the noisy count's share"):
        count_release(epsilon=0.05, delta=1e-5)


def test_a_delta_of_one_over_n_or_more_refuses_every_round() -> None:
    """Judged on ñ, which is released (and logged) before the first round: each round is then
    refused, as an over-budget round is, so the count never goes out unlogged."""
    plan = calibrate_plan(epsilon=3.0, delta=0.01, num_train_rows=200, batch_size=0,
                          local_epochs=1.0, planned_rounds=2, max_grad_norm=1.0, seed=0)
    decision = authorize_round(plan, PrivacyState(count=plan.count_event), requested_epochs=1.0)
    assert not decision.allowed and "not below 1/n" in decision.reason
    assert decision.epsilon_after == decision.epsilon_before
