"""Partner-side privacy budget: calibrate σ once, compose every round, refuse overspending.

The partner owns its budget (ε, δ). At its first round it calibrates the noise multiplier σ
from the budget and the announced plan (rounds x local epochs at sample rate q), once per run.
Every round after that uses the calibrated mechanism, whatever the coordinator asks, and the
round is refused if its steps would push the composed ε over the budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from common.learning.steps import num_steps, steps_per_epoch
from common.privacy.accounting import (
    ACCOUNTANT_NAME,
    CONVERSION,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    check_budget,
    rdp_epsilon,
    within_budget,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivacyPlan:
    """What a partner calibrated once for the whole run: its budget and one round's mechanism.

    `round_event` is the DP-SGD of one planned round (q, σ, steps per round, clipping norm);
    `planned_rounds` of them spend the budget (ε, δ).
    """

    epsilon_budget: float
    delta: float
    round_event: SubsampledGaussianEvent
    planned_rounds: int


def calibrate_plan(*, epsilon: float, delta: float, num_train_rows: int, batch_size: int,
                   local_epochs: float, planned_rounds: int, max_grad_norm: float) -> PrivacyPlan:
    """Calibrate σ so that `planned_rounds` rounds at q = batch/n spend exactly the budget."""
    check_budget(epsilon, delta)
    if planned_rounds < 1:
        raise ValueError(f"planned rounds must be >= 1, got {planned_rounds}")
    sample_rate = min(1.0, batch_size / num_train_rows)
    per_round = num_steps(local_epochs, steps_per_epoch(num_train_rows, sample_rate=sample_rate))
    sigma = calibrate_noise_multiplier(target_epsilon=epsilon, delta=delta,
                                       sample_rate=sample_rate,
                                       steps=per_round * planned_rounds, conversion=CONVERSION)
    return PrivacyPlan(epsilon_budget=epsilon, delta=delta,
                       round_event=SubsampledGaussianEvent(sample_rate, sigma, per_round,
                                                           max_grad_norm),
                       planned_rounds=planned_rounds)


@dataclass
class PrivacyState:
    """Everything a partner has spent in this run: one event per round trained."""

    events: list[SubsampledGaussianEvent] = field(default_factory=list)

    def epsilon(self, delta: float) -> float:
        """ε spent so far, composed over every round (one RDP accountant over all steps)."""
        return rdp_epsilon(self.events, delta=delta, conversion=CONVERSION) if self.events else 0.0

    @property
    def rounds_trained(self) -> int:
        """Rounds this partner has trained in."""
        return len(self.events)


@dataclass(frozen=True)
class RoundDecision:
    """Whether a round may run, and exactly which mechanism (the plan's, at the round's steps)."""

    allowed: bool
    event: SubsampledGaussianEvent
    epsilon_before: float
    epsilon_after: float
    reason: str = ""


def authorize_round(plan: PrivacyPlan, state: PrivacyState, *, requested_epochs: float,
                    num_train_rows: int) -> RoundDecision:
    """Decide this round: the calibrated q and σ always; refuse if ε would exceed the budget.

    The coordinator influences only the number of local epochs it requests; more steps than
    the plan are allowed only while the composed ε stays within budget.
    """
    planned = plan.round_event
    steps = num_steps(requested_epochs, steps_per_epoch(num_train_rows,
                                                        sample_rate=planned.sample_rate))
    event = replace(planned, steps=steps)
    before = state.epsilon(plan.delta)
    after = rdp_epsilon([*state.events, event], delta=plan.delta, conversion=CONVERSION)
    if not within_budget(after, plan.epsilon_budget):
        reason = (f"privacy budget exhausted: this round ({steps} steps, "
                  f"q={planned.sample_rate:.4g}, sigma={planned.noise_multiplier:.4g}) would "
                  f"raise epsilon from {before:.4f} to {after:.4f}, over the partner's budget "
                  f"{plan.epsilon_budget:g} (delta={plan.delta:g}, {ACCOUNTANT_NAME})")
        log.warning(reason)
        return RoundDecision(False, event, before, before, reason)
    return RoundDecision(True, event, before, after)


def record_round(state: PrivacyState, decision: RoundDecision, steps_taken: int) -> None:
    """Compose the round that just ran into the partner's state."""
    if not decision.allowed:
        raise ValueError("cannot record a refused round")
    if steps_taken > decision.event.steps:
        raise ValueError(f"took {steps_taken} steps, more than the {decision.event.steps} "
                         f"authorized")
    state.events.append(replace(decision.event, steps=steps_taken))
