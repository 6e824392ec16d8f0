"""The one-run canary audit (common.privacy.audit.empirical): the bound, and that it can fail.

Runs are shortened (10 rounds x 1 local epoch, 100 DP-SGD steps, 1000 canaries) to keep the file
fast; σ is still calibrated to the claimed ε for exactly those steps. (b) uses claimed ε = 1:
with σ/10 at ε = 3 the one-run bound of 1000 canaries reaches about 2.5, not above 3 (docs/
empirical-audit.md); with noise off it exceeds 3 as well, tested below.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from common.config import RunConfig
from common.errors import CryptoError
from common.privacy.audit.empirical import (
    MIA_FPRS,
    EmpiricalAudit,
    auc,
    correct_guesses,
    dp_ceiling,
    epsilon_lower_bound,
    guess_counts,
    p_value,
    run_empirical_audit,
    tpr_at_fpr,
)
from common.privacy.audit.empirical_result import (
    SIGNED_FIELDS,
    check_result,
    load_result,
    sign_result,
    verify_result,
    write_result,
)
from common.privacy.crypto import fingerprint, generate_signing_key
from simulations.audit.cli import audit_app

SHORT = RunConfig(num_server_rounds=10, local_epochs=1.0)
TINY = RunConfig(num_server_rounds=3, local_epochs=1.0)
"""30 DP-SGD steps, for the signing and membership-inference tests (one run, module-scoped)."""


@pytest.fixture(scope="module")
def bank():
    from common.data.scenarios import load_scenario

    return load_scenario("credit_data", only="bank")[0]


def test_p_value_is_the_binomial_tail_without_delta():
    # all 10 right, ε = 0: 2^-10; ε = log 3 (q = 3/4): (3/4)^10
    assert p_value(guesses=10, correct=10, epsilon=0.0, delta=0.0, canaries=10) == \
        pytest.approx(2.0 ** -10)
    assert p_value(guesses=10, correct=10, epsilon=math.log(3), delta=0.0, canaries=10) == \
        pytest.approx(0.75 ** 10)
    # the δ term only adds
    assert p_value(guesses=10, correct=9, epsilon=1.0, delta=1e-3, canaries=100) > \
        p_value(guesses=10, correct=9, epsilon=1.0, delta=0.0, canaries=100)


def test_bound_known_values_and_monotone():
    # r all-correct guesses, δ = 0: bound = log(p/(1-p)) with p = β^(1/r), rounded down to 0.01
    for r in (10, 50, 200):
        p = 0.05 ** (1 / r)
        exact = math.log(p / (1 - p))
        got = epsilon_lower_bound(guesses=r, correct=r, delta=0.0, canaries=r)
        assert exact - 0.011 <= got <= exact
    bounds = [epsilon_lower_bound(guesses=200, correct=v, delta=1e-5, canaries=1000)
              for v in range(100, 201, 10)]
    assert bounds == sorted(bounds) and bounds[-1] > 3.5
    # at chance accuracy nothing is refuted
    assert epsilon_lower_bound(guesses=200, correct=100, delta=1e-5, canaries=1000) == 0.0
    assert epsilon_lower_bound(guesses=200, correct=110, delta=1e-5, canaries=1000) == 0.0
    # a larger δ or a smaller β gives a smaller bound
    assert epsilon_lower_bound(guesses=200, correct=190, delta=1e-3, canaries=1000) < \
        epsilon_lower_bound(guesses=200, correct=190, delta=1e-6, canaries=1000)
    assert epsilon_lower_bound(guesses=200, correct=190, delta=0, canaries=1000, beta=0.001) < \
        epsilon_lower_bound(guesses=200, correct=190, delta=0, canaries=1000, beta=0.05)


def test_guessing():
    scores = np.array([5.0, 4.0, 0.0, 0.0, -3.0, -4.0])
    included = np.array([True, False, True, False, False, False])
    assert correct_guesses(scores, included, 2) == 1 + 2
    assert guess_counts(1000) == (10, 20, 50, 100, 200, 300, 500)
    assert all(2 * k <= 7 for k in guess_counts(7))


def test_honest_run_stays_at_or_below_accounted(bank):
    result = run_empirical_audit(bank, SHORT, epsilon=3.0, delta=1e-5, canaries=1000, seed=1)
    assert result.epsilon_accounted == pytest.approx(3.0, rel=1e-3)
    assert result.epsilon_lower_bound <= result.epsilon_accounted
    assert not result.finding
    assert result.noise_multiplier_used == result.noise_multiplier_claimed
    assert result.steps == 100 and result.confidence == pytest.approx(0.95)


@pytest.mark.parametrize(("override", "claimed"), [("no-noise", 1.0), ("noise-div-10", 1.0),
                                                    ("no-noise", 3.0)])
def test_broken_mechanism_is_a_finding(bank, override, claimed):
    result = run_empirical_audit(bank, SHORT, epsilon=claimed, delta=1e-5, canaries=1000, seed=1,
                                 mechanism_override=override)
    # accounted with the CLAIMED σ, so the claim is unchanged ...
    assert result.epsilon_accounted == pytest.approx(claimed, rel=1e-3)
    assert result.noise_multiplier_used < result.noise_multiplier_claimed
    # ... and the audit refutes it
    assert result.epsilon_lower_bound > claimed
    assert result.finding


def test_cli_usage_errors_exit_2():
    runner = CliRunner()
    for args in (["--partner", "nobody"], ["--broken", "half"], ["--epsilon", "-1"],
                 ["--canaries", "1"], ["--scenario", "nope"]):
        out = runner.invoke(audit_app, ["empirical", *args])
        assert out.exit_code == 2, (args, out.output)
        assert "Traceback" not in out.output and "error:" in out.output


@pytest.fixture(scope="module")
def small(bank) -> EmpiricalAudit:
    return run_empirical_audit(bank, TINY, epsilon=3.0, delta=1e-5, canaries=200, seed=2,
                               scenario="credit_data")


@pytest.fixture(scope="module")
def auditor():
    return generate_signing_key()


@pytest.fixture(scope="module")
def signed(small, auditor) -> dict:
    return sign_result(small, auditor, {"scenario": "credit_data", "partner": "bank",
                                        "canaries": 200, "run": {"num_server_rounds": 3}})


def test_tpr_at_fpr_and_auc_on_known_scores():
    members = np.array([5.0, 4.0, 3.0, 1.0])
    others = np.array([4.5, 2.0, 0.0, -1.0])
    assert auc(members, others) == pytest.approx(12 / 16)  # pairs member > non-member
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5  # a tie counts half
    assert tpr_at_fpr(members, others, 0.0) == 0.25  # only above 4.5
    assert tpr_at_fpr(members, others, 0.25) == 0.75  # one false positive allowed: above 2.0
    assert tpr_at_fpr(members, others, 0.01) == 0.25  # below 1/n: as 0
    assert tpr_at_fpr(members, others, 1.0) == 1.0


def test_dp_ceiling_formula():
    assert dp_ceiling(0.01, epsilon=1.0, delta=1e-5) == pytest.approx(math.e * 0.01 + 1e-5)
    assert dp_ceiling(0.001, epsilon=0.0, delta=0.0) == pytest.approx(0.001)
    assert dp_ceiling(0.01, epsilon=8.0, delta=1e-5) == 1.0


def test_membership_inference_figures(small, bank):
    mia = small.membership
    assert mia is not None and mia.attack == "loss-threshold"
    assert (mia.members, mia.non_members) == (len(bank.train), len(bank.test))
    assert 0.0 <= mia.auc <= 1.0
    assert [p.fpr for p in mia.points] == list(MIA_FPRS)
    for point in mia.points:
        assert 0.0 <= point.tpr <= 1.0
        assert point.ceiling == pytest.approx(
            min(1.0, math.exp(small.epsilon_accounted) * point.fpr + 1e-5))
        assert point.above_ceiling == (point.tpr > point.ceiling)
    assert mia.epsilon == small.epsilon_accounted and mia.tpr(0.01) == mia.points[0].tpr
    tprs = [t for _, t in mia.roc]
    assert tprs == sorted(tprs) and all(0.0 <= t <= 1.0 for t in tprs) and tprs[-1] == 1.0
    assert small.to_dict()["membership"]["points"][0]["fpr"] == 0.01


def test_signed_result_round_trip(signed, small, auditor, tmp_path):
    assert set(signed) == {*SIGNED_FIELDS, "signature"}
    assert signed["result"] == small.to_dict()
    assert signed["signer"] == fingerprint(auditor.public_key())
    assert signed["created_utc"].endswith("Z") and signed["fedcredit_version"]
    assert signed["parameters"]["canaries"] == 200
    path = tmp_path / "result.json"
    write_result(path, signed)
    document = load_result(path)
    verify_result(document, auditor.public_key())
    assert check_result(path, key=auditor.public_key()).verified
    # found by fingerprint among known keys, else unverified (never silently trusted)
    known = {fingerprint(auditor.public_key()): ("auditor", auditor.public_key())}
    assert check_result(path, known_keys=known).key_name == "auditor"
    assert check_result(path).status == "unverified"


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _tampered(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if value == value * 2 else value * 2  # 0 -> 1, x -> 2x
    if isinstance(value, str):
        return value + "x"
    return "forged"


def test_tampering_with_any_field_fails(signed, auditor):
    public = auditor.public_key()
    leaves = list(_leaves(signed))
    assert len(leaves) > 60
    for path, value in leaves:
        forged = copy.deepcopy(signed)
        target = forged
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = _tampered(value)
        with pytest.raises(CryptoError):
            verify_result(forged, public)
    for name in SIGNED_FIELDS:  # removing a field, adding one
        with pytest.raises(CryptoError):
            verify_result({k: v for k, v in signed.items() if k != name}, public)
    with pytest.raises(CryptoError):
        verify_result({**signed, "note": "added"}, public)
    with pytest.raises(CryptoError):  # another key
        verify_result(signed, generate_signing_key().public_key())
    re_signed = sign_result(EmpiricalAudit(**{**vars_of(signed), "finding": True}),
                            generate_signing_key(), signed["parameters"])
    with pytest.raises(CryptoError):  # re-signed by a forger: not the auditor's key
        verify_result({**re_signed, "signer": signed["signer"]}, public)


def vars_of(document: dict) -> dict:
    from common.privacy.audit.empirical import GuessResult, MembershipInference, MiaPoint

    fields = dict(document["result"])
    fields["sweep"] = tuple(GuessResult(**g) for g in fields["sweep"])
    mia = dict(fields["membership"])
    mia["points"] = tuple(MiaPoint(**p) for p in mia["points"])
    mia["roc"] = tuple(tuple(p) for p in mia["roc"])
    fields["membership"] = MembershipInference(**mia)
    return fields
