"""The partner's lifetime privacy odometer (`common.privacy.odometer`).

The issue it fixes: a ledger is per run and per file, so a partner restarted with another
`ledger-path` spent its whole budget again. Here every release of a data set, across runs and
ledgers, composes in one signed odometer, and what would exceed the lifetime budget is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import LedgerError, LifetimeBudgetExceeded
from common.privacy.accounting import (
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    composed_epsilon,
)
from common.privacy.crypto import fingerprint, generate_signing_key
from common.privacy.ledger import PartnerLedger, canonical_bytes, read_lines
from common.privacy.odometer import (
    ODOMETER_FIELDS,
    ODOMETER_KIND,
    RELEASE_COUNT,
    RELEASE_DP_SGD,
    PrivacyOdometer,
    check_odometer,
    dataset_fingerprint,
)
from tests.audit_fixtures import resign_and_rechain

DELTA = 1e-5
SAMPLE_RATE, STEPS_PER_ROUND, PLANNED_ROUNDS = 0.064, 16, 2
DATASET = "ab" * 32


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return generate_signing_key()


@dataclass(frozen=True)
class Plan:
    """One run's DP-SGD plan: `planned_rounds` rounds of `round_event`."""

    round_event: SubsampledGaussianEvent
    planned_rounds: int = PLANNED_ROUNDS

    def events(self) -> list[SubsampledGaussianEvent]:
        return [self.round_event] * self.planned_rounds


@pytest.fixture(scope="module")
def plan() -> Plan:
    """The issue's plan: run budget 1 over 2 rounds (ε just under 1 after round 2)."""
    sigma = calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=SAMPLE_RATE,
                                       steps=STEPS_PER_ROUND * PLANNED_ROUNDS)
    return Plan(SubsampledGaussianEvent(SAMPLE_RATE, sigma, STEPS_PER_ROUND, 1.0))


def open_odometer(path: Path, key: Ed25519PrivateKey, *, lifetime: float = 1.0,
                  delta: float = DELTA, dataset: str = DATASET,
                  partner: str = "bank") -> PrivacyOdometer:
    return PrivacyOdometer(path, key, partner, dataset, lifetime, delta)


def run_rounds(odometer: PrivacyOdometer, plan: Plan, run_id: str, rounds: range,
               ledger: Path) -> None:
    """What the partner does each round: reserve the round's release in the odometer first."""
    for server_round in rounds:
        odometer.record(run_id=run_id, server_round=server_round, release=RELEASE_DP_SGD,
                        event=plan.round_event, ledger_path=str(ledger))


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write_lines(path: Path, entries: list[dict]) -> None:
    path.write_bytes(b"".join(canonical_bytes(e) + b"\n" for e in entries))


# --- the data set's identity ------------------------------------------------------------------


def test_dataset_fingerprint_covers_data_and_schema_bytes_with_domain_separation(
        tmp_path: Path) -> None:
    data, schema = tmp_path / "data.csv", tmp_path / "schema.toml"
    data.write_bytes(b"age,bad\n30,0\n")
    schema.write_bytes(b"[columns]\n")
    first = dataset_fingerprint(data, schema)
    assert first == dataset_fingerprint(str(data), str(schema)) and len(first) == 64
    swapped = dataset_fingerprint(schema, data)
    data.write_bytes(b"age,bad\n31,0\n")
    changed_data = dataset_fingerprint(data, schema)
    data.write_bytes(b"age,bad\n30,0\n")
    schema.write_bytes(b"[columns] \n")
    changed_schema = dataset_fingerprint(data, schema)
    assert len({first, swapped, changed_data, changed_schema}) == 4


# --- the issue: a restart with a fresh ledger path -----------------------------------------------


