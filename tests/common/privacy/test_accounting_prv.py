"""The `prv` accountant (min of Opacus RDP and Opacus PRV): contracts in dp_accounting's style.

Calibrated σ meets the budget under the accountant and needs less noise than RDP; the PRV part is
exactly Opacus' `PRVAccountant`; the accountant is never worse than RDP; ε grows with steps and
shrinks with noise; and it is loaded without Opacus' package (no torch).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from common.privacy.accounting import (
    ACCOUNTANT,
    ACCOUNTANT_NAME,
    ACCOUNTANT_NAMES,
    PRV_DELTA_ERROR,
    PRV_EPS_ERROR,
    SubsampledGaussianEvent,
    accountant_of,
    calibrate_noise_multiplier,
    composed_epsilon,
    prv_epsilon,
    rdp_epsilon,
)

Event = SubsampledGaussianEvent
Q, STEPS, DELTA = 64 / 1200, 1125, 1e-5
"""The issue's example: q = 64/1200, 1125 steps, δ = 1e-5."""


@pytest.fixture(scope="module", params=[3.0, 1.0])
def calibrated(request: pytest.FixtureRequest) -> tuple[float, float, float]:
    """(ε, σ by RDP, σ by the default accountant) at the issue's example."""
    target = request.param
    by_rdp = calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=Q,
                                        steps=STEPS, accountant="rdp")
    tight = calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=Q,
                                       steps=STEPS)
    return target, by_rdp, tight


def test_default_accountant_is_prv_and_named_with_its_parameters() -> None:
    assert ACCOUNTANT == "prv" and ACCOUNTANT_NAMES["prv"] == ACCOUNTANT_NAME
    assert f"eps_error={PRV_EPS_ERROR:g}" in ACCOUNTANT_NAME
    assert f"delta_error=delta*{PRV_DELTA_ERROR:g}" in ACCOUNTANT_NAME
    assert accountant_of(ACCOUNTANT_NAME) == "prv"
    assert accountant_of("rdp (opacus.accountants.analysis.rdp)") == "rdp"  # old ledgers
    assert accountant_of("something else") is None


def test_calibrated_sigma_meets_the_budget_and_is_at_least_5_percent_below_rdps(
        calibrated: tuple[float, float, float]) -> None:
    target, by_rdp, tight = calibrated
    spent = composed_epsilon([Event(Q, tight, STEPS)], delta=DELTA)
    assert spent <= target
    assert composed_epsilon([Event(Q, tight - 1e-3, STEPS)], delta=DELTA) > target
    assert tight <= 0.95 * by_rdp  # 2.813 -> 2.634 at ε = 3, 7.327 -> 6.819 at ε = 1
    # The tight σ's RDP ε is over the budget: only the PRV bound makes it fit.
    assert rdp_epsilon([Event(Q, tight, STEPS)], delta=DELTA) > target


@pytest.mark.parametrize(("events", "delta"), [
    ([(Q, 2.7, STEPS)], 1e-5),
    ([(1.0, 12.3, 1), (Q, 2.7, STEPS)], 1e-5),  # the count, then DP-SGD
    ([(1.0, 3.0, 1)], 1e-6),  # a one-shot release
    ([(0.02, 1.3, 300), (1.0, 2.0, 1)], 1e-5),  # vertical: DP-SGD then a release
])
def test_prv_part_is_exactly_opacus_prv_accountant(events: list[tuple[float, float, int]],
                                                   delta: float) -> None:
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(sigma, q, steps) for q, sigma, steps in events]
    ours = prv_epsilon([Event(*e) for e in events], delta=delta)
    assert ours == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)


def test_prv_accountant_is_never_worse_than_rdp() -> None:
    for events in ([Event(0.001, 20.0, 1000)], [Event(Q, 2.7, STEPS)], [Event(1.0, 50.0, 1)]):
        by_rdp = rdp_epsilon(events, delta=DELTA)
        assert composed_epsilon(events, delta=DELTA) == min(by_rdp,
                                                            prv_epsilon(events, delta=DELTA))
        assert composed_epsilon(events, delta=DELTA) <= by_rdp
        assert composed_epsilon(events, delta=DELTA, accountant="rdp") == by_rdp
    # At tiny ε PRV's eps_error (0.01) dominates and RDP is the tighter bound.
    tiny = [Event(0.001, 20.0, 1000)]
    assert composed_epsilon(tiny, delta=DELTA) == rdp_epsilon(tiny, delta=DELTA)


def test_prv_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    by_steps = [composed_epsilon([Event(Q, 2.0, s)], delta=DELTA) for s in (100, 400, 1600)]
    by_sigma = [composed_epsilon([Event(Q, s, 400)], delta=DELTA) for s in (1.5, 2.0, 3.0)]
    assert by_steps[0] < by_steps[1] < by_steps[2]
    assert by_sigma[0] > by_sigma[1] > by_sigma[2]


def test_prv_edge_cases() -> None:
    assert composed_epsilon([], delta=DELTA) == 0.0
    assert composed_epsilon([Event(Q, 1.0, 0)], delta=DELTA) == 0.0
    assert composed_epsilon([Event(Q, 0.0, 3)], delta=DELTA) == math.inf
    assert prv_epsilon([Event(Q, 0.0, 3)], delta=DELTA) == math.inf
    with pytest.raises(ValueError, match="accountant"):
        composed_epsilon([Event(Q, 1.0, 1)], delta=DELTA, accountant="gdp")
    with pytest.raises(ValueError, match="accountant"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=Q, steps=1,
                                   accountant="gdp")


def test_prv_loads_without_opacus_package_or_torch() -> None:
    code = ("import sys\nfrom common.privacy.accounting import prv_epsilon, "
            "SubsampledGaussianEvent as E\n"
            "assert prv_epsilon([E(0.05, 2.0, 10)], delta=1e-5) > 0\n"
            "assert 'opacus' not in sys.modules and 'torch' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('opacus', 'torch')))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
