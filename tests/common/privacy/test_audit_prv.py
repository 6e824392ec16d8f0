"""The audit of claims by the `prv` accountant (Opacus' PRV, min with RDP), and of old RDP ledgers.

dp_accounting's PLD recomputes a prv claim independently: on a sample of mechanisms an honest
claim lies within [PLD - tolerance, RDP]; old ledgers that name the RDP accountant still verify
against RDP; and a broken mechanism (σ smaller than the claim implies) is flagged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from common.privacy.accounting import (
    RDP_ACCOUNTANT_NAME,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    composed_epsilon,
    prv_epsilon,
    rdp_epsilon,
)
from common.privacy.audit import IndependentAccountant, verify
from common.privacy.budget import PrivacyPlan
from common.privacy.ledger import ledger_event
from tests.audit_fixtures import (
    DELTA,
    Federation,
    build_federation,
    dump,
    make_keys,
    make_plans,
    read_entries,
    resign_and_rechain,
    write_entries,
)


@pytest.fixture(scope="module")
def accountant() -> IndependentAccountant:
    return IndependentAccountant()


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """The fixtures' honest federation (prv claims), built once."""
    return build_federation(tmp_path_factory.mktemp("prv") / "fed", keys=make_keys(),
                            plans=make_plans())


@pytest.mark.parametrize("rounds", [
    [(1.0, 12.3, 1), (64 / 1200, 2.63, 1125)],  # the count, then the DP-SGD at ε ≈ 3
    [(0.01, 1.0, 5000)],
    [(0.2, 0.8, 60)],
    [(1.0, 1.0, 1)],
    [(1.0, 40.0, 1), (0.03, 5.0, 300)],
    [(1.0, 3.5, 1), (0.05, 1.1, 1125)],
])
def test_independent_pld_agrees_with_the_prv_claim_within_tolerance(
        accountant: IndependentAccountant, rounds: list[tuple[float, float, int]]) -> None:
    events = [SubsampledGaussianEvent(*r) for r in rounds]
    claim = composed_epsilon(events, delta=DELTA)
    [*_, (pld_eps, tolerance)] = accountant.tight(rounds, [DELTA] * len(rounds))
    assert pld_eps is not None and tolerance is not None
    assert pld_eps - tolerance <= claim <= rdp_epsilon(events, delta=DELTA)
    # Both tight accountants agree: PRV's upper bound is its estimate + 0.01, PLD is pessimistic.
    assert abs(prv_epsilon(events, delta=DELTA) - pld_eps) <= 0.012 + 0.005 * pld_eps
    assert tolerance <= 0.01 * pld_eps


def test_describe_names_both_accountants_and_the_tolerance(
        accountant: IndependentAccountant) -> None:
    text = accountant.describe()["tight"]
    assert "Opacus PRV" in text and "dp_accounting.pld" in text and "tolerance" in text
    assert "RDP is still recomputed and reported" in text


def test_honest_prv_ledgers_verify_and_report_rdp(honest: Federation,
                                                  accountant: IndependentAccountant) -> None:
    result = verify(honest.ledger_paths, honest.keys_dir, honest.receipts, accountant=accountant)
    assert result.ok, result.findings
    for partner in result.partners:
        assert partner.accountant == "prv"
        assert partner.epsilon_rdp > partner.epsilon_claimed  # RDP still reported, and looser


def _rewrite(fed: Federation, name: str, change) -> Path:
    path = fed.ledgers[name]
    entries = [json.loads(line) for line in read_entries(path)]
    events: list[SubsampledGaussianEvent] = []
    for entry in entries:
        if entry["mechanism"]["steps"] > 0:
            events.append(ledger_event(entry))
        change(entry, events)
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys[name]] * len(entries), 0)))
    return path


