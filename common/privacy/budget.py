"""Partner-side privacy budget: release a noisy count, calibrate σ once, compose every round,
refuse overspending.

The partner owns its budget (ε, δ). At its first round it releases its training-set size n only
through a Gaussian count (sensitivity 1 under adding or removing one record; noise calibrated to
`count_epsilon_share` of the budget on its own): every public quantity that depends on n (the
sample rate q = batch/ñ, the DP-SGD normaliser q·ñ, the FedAvg weight, the steps per epoch)
derives from the noisy count ñ, never from n. It then calibrates the noise multiplier σ of DP-SGD
so that the count and the announced plan (rounds x local epochs at rate q) compose to exactly the
budget, once per run. Every round after that uses the calibrated mechanism, whatever the
coordinator asks, and the round is refused if its steps would push the composed ε over the budget.
Calibration and enforcement both count with `common.privacy.accounting.ACCOUNTANT` (min of
Opacus' RDP and PRV upper bound).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from common.learning.steps import num_steps, steps_per_epoch
from common.privacy.accounting import (
    ACCOUNTANT,
    ACCOUNTANT_NAME,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    check_budget,
    composed_epsilon,
    within_budget,
)

log = logging.getLogger(__name__)

COUNT_EPSILON_SHARE = 0.1
"""Default share of the budget the noisy count would spend on its own (node config
`count-epsilon-share`); composed with DP-SGD it costs far less (σ rises by about 0.5-1%)."""
COUNT_SENSITIVITY = 1.0
"""Adding or removing one record changes the training-set size by one."""
PLAN_SAMPLE_RATE = 0.1
"""The plan rule (run config `batch-size = 0`, the default): DP-SGD samples each row with
probability q = 0.1 of the partner's noisy count ñ, so its expected batch grows with the partner
(a 300-row partner and a 30,000-row one get batches of 30 and 3,000). Chosen on credit_data
seeds 5-9, a small-partner split of it and lending_club seeds 5-9 (docs/utility.md)."""
MIN_EXPECTED_BATCH = 8
MAX_EXPECTED_BATCH = 4096
"""The plan rule's expected batch stays within [8, 4096] rows (q = 1 below 8 rows)."""


def plan_sample_rate(released_rows: int, batch_size: int = 0) -> float:
    """DP-SGD's sample rate q for a partner whose noisy count is `released_rows`: batch/ñ for
    a set `batch_size`, else the plan rule (`PLAN_SAMPLE_RATE`, expected batch within
    [`MIN_EXPECTED_BATCH`, `MAX_EXPECTED_BATCH`]). Depends on public values only."""
    if batch_size < 0:
        raise ValueError(f"batch size must be >= 0 (0: the plan rule), got {batch_size}")
    if batch_size == 0:
        expected = min(max(PLAN_SAMPLE_RATE * released_rows, MIN_EXPECTED_BATCH),
                       MAX_EXPECTED_BATCH)
        return min(1.0, expected / released_rows)
    return min(1.0, batch_size / released_rows)


@dataclass(frozen=True)
class PrivacyPlan:
    """What a partner calibrated once for the whole run: its budget, its noisy count, and one
    round's mechanism.

    `count_event` is the Gaussian release of the training-set size (q = 1, one step,
    sensitivity 1) and `released_rows` its outcome ñ; `round_event` is the DP-SGD of one planned
    round (q = batch/ñ, σ, steps per round, clipping norm). The count and `planned_rounds` rounds
    compose to the budget (ε, δ).
    """

    epsilon_budget: float
    delta: float
    round_event: SubsampledGaussianEvent
    planned_rounds: int
    count_event: SubsampledGaussianEvent
    released_rows: int

    @property
    def expected_batch_size(self) -> int:
        """DP-SGD's normaliser q·ñ: public, because it derives from the noisy count only."""
        return max(1, round(self.round_event.sample_rate * self.released_rows))

    def planned_events(self) -> list[SubsampledGaussianEvent]:
        """Every release the plan makes if all its rounds run: the count, then the rounds."""
        return [self.count_event, *[self.round_event] * self.planned_rounds]


def noisy_count(count: int, noise_multiplier: float, seed: int) -> int:
    """The Gaussian count n + N(0, (σ·1)²), rounded and at least 1 (post-processing)."""
    rng = np.random.default_rng(seed)
    return max(1, round(count + COUNT_SENSITIVITY * noise_multiplier * rng.standard_normal()))


