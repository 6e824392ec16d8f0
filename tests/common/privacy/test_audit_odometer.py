"""The auditor's check of lifetime odometers (`common.privacy.audit.odometer`, through `verify`).

Ledgers and odometers are written by honest code (`tests.audit_fixtures`, `PrivacyOdometer`) and
then tampered with; each test asserts the named finding where the problem is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import AuditInputError
from common.privacy.audit import AuditResult, IndependentAccountant, verify
from common.privacy.budget import PrivacyPlan
from common.privacy.ledger import Finding, ledger_event
from common.privacy.odometer import PrivacyOdometer
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
from tests.odometer_fixtures import (
    LIFETIME_SCALE,
    dataset_of,
    odometer_path,
    odometer_paths,
    write_odometers,
)


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return make_keys()


@pytest.fixture(scope="module")
def plans() -> dict[str, PrivacyPlan]:
    return make_plans()


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Ed25519PrivateKey],
              plans: dict[str, PrivacyPlan]) -> Federation:
    """Honest run-A with every release reserved in its partner's odometer."""
    fed = build_federation(tmp_path_factory.mktemp("odo") / "fed", keys=keys, plans=plans,
                           rounds={"bank": 3})
    write_odometers(fed)
    return fed


@pytest.fixture
def fed(clean_set: Federation, tmp_path: Path) -> Federation:
    """A private copy to tamper with (odometers included)."""
    return clean_set.copy_to(tmp_path / "fed")


def audit(fed: Federation, accountant: IndependentAccountant, *,
          odometers: list[Path] | None = None) -> AuditResult:
    return verify(fed.ledger_paths, fed.keys_dir, fed.receipts, accountant=accountant,
                  odometer_paths=odometer_paths(fed) if odometers is None else odometers)


def found(result: AuditResult, path: Path, code: str) -> list[Finding]:
    return [f for f in result.findings if f.path == str(path) and f.code == code]


def spent_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, entry) of a ledger's entries that spent steps."""
    entries = [json.loads(line) for line in read_entries(path)]
    return [(n, e) for n, e in enumerate(entries, 1) if e["mechanism"]["steps"] > 0]


def test_honest_odometers_verify_and_cover_every_release(
        clean_set: Federation, accountant: IndependentAccountant) -> None:
    result = audit(clean_set, accountant)
    assert result.ok, result.findings
    assert [o.partner for o in result.odometers] == list(clean_set.ledgers)
    for odometer, (name, ledger) in zip(result.odometers, clean_set.ledgers.items(),
                                        strict=True):
        assert odometer.dataset_sha256 == dataset_of(name) and odometer.runs == ["run-A"]
        assert odometer.epsilon_lifetime_budget == pytest.approx(
            clean_set.plans[name].epsilon_budget * LIFETIME_SCALE)
        assert odometer.ledgers_checked == [str(ledger)]
        assert len(odometer.entries) == len(spent_lines(ledger))
        assert all(e.covers.startswith(str(ledger)) for e in odometer.entries)
        assert odometer.accountant == "prv"
        assert odometer.epsilon_claimed <= odometer.epsilon_rdp
        assert odometer.epsilon_claimed >= (odometer.epsilon_independent
                                            - odometer.epsilon_tolerance)
    assert json.loads(json.dumps(result.to_dict()))["odometers"][0]["partner"] == "bank"


def test_a_ledger_entry_missing_from_the_odometer_is_a_finding(
        keys: dict[str, Ed25519PrivateKey], plans: dict[str, PrivacyPlan], tmp_path: Path,
        accountant: IndependentAccountant) -> None:
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans, rounds={"bank": 3})
    write_odometers(fed, skip=frozenset({("lender", 2)}))
    result = audit(fed, accountant)
    line = next(n for n, e in spent_lines(fed.ledgers["lender"]) if e["round"] == 2)
    assert [(f.path, f.line) for f in result.findings
            if f.code == "release-not-in-odometer"] == [(str(fed.ledgers["lender"]), line)]
    assert "escaped the lifetime budget" in result.findings[0].message


def test_a_reservation_of_another_mechanism_does_not_cover_a_release(
        fed: Federation, accountant: IndependentAccountant) -> None:
    # The bank re-writes its odometer (re-signed by its own key) to log more noise in round 1.
    path = odometer_path(fed, "bank")
    entries = [json.loads(line) for line in read_entries(path)]
    entries[0]["mechanism"]["noise_multiplier"] *= 1.5
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["bank"]] * len(entries), 0)))
    result = audit(fed, accountant)
    problems = found(result, fed.ledgers["bank"], "release-not-in-odometer")
    assert len(problems) == 1 and "its reservations for that round log" in problems[0].message