def test_restarted_partner_with_a_fresh_ledger_is_refused_once_the_lifetime_budget_is_spent(
        tmp_path: Path, key: Ed25519PrivateKey, plan: Plan) -> None:
    path = tmp_path / "bank.odometer.jsonl"
    odometer = open_odometer(path, key)
    # Run A, ledger A: the plan (2 rounds) fits the lifetime budget; both rounds are reserved.
    assert odometer.fits(plan.events()).allowed
    run_rounds(odometer, plan, "run-1", range(1, 3), tmp_path / "ledger-A.jsonl")
    spent = odometer.spent()
    assert 0.99 < spent <= 1.0

    # Restart in the same run with ledger B: the fresh ledger holds nothing, so the run budget
    # alone would let it spend ε 1 again (the bug); the odometer, whatever the ledger, refuses.
    ledger_b = PartnerLedger(tmp_path / "ledger-B.jsonl", key, "bank", "run-1")
    assert ledger_b.events() == []
    restarted = open_odometer(path, key)
    assert restarted.spent() == pytest.approx(spent)
    decision = restarted.fits(plan.events())
    assert not decision.allowed
    assert decision.epsilon_spent == pytest.approx(spent)
    assert decision.epsilon_after > 1.0 and "lifetime privacy budget" in decision.reason
    before = path.read_bytes()
    with pytest.raises(LifetimeBudgetExceeded, match="lifetime budget 1"):
        restarted.record(run_id="run-1", server_round=4, release=RELEASE_DP_SGD,
                         event=plan.round_event, ledger_path=str(ledger_b.path))
    assert path.read_bytes() == before  # nothing reserved

    # A new run with yet another ledger is refused just the same.
    assert not open_odometer(path, key).fits([plan.round_event]).allowed


def test_releases_of_every_run_compose_into_one_lifetime_epsilon(
        tmp_path: Path, key: Ed25519PrivateKey, plan: Plan) -> None:
    path = tmp_path / "odometer.jsonl"
    odometer = open_odometer(path, key, lifetime=1.5)
    run_rounds(odometer, plan, "run-1", range(1, 3), tmp_path / "a.jsonl")
    assert odometer.fits(plan.events()).allowed
    run_rounds(open_odometer(path, key, lifetime=1.5), plan, "run-2", range(1, 3),
               tmp_path / "b.jsonl")
    count = SubsampledGaussianEvent(1.0, 40.0, 1, 1.0)  # a one-shot Gaussian release
    odometer = open_odometer(path, key, lifetime=1.5)
    odometer.record(run_id="run-3", server_round=1, release=RELEASE_COUNT, event=count,
                    ledger_path=str(tmp_path / "c.jsonl"))
    events = [plan.round_event] * 4 + [count]
    assert odometer.events() == events
    composed = composed_epsilon(events, delta=DELTA)
    assert odometer.spent() == pytest.approx(composed)
    # More than one run's ε 1, less than their sum (RDP composes sub-additively), and a third
    # run would take it past the lifetime budget.
    assert 1.0 < composed < 1.5 < composed_epsilon(events + plan.events(), delta=DELTA)
    assert not odometer.fits(plan.events()).allowed

    entries = lines_of(path)
    assert [(e["run_id"], e["round"], e["release"]) for e in entries] == [
        ("run-1", 1, "dp-sgd"), ("run-1", 2, "dp-sgd"), ("run-2", 1, "dp-sgd"),
        ("run-2", 2, "dp-sgd"), ("run-3", 1, "count")]
    assert entries[-1]["epsilon_lifetime_cumulative"] == pytest.approx(composed)
    assert entries[-1]["ledger_path"] == str(tmp_path / "c.jsonl")
    assert all(set(e) == ODOMETER_FIELDS and e["kind"] == ODOMETER_KIND for e in entries)
    assert entries[-1]["mechanism"] == {"name": "subsampled_gaussian", "sampling": "poisson",
                                        "sample_rate": 1.0, "noise_multiplier": 40.0,
                                        "steps": 1, "clipping_norm": 1.0}
    lines, problems = read_lines(path)
    assert problems == [] and check_odometer(
        path, lines, {fingerprint(key.public_key()): ("bank", key.public_key())}) == []


def test_a_release_is_reserved_before_it_happens_and_survives_a_restart(
        tmp_path: Path, key: Ed25519PrivateKey, plan: Plan) -> None:
    path = tmp_path / "odometer.jsonl"
    entry = open_odometer(path, key).record(run_id="run-1", server_round=1,
                                            release=RELEASE_DP_SGD, event=plan.round_event,
                                            ledger_path="ledger.jsonl")
    # The entry is on disk when record() returns: a crash during training over-counts.
    assert lines_of(path) == [entry]
    assert open_odometer(path, key).events() == [plan.round_event]
    with pytest.raises(ValueError, match="at least one step"):
        open_odometer(path, key).record(run_id="run-1", server_round=2, release="dp-sgd",
                                        event=replace(plan.round_event, steps=0),
                                        ledger_path="ledger.jsonl")


