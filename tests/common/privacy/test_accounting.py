"""RDP accounting of the subsampled Gaussian: golden values, Opacus agreement, composition, and
the contracts of the event type, the one σ calibration and the one budget comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from common.privacy.accounting import (
    CONVERSION,
    DELTA_MIN,
    EPSILON_SLACK,
    RDP_ORDERS,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    composed_epsilon,
    rdp_curve,
    rdp_epsilon,
    within_budget,
)

Event = SubsampledGaussianEvent


def _opacus_epsilon(q: float, sigma: float, steps: int, delta: float,
                    alphas: list[float] | None = None) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return float(accountant.get_epsilon(delta=delta, alphas=alphas))


# --- golden values ----------------------------------------------------------------------------


def test_golden_classic_conversion() -> None:
    eps = rdp_epsilon([Event(0.01, 4.0, 10_000)], delta=1e-5, conversion="classic")
    assert eps == pytest.approx(1.259, abs=1e-3)


def test_golden_default_conversion_is_balle2020() -> None:
    event = Event(0.01, 4.0, 10_000)
    assert rdp_epsilon([event], delta=1e-5) == pytest.approx(1.035, abs=1e-3)
    assert rdp_epsilon([event], delta=1e-5) == rdp_epsilon([event], delta=1e-5,
                                                           conversion="balle2020")


def test_golden_mnist_dpsgd() -> None:
    eps = rdp_epsilon([Event(256 / 60_000, 1.1, 14_063)], delta=1e-5)
    assert eps == pytest.approx(2.597, abs=1e-3)


# --- independent accountant -------------------------------------------------------------------


def _random_settings(count: int, seed: int) -> list[tuple[float, float, int, float]]:
    rng = np.random.default_rng(seed)
    return [(float(rng.uniform(0.001, 0.2)), float(rng.uniform(0.6, 5.0)),
             int(rng.integers(10, 5_000)), float(10 ** rng.uniform(-7, -3)))
            for _ in range(count)]


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), _random_settings(3, seed=2024))
def test_agrees_with_opacus_rdp_accountant(q: float, sigma: float, steps: int,
                                           delta: float) -> None:
    ours = rdp_epsilon([Event(q, sigma, steps)], delta=delta)
    # Same orders: identical up to float round-off.
    assert ours == pytest.approx(_opacus_epsilon(q, sigma, steps, delta, list(RDP_ORDERS)),
                                 rel=1e-9)
    # Opacus' default orders are a subset of ours, so ours can only be tighter.
    assert ours <= _opacus_epsilon(q, sigma, steps, delta) + 1e-12


def test_classic_conversion_is_never_tighter_than_balle2020() -> None:
    for q, sigma, steps, delta in _random_settings(4, seed=7):
        events = [Event(q, sigma, steps)]
        assert rdp_epsilon(events, delta=delta) < rdp_epsilon(events, delta=delta,
                                                              conversion="classic")


# --- composition ------------------------------------------------------------------------------


def test_composing_events_equals_one_event_with_all_steps() -> None:
    rounds = [Event(0.02, 1.3, 50) for _ in range(7)]
    composed = rdp_epsilon(rounds, delta=1e-5)
    assert composed == pytest.approx(rdp_epsilon([Event(0.02, 1.3, 350)], delta=1e-5), rel=1e-9)


def test_rdp_curve_adds_heterogeneous_events() -> None:
    a, b = Event(0.05, 1.0, 30), Event(0.01, 2.5, 400)
    np.testing.assert_allclose(rdp_curve([a, b]),
                               np.add(rdp_curve([a]), rdp_curve([b])), rtol=1e-12)
    assert len(rdp_curve([a])) == len(RDP_ORDERS)


def test_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    by_steps = [rdp_epsilon([Event(0.01, 1.0, s)], delta=1e-5) for s in (10, 100, 1_000)]
    by_sigma = [rdp_epsilon([Event(0.01, s, 100)], delta=1e-5) for s in (0.7, 1.0, 2.0)]
    assert by_steps[0] < by_steps[1] < by_steps[2]
    assert by_sigma[0] > by_sigma[1] > by_sigma[2]


def test_no_steps_add_no_rdp() -> None:
    assert rdp_curve([]) == [0.0] * len(RDP_ORDERS)
    event = Event(0.1, 1.0, 25)
    assert rdp_curve([event, Event(0.1, 1.0, 0)]) == rdp_curve([event])
    assert rdp_epsilon([event, Event(0.3, 0.0, 0)], delta=1e-5) == rdp_epsilon([event],
                                                                               delta=1e-5)


def test_no_steps_spend_nothing() -> None:
    assert rdp_epsilon([], delta=1e-5) == 0.0
    assert rdp_epsilon([Event(0.1, 1.0, 0)], delta=1e-5) == 0.0


def test_zero_noise_is_infinite_epsilon() -> None:
    assert rdp_epsilon([Event(0.1, 0.0, 1)], delta=1e-5) == math.inf
    assert rdp_epsilon([Event(0.1, 2.0, 10), Event(0.1, 0.0, 1)], delta=1e-5) == math.inf


@pytest.mark.parametrize(("q", "sigma", "steps", "clip", "pattern"), [
    (0.0, 1.0, 1, 1.0, "sample rate"), (1.5, 1.0, 1, 1.0, "sample rate"),
    (0.1, -0.5, 1, 1.0, "noise multiplier"), (0.1, 1.0, -1, 1.0, "steps"),
    (0.1, 1.0, 1, 0.0, "clipping norm"), (0.1, 1.0, 1, -1.0, "clipping norm"),
    (0.1, 1.0, 1, math.nan, "clipping norm"),
])
def test_event_validation(q: float, sigma: float, steps: int, clip: float, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Event(q, sigma, steps, clip)


def test_clipping_norm_defaults_to_one_and_does_not_change_epsilon() -> None:
    assert Event(0.1, 1.0, 5).clipping_norm == 1.0
    assert rdp_epsilon([Event(0.1, 1.0, 5, 7.5)], delta=1e-5) == rdp_epsilon(
        [Event(0.1, 1.0, 5)], delta=1e-5)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_delta_must_be_a_probability(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        rdp_epsilon([Event(0.1, 1.0, 1)], delta=delta)


def test_unknown_conversion_is_rejected() -> None:
    with pytest.raises(ValueError, match="'pld'"):
        rdp_epsilon([Event(0.1, 1.0, 1)], delta=1e-5, conversion="pld")


@pytest.mark.parametrize("field", ["sample_rate", "noise_multiplier", "steps", "clipping_norm"])
def test_events_are_frozen(field: str) -> None:
    event = Event(0.1, 1.0, 1)
    with pytest.raises(AttributeError):
        setattr(event, field, 2)


# --- budget comparison ------------------------------------------------------------------------


def test_within_budget_allows_only_float_round_off() -> None:
    assert within_budget(3.0, 3.0) and within_budget(0.0, 3.0)
    assert within_budget(3.0 * (1 + EPSILON_SLACK), 3.0)
    assert not within_budget(3.0 * (1 + 10 * EPSILON_SLACK), 3.0)
    assert not within_budget(math.inf, 3.0) and not within_budget(math.nan, 3.0)


# --- calibration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "q", "steps", "conversion"), [
    (1.0, 0.01, 1_000, "balle2020"),
    (3.0, 0.05, 200, "balle2020"),
    (8.0, 1.0, 5, "balle2020"),
    (2.0, 0.02, 500, "classic"),
])
def test_calibrated_sigma_is_within_budget_and_tight(target: float, q: float, steps: int,
                                                     conversion: str) -> None:
    tolerance = 1e-3
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=q,
                                       steps=steps, conversion=conversion, tolerance=tolerance,
                                       accountant="rdp")

    def spent(s: float) -> float:
        return rdp_epsilon([Event(q, s, steps)], delta=1e-5, conversion=conversion)

    assert spent(sigma) <= target
    assert spent(sigma - tolerance) > target


PRIOR = (Event(0.1, 3.8, 50), Event(0.05, 2.0, 200))


@pytest.mark.parametrize(("target", "prior"), [
    (0.5, ()), (3.0, ()), (3.0, PRIOR[:1]), (8.0, PRIOR[:1]), (3.0, PRIOR),
])
def test_one_shot_release_after_prior_events_is_within_budget_and_tight(
        target: float, prior: tuple[SubsampledGaussianEvent, ...]) -> None:
    """The embedding release: one step at q = 1 after the stage-2 DP-SGD (the prior)."""
    tolerance = 1e-4
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=1.0,
                                       steps=1, prior=prior, tolerance=tolerance)

    def spent(s: float) -> float:
        return composed_epsilon([*prior, Event(1.0, s, 1)], delta=1e-5)

    assert spent(sigma) <= target
    assert spent(sigma - tolerance) > target
    if prior:  # the prior's spending costs noise
        assert sigma > calibrate_noise_multiplier(target_epsilon=target, delta=1e-5,
                                                  sample_rate=1.0, steps=1, tolerance=tolerance)


@pytest.mark.parametrize(("kwargs", "golden"), [
    ({"target_epsilon": 1.0, "sample_rate": 0.01, "steps": 1_000}, 1.513671875),
    ({"target_epsilon": 8.0, "sample_rate": 1.0, "steps": 5}, 1.4267578125),
    ({"target_epsilon": 3.0, "sample_rate": 1.0, "steps": 1, "tolerance": 1e-4},
     1.49322509765625),
    ({"target_epsilon": 3.0, "sample_rate": 1.0, "steps": 1, "tolerance": 1e-4,
      "prior": PRIOR[:1]}, 1.559326171875),
])
def test_calibration_is_bit_identical_to_the_reference_bisection(kwargs: dict,
                                                                 golden: float) -> None:
    """Bisection from the bracket [0, 1] (doubled until the target is met) down to `tolerance`
    returns exact binary fractions: the same σ on every machine and across refactors."""
    assert calibrate_noise_multiplier(delta=1e-5, accountant="rdp", **kwargs) == golden


def test_calibration_uses_the_default_conversion() -> None:
    assert CONVERSION == "balle2020"
    kwargs = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 1_000}
    balle = calibrate_noise_multiplier(**kwargs, accountant="rdp")  # type: ignore[arg-type]
    classic = calibrate_noise_multiplier(**kwargs, accountant="rdp",  # type: ignore[arg-type]
                                         conversion="classic")
    assert balle < classic  # the tighter conversion needs less noise


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"target_epsilon": 0.0}, "target epsilon"),
    ({"target_epsilon": -1.0}, "target epsilon"),
    ({"target_epsilon": math.nan}, "target epsilon"),
    ({"delta": 0.0}, "delta"),
    ({"steps": 0}, "steps"),
    ({"sample_rate": 0.0}, "sample rate"),
    ({"tolerance": 0.0}, "tolerance"),
    ({"target_epsilon": 1e-6, "sample_rate": 1.0, "steps": 10_000}, "cannot reach"),
    ({"target_epsilon": 0.1, "prior": PRIOR}, "no budget left"),
])
def test_calibration_rejects_bad_or_unreachable_targets(kwargs: dict[str, float],
                                                        pattern: str) -> None:
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        calibrate_noise_multiplier(**args)  # type: ignore[arg-type]


def test_calibration_rejects_keyword_less_calls() -> None:
    with pytest.raises(TypeError):
        calibrate_noise_multiplier(1.0, 1e-5, 0.01, 100)  # type: ignore[misc]


def test_the_claim_bounds_the_pessimistic_pld_at_the_smallest_delta_accepted() -> None:
    """Issue 21: at `DELTA_MIN` the ε a partner claims for the default plan is at least
    dp_accounting's pessimistic PLD (an upper bound on the true ε); below the range a budget is
    refused (`tests/common/test_config.py`). The table: python -m simulations.bench.delta_range."""
    from simulations.bench.delta_range import delta_rows

    (row,) = delta_rows(3.0, 20, deltas=(DELTA_MIN,))
    assert row["accepted"] and row["claimed"] <= 3.0 * (1 + 1e-9)
    assert row["claimed"] >= row["pld_pessimistic"]