def test_a_reservation_of_more_steps_covers_a_shorter_release(
        keys: dict[str, Ed25519PrivateKey], plans: dict[str, PrivacyPlan], tmp_path: Path,
        accountant: IndependentAccountant) -> None:
    # Reserved before training at the authorised steps; the ledger logs the steps taken.
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans, rounds={"bank": 3})
    write_odometers(fed)
    path = odometer_path(fed, "bank")
    entries = [json.loads(line) for line in read_entries(path)]
    entries[-1]["mechanism"]["steps"] += 5
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["bank"]] * len(entries), 0)))
    assert found(audit(fed, accountant), fed.ledgers["bank"], "release-not-in-odometer") == []


def test_tampering_with_an_odometer_is_found_at_its_line(
        fed: Federation, accountant: IndependentAccountant) -> None:
    path = odometer_path(fed, "lender")
    lines = read_entries(path)
    entry = json.loads(lines[1])
    entry["epsilon_lifetime_cumulative"] /= 2
    lines[1] = dump([entry])[0]
    write_entries(path, lines)
    assert [f.line for f in found(audit(fed, accountant), path, "bad-signature")] == [2]


def test_an_understated_lifetime_epsilon_is_found_even_when_re_signed(
        fed: Federation, accountant: IndependentAccountant) -> None:
    path = odometer_path(fed, "ecommerce")
    entries = [json.loads(line) for line in read_entries(path)]
    for entry in entries:
        entry["epsilon_lifetime_cumulative"] *= 0.5
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["ecommerce"]] * len(entries),
                                                0)))
    result = audit(fed, accountant)
    assert len(found(result, path, "epsilon-understated")) == len(entries)
    assert found(result, path, "bad-signature") == []


def test_a_lifetime_budget_exceeded_is_found(keys: dict[str, Ed25519PrivateKey],
                                              plans: dict[str, PrivacyPlan], tmp_path: Path,
                                              accountant: IndependentAccountant) -> None:
    # A partner that ran one run under a lifetime budget smaller than the run's ε (its code
    # skipped the odometer's refusal): re-signed entries that claim the budget honestly.
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans, rounds={"bank": 3})
    write_odometers(fed)
    path = odometer_path(fed, "bank")
    entries = [json.loads(line) for line in read_entries(path)]
    for entry in entries:
        entry["epsilon_lifetime_budget"] = plans["bank"].epsilon_budget / 2
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["bank"]] * len(entries), 0)))
    result = audit(fed, accountant)
    assert found(result, path, "lifetime-budget-exceeded")
    assert not result.ok


def test_an_odometer_signed_by_another_partner_is_found(
        fed: Federation, accountant: IndependentAccountant) -> None:
    path = odometer_path(fed, "bank")
    entries = [json.loads(line) for line in read_entries(path)]
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["lender"]] * len(entries), 0)))
    assert len(found(audit(fed, accountant), path, "foreign-key")) == len(entries)


def test_a_restart_with_a_fresh_ledger_shows_in_the_odometer(
        keys: dict[str, Ed25519PrivateKey], plans: dict[str, PrivacyPlan], tmp_path: Path,
        accountant: IndependentAccountant) -> None:
    # The bank's releases of two runs (two ledgers) compose in one odometer: the auditor
    # recomputes the lifetime ε over both, and each run's ledger is covered by it.
    first = build_federation(tmp_path / "a", keys=keys, plans=plans, rounds={"bank": 3})
    second = build_federation(tmp_path / "b", keys=keys, plans=plans, run_id="run-B",
                              rounds={"bank": 3})
    path = tmp_path / "bank.odometer.jsonl"
    odometer = PrivacyOdometer(path, keys["bank"], "bank", dataset_of("bank"), 10.0, DELTA)
    for fed in (first, second):
        for _, entry in spent_lines(fed.ledgers["bank"]):
            odometer.record(run_id=entry["run_id"], server_round=entry["round"],
                            release="dp-sgd", event=ledger_event(entry),
                            ledger_path=str(fed.ledgers["bank"]))
    result = verify([second.ledgers["bank"]], second.keys_dir, accountant=accountant,
                    odometer_paths=[path])
    assert result.ok, result.findings
    [summary] = result.odometers
    assert summary.runs == ["run-A", "run-B"]
    assert summary.epsilon_rdp > result.partners[0].epsilon_rdp  # both runs count
    per_run = len(spent_lines(first.ledgers["bank"]))  # its count and its trained rounds
    assert [e.covers != "" for e in summary.entries] == [False] * per_run + [True] * per_run