def test_two_nodes_sharing_an_odometer_cannot_both_spend_what_is_left(
        tmp_path: Path, key: Ed25519PrivateKey, plan: Plan) -> None:
    path = tmp_path / "odometer.jsonl"
    first, second = open_odometer(path, key), open_odometer(path, key)
    run_rounds(first, plan, "run-1", range(1, 3), tmp_path / "a.jsonl")
    # `second` was opened before: it re-reads (and re-verifies) the file before deciding.
    assert not second.fits([plan.round_event]).allowed
    with pytest.raises(LifetimeBudgetExceeded):
        second.record(run_id="run-2", server_round=1, release=RELEASE_DP_SGD,
                      event=plan.round_event, ledger_path=str(tmp_path / "b.jsonl"))
    assert len(lines_of(path)) == 2


def test_interleaved_writers_keep_one_valid_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "odometer.jsonl"
    small = SubsampledGaussianEvent(0.01, 5.0, 1, 1.0)
    first, second = open_odometer(path, key), open_odometer(path, key)
    for server_round, node in enumerate([first, second, first, second], start=1):
        node.record(run_id=f"run-{id(node)}", server_round=server_round, release="dp-sgd",
                    event=small, ledger_path="x")
    assert [e["seq"] for e in lines_of(path)] == [0, 1, 2, 3]
    assert len(open_odometer(path, key).events()) == 4


# --- refusals on open --------------------------------------------------------------------------


@pytest.fixture
def used(tmp_path: Path, key: Ed25519PrivateKey, plan: Plan) -> Path:
    """An odometer with two honest reservations (run-1 rounds 1-2), lifetime budget 1."""
    path = tmp_path / "odometer.jsonl"
    run_rounds(open_odometer(path, key), plan, "run-1", range(1, 3), tmp_path / "a.jsonl")
    return path


@pytest.mark.parametrize(("lifetime", "delta"), [(2.0, DELTA), (1.0, 1e-6)])
def test_a_changed_lifetime_budget_is_refused(used: Path, key: Ed25519PrivateKey,
                                              lifetime: float, delta: float) -> None:
    with pytest.raises(LedgerError, match="a lifetime budget cannot change"):
        open_odometer(used, key, lifetime=lifetime, delta=delta)


def test_an_odometer_of_another_data_set_or_partner_is_refused(
        used: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(LedgerError, match="one odometer counts one data set"):
        open_odometer(used, key, dataset="cd" * 32)
    with pytest.raises(LedgerError, match="partner 'bank'"):
        open_odometer(used, key, partner="lender")


def test_an_invalid_lifetime_budget_names_its_key(tmp_path: Path,
                                                  key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="lifetime-epsilon"):
        open_odometer(tmp_path / "o.jsonl", key, lifetime=0.0)


def _rewrite_sigma(entries: list[dict]) -> list[dict]:
    entries[1]["mechanism"]["noise_multiplier"] *= 2  # log more noise than was used
    return entries


@pytest.mark.parametrize(("tamper", "code"), [
    (_rewrite_sigma, "bad-signature"),
    (lambda entries: entries[1:], "broken-chain"),
    (lambda entries: [entries[1], entries[0]], "seq"),
    (lambda entries: [{**entries[0], "extra": 1}, entries[1]], "fields"),
])
def test_tampering_with_the_odometer_is_found_on_open(used: Path, key: Ed25519PrivateKey,
                                                      tamper, code: str) -> None:
    write_lines(used, tamper(lines_of(used)))
    with pytest.raises(LedgerError, match=rf"\[{code}\]"):
        open_odometer(used, key)


def test_an_odometer_rewritten_with_another_key_is_refused(used: Path,
                                                           key: Ed25519PrivateKey) -> None:
    other = generate_signing_key()
    write_lines(used, resign_and_rechain(lines_of(used), [other, other], 0))
    with pytest.raises(LedgerError, match=r"\[unknown-key\]"):
        open_odometer(used, key)


def test_a_cut_or_truncated_odometer_is_refused(used: Path, key: Ed25519PrivateKey,
                                                plan: Plan) -> None:
    live = open_odometer(used, key)
    raw = used.read_bytes()
    used.write_bytes(raw[:-10])  # a crash mid-write
    with pytest.raises(LedgerError, match=r"\[truncated\]"):
        open_odometer(used, key)
    # Dropping whole entries at the tail verifies on its own, but not to a node that read them.
    used.write_bytes(b"".join(line + b"\n" for line in raw.splitlines()[:1]))
    with pytest.raises(LedgerError, match="truncated or replaced"):
        live.fits([plan.round_event])