def _rdp_plan(plan: PrivacyPlan) -> PrivacyPlan:
    """The plan as the RDP accountant calibrated it (before the prv accountant existed)."""
    count = calibrate_noise_multiplier(target_epsilon=0.1 * plan.epsilon_budget, delta=DELTA,
                                       sample_rate=1.0, steps=1, accountant="rdp")
    count_event = dataclasses.replace(plan.count_event, noise_multiplier=count)
    event = plan.round_event
    sigma = calibrate_noise_multiplier(target_epsilon=plan.epsilon_budget, delta=DELTA,
                                       sample_rate=event.sample_rate,
                                       steps=event.steps * plan.planned_rounds,
                                       prior=[count_event], accountant="rdp")
    return dataclasses.replace(plan, count_event=count_event,
                               round_event=dataclasses.replace(event, noise_multiplier=sigma))


def test_old_rdp_ledgers_still_verify_and_are_held_to_rdp(
        tmp_path: Path, accountant: IndependentAccountant) -> None:
    plans = {name: _rdp_plan(plan) for name, plan in make_plans().items()}
    fed = build_federation(tmp_path / "old", keys=make_keys(), plans=plans,
                           rounds=dict.fromkeys(plans, 3))

    def as_rdp(entry: dict, events: list[SubsampledGaussianEvent], scale: float = 1.0) -> None:
        entry["accountant"] = RDP_ACCOUNTANT_NAME
        entry["epsilon_cumulative"] = rdp_epsilon(events, delta=DELTA) * scale

    for name in fed.ledgers:
        _rewrite(fed, name, as_rdp)
    result = verify(fed.ledger_paths, fed.keys_dir, None, accountant=accountant)
    assert result.ok, result.findings
    assert {p.accountant for p in result.partners} == {"rdp"}
    for partner in result.partners:
        assert partner.epsilon_independent == partner.epsilon_rdp == pytest.approx(
            partner.epsilon_claimed, rel=1e-8)
    # Held to RDP: a 2% understatement of an RDP claim is found (it would pass as a prv claim).
    _rewrite(fed, "bank", lambda e, ev: as_rdp(e, ev, 0.98))
    codes = {f.code for f in verify(fed.ledger_paths, fed.keys_dir, None,
                                    accountant=accountant).findings}
    assert codes == {"epsilon-understated"}


def test_prv_claim_with_ten_percent_smaller_sigma_than_calibrated_is_flagged(
        honest: Federation, tmp_path: Path, accountant: IndependentAccountant) -> None:
    # The lender ran (and logs) σ 10% below its calibration but claims the calibrated ε.
    fed = honest.copy_to(tmp_path / "broken")

    def smaller_sigma(entry: dict, events: list[SubsampledGaussianEvent]) -> None:
        if entry["event"] == "train":
            entry["mechanism"]["noise_multiplier"] *= 0.9

    _rewrite(fed, "lender", smaller_sigma)
    findings = verify(fed.ledger_paths, fed.keys_dir, None, accountant=accountant).findings
    assert {(Path(f.path).stem, f.code) for f in findings} >= {("lender", "epsilon-understated"),
                                                               ("lender", "budget-exceeded")}
    assert {Path(f.path).stem for f in findings} == {"lender"}
    assert any("dp_accounting PLD" in f.message for f in findings)


def test_unknown_accountant_is_a_finding(honest: Federation, tmp_path: Path,
                                         accountant: IndependentAccountant) -> None:
    fed = honest.copy_to(tmp_path / "unknown")
    _rewrite(fed, "bank", lambda e, ev: e.update(accountant="gdp (made up)"))
    codes = {f.code for f in verify(fed.ledger_paths, fed.keys_dir, None,
                                    accountant=accountant).findings}
    assert "unknown-accountant" in codes


def test_ledger_entries_name_the_prv_accountant_with_its_parameters(honest: Federation) -> None:
    for path in honest.ledger_paths:
        for line in read_entries(path):
            entry = json.loads(line)
            assert entry["accountant"].startswith("min(rdp, prv)")
            assert "eps_error=0.01" in entry["accountant"]