def count_release(*, epsilon: float, delta: float,
                  count_epsilon_share: float = COUNT_EPSILON_SHARE) -> SubsampledGaussianEvent:
    """The noisy count's mechanism: one Gaussian release of sensitivity 1 whose σ makes it
    spend `count_epsilon_share` of the budget on its own. It depends on the budget only, so a
    partner can reserve it before looking at its data."""
    if not 0.0 < count_epsilon_share < 1.0:
        raise ValueError(f"count epsilon share must be in (0, 1), got {count_epsilon_share}")
    try:
        sigma = calibrate_noise_multiplier(target_epsilon=count_epsilon_share * epsilon,
                                           delta=delta, sample_rate=1.0, steps=1,
                                           accountant=ACCOUNTANT)
    except ValueError:
        raise ValueError(
            f"epsilon {epsilon:g} is too small: the noisy count's share of it "
            f"({count_epsilon_share:g} x {epsilon:g} = {count_epsilon_share * epsilon:.3g}) is "
            f"below the smallest epsilon fedcredit's accountant calibrates at delta={delta:g}; "
            f"raise "
            f"epsilon or count-epsilon-share") from None
    return SubsampledGaussianEvent(1.0, sigma, 1, COUNT_SENSITIVITY)


def calibrate_plan(*, epsilon: float, delta: float, num_train_rows: int, batch_size: int,
                   local_epochs: float, planned_rounds: int, max_grad_norm: float, seed: int,
                   count_epsilon_share: float = COUNT_EPSILON_SHARE,
                   validate_delta: bool = True) -> PrivacyPlan:
    """Release the noisy count ñ of the `num_train_rows` rows, then calibrate σ so that the count
    and `planned_rounds` rounds at q = `plan_sample_rate(ñ, batch_size)` spend exactly the
    budget. `seed` seeds the count's noise (see `common.privacy.randomness.noise_seed`).

    δ must lie in [`DELTA_MIN`, 1) (ValueError; `validate_delta=False` is for the benchmark
    that measures that range); whether it is also below 1/ñ is known only once ñ is released,
    so `authorize_round` refuses every round of a plan where it is not (`delta_refusal`)."""
    if validate_delta:
        check_budget(epsilon, delta)
    if planned_rounds < 1:
        raise ValueError(f"planned rounds must be >= 1, got {planned_rounds}")
    count_event = count_release(epsilon=epsilon, delta=delta,
                                count_epsilon_share=count_epsilon_share)
    released_rows = noisy_count(num_train_rows, count_event.noise_multiplier, seed)
    sample_rate = plan_sample_rate(released_rows, batch_size)
    per_round = num_steps(local_epochs, steps_per_epoch(released_rows, sample_rate=sample_rate))
    sigma = calibrate_noise_multiplier(target_epsilon=epsilon, delta=delta,
                                       sample_rate=sample_rate, prior=[count_event],
                                       steps=per_round * planned_rounds, accountant=ACCOUNTANT)
    return PrivacyPlan(epsilon_budget=epsilon, delta=delta,
                       round_event=SubsampledGaussianEvent(sample_rate, sigma, per_round,
                                                           max_grad_norm),
                       planned_rounds=planned_rounds, count_event=count_event,
                       released_rows=released_rows)


@dataclass
class PrivacyState:
    """Everything a partner has spent in this run: its noisy count (once the plan exists) and
    one event per round trained."""

    events: list[SubsampledGaussianEvent] = field(default_factory=list)
    count: SubsampledGaussianEvent | None = None

    @property
    def releases(self) -> list[SubsampledGaussianEvent]:
        """Every release composed so far: the count, then the rounds."""
        return ([self.count] if self.count is not None else []) + self.events

    def epsilon(self, delta: float) -> float:
        """ε spent so far, composed over the count and every round (`ACCOUNTANT`, memoised)."""
        releases = self.releases
        return composed_epsilon(releases, delta=delta, accountant=ACCOUNTANT) if releases else 0.0

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


def delta_refusal(plan: PrivacyPlan) -> str:
    """Why no round of `plan` may train ('' if it may): a δ of 1/n or more lets a mechanism
    publish a record outright. Judged on the released count ñ (public), once it is logged."""
    if plan.delta < 1.0 / plan.released_rows:
        return ""
    return (f"delta {plan.delta:g} is not below 1/n for the released training-set size "
            f"{plan.released_rows}: such a delta allows publishing a record outright; set the "
            f"node config's delta below {1.0 / plan.released_rows:.3g}")


def authorize_round(plan: PrivacyPlan, state: PrivacyState, *,
                    requested_epochs: float) -> RoundDecision:
    """Decide this round: the calibrated q and σ always; refuse if ε would exceed the budget,
    or if the plan's δ is not below 1/ñ (`delta_refusal`).

    The coordinator influences only the number of local epochs it requests; more steps than
    the plan are allowed only while the composed ε stays within budget.
    """
    planned = plan.round_event
    steps = num_steps(requested_epochs, steps_per_epoch(plan.released_rows,
                                                        sample_rate=planned.sample_rate))
    event = replace(planned, steps=steps)
    before = state.epsilon(plan.delta)
    if reason := delta_refusal(plan):
        log.warning(reason)
        return RoundDecision(False, event, before, before, reason)
    after = composed_epsilon([*state.releases, event], delta=plan.delta, accountant=ACCOUNTANT)
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