def test_odometer_inputs_are_checked(fed: Federation, accountant: IndependentAccountant) -> None:
    with pytest.raises(AuditInputError, match="does not exist"):
        audit(fed, accountant, odometers=[fed.root / "missing.jsonl"])
    twice = [odometer_path(fed, "bank")] * 2
    assert found(audit(fed, accountant, odometers=twice), twice[0], "duplicate-odometer")


def test_a_second_count_in_one_run_is_reported(fed: Federation,
                                               accountant: IndependentAccountant) -> None:
    """An honest partner releases its count once per run: a second count reserved for the
    same run means its ledger of that run was lost or replaced."""
    plan = fed.plans["lender"]
    odometer = PrivacyOdometer(odometer_path(fed, "lender"), fed.keys["lender"], "lender",
                               dataset_of("lender"), plan.epsilon_budget * LIFETIME_SCALE, DELTA)
    entry = odometer.record(run_id=fed.run_id, server_round=9, release="count",
                            event=plan.count_event, ledger_path="elsewhere.jsonl")
    lines = read_entries(odometer_path(fed, "lender"))
    assert json.loads(lines[-1])["seq"] == entry["seq"]
    codes = [f.line for f in found(audit(fed, accountant), odometer_path(fed, "lender"),
                                   "second-count")]
    assert codes == [len(lines)]


def _odometer_across_a_refresh(
    keys: dict[str, Ed25519PrivateKey], plans: dict[str, PrivacyPlan], tmp_path: Path
) -> tuple[Path, list[Federation]]:
    """The bank's odometer of run-A on 300 records and of run-B after one loan was appended,
    opened by their records (`PrivacyOdometer.of_records`), as the partner opens it."""
    feds = [
        build_federation(tmp_path / "a", keys=keys, plans=plans, rounds={"bank": 3}),
        build_federation(
            tmp_path / "b", keys=keys, plans=plans, run_id="run-B", rounds={"bank": 3}
        ),
    ]
    path = tmp_path / "bank.odometer.jsonl"
    for fed, rows in zip(feds, (300, 301), strict=True):
        odometer = PrivacyOdometer.of_records(
            path,
            keys["bank"],
            "bank",
            np.arange(rows, dtype="<u8"),
            10.0,
            DELTA,
            files=(tmp_path / "unread.csv", tmp_path / "unread.toml"),
        )
        for _, entry in spent_lines(fed.ledgers["bank"]):
            odometer.record(
                run_id=entry["run_id"],
                server_round=entry["round"],
                release="dp-sgd",
                event=ledger_event(entry),
                ledger_path=str(fed.ledgers["bank"]),
            )
    return path, feds


def test_an_odometer_across_a_data_refresh_verifies_as_one_data_set(
    keys: dict[str, Ed25519PrivateKey],
    plans: dict[str, PrivacyPlan],
    tmp_path: Path,
    accountant: IndependentAccountant,
) -> None:
    path, feds = _odometer_across_a_refresh(keys, plans, tmp_path)
    result = verify(
        [feds[1].ledgers["bank"]], feds[1].keys_dir, accountant=accountant, odometer_paths=[path]
    )
    assert result.ok, result.findings
    [summary] = result.odometers
    assert summary.runs == ["run-A", "run-B"]
    assert {json.loads(line)["dataset_sha256"] for line in read_entries(path)} == {
        summary.dataset_sha256
    }
    per_run = len(spent_lines(feds[1].ledgers["bank"]))
    assert [e.covers != "" for e in summary.entries] == [False] * per_run + [True] * per_run


def test_an_odometer_that_changes_data_set_midway_is_found(
    keys: dict[str, Ed25519PrivateKey],
    plans: dict[str, PrivacyPlan],
    tmp_path: Path,
    accountant: IndependentAccountant,
) -> None:
    # Run-B's entries re-signed as another data set's (what identifying a data set by its
    # file's bytes did on a refresh): one odometer must count one data set throughout.
    path, feds = _odometer_across_a_refresh(keys, plans, tmp_path)
    entries = [json.loads(line) for line in read_entries(path)]
    half = len(entries) // 2
    for entry in entries[half:]:
        entry["dataset_sha256"] = "cd" * 32
    write_entries(path, dump(resign_and_rechain(entries, [keys["bank"]] * len(entries), half)))
    result = verify(
        [feds[1].ledgers["bank"]], feds[1].keys_dir, accountant=accountant, odometer_paths=[path]
    )
    assert [f.line for f in found(result, path, "identity-changed")] == list(
        range(half + 1, len(entries) + 1)
    )
    assert not result.ok
