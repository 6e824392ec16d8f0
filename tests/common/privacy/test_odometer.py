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

from common.errors import DatasetNotRecognised, LedgerError, LifetimeBudgetExceeded
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
from common.privacy.record_index import INDEX_KIND, index_path
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


# --- the data set is its records, not its file's bytes --------------------------------------------


@pytest.fixture(scope="module")
def signing_key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from common.privacy.crypto import write_key_pair

    folder = tmp_path_factory.mktemp("keys")
    write_key_pair(generate_signing_key(), folder, "bank")
    return folder / "bank.key"


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One loan table as a lender re-saves, re-sorts and grows it, and a table of other loans."""
    from common.data.tables import bundled_path

    header, *rows = bundled_path("credit_data")[0].read_text().splitlines()
    first, later = rows[:200], rows[200:400]
    folder = tmp_path_factory.mktemp("versions")
    texts = {
        "original": "\n".join([header, *first]) + "\n",
        "crlf": "\r\n".join([header, *first]) + "\r\n",
        "reordered": "\n".join([header, *reversed(first)]) + "\n",
        "grown": "\n".join([header, *first, later[0]]) + "\n",
        "disjoint": "\n".join([header, *later]) + "\n",
    }
    for name, text in texts.items():
        (folder / f"{name}.csv").write_bytes(text.encode())
    return {name: folder / f"{name}.csv" for name in texts}


def partner_on(data: Path, odometer: Path, signing_key: Path, lifetime: float = 1.0):
    """A deployed partner's config: `data` under the bundled schema, no ledger, an odometer."""
    from common.config import PartnerConfig
    from common.data.tables import bundled_path

    return PartnerConfig(
        partner="bank",
        epsilon=1.0,
        delta=DELTA,
        data_path=str(data),
        schema_path=str(bundled_path("credit_data")[1]),
        signing_key=str(signing_key),
        odometer_path=str(odometer),
        lifetime_epsilon=lifetime,
    )


def spend_one_run(data: Path, odometer: Path, signing_key: Path, plan: Plan) -> float:
    """Run 1 on `data`: ~0.9998 of a lifetime budget of 1, reserved in the odometer."""
    from common.partner import open_privacy_logs

    _, first = open_privacy_logs(partner_on(data, odometer, signing_key), "run-1")
    assert first is not None
    run_rounds(first, plan, "run-1", range(1, 3), odometer.parent / "a.jsonl")
    assert 0.99 < first.spent() <= 1.0
    return first.spent()


@pytest.mark.parametrize("version", ["crlf", "reordered", "grown"])
def test_a_resaved_reordered_or_grown_file_is_the_same_data_set(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path], plan: Plan, version: str
) -> None:
    from common.partner import open_privacy_logs

    path = tmp_path / "bank.odometer.jsonl"
    spent = spend_one_run(versions["original"], path, signing_key_path, plan)
    _, again = open_privacy_logs(partner_on(versions[version], path, signing_key_path), "run-2")
    assert again is not None and again.spent() == pytest.approx(spent)
    assert not again.fits([plan.round_event]).allowed
    with pytest.raises(LifetimeBudgetExceeded, match="lifetime budget 1"):
        run_rounds(again, plan, "run-2", range(1, 2), tmp_path / "b.jsonl")


def test_three_runs_on_three_versions_spend_one_lifetime_budget(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path], plan: Plan
) -> None:
    """The finding: 3 runs of ~1 epsilon on a CRLF re-save, a re-sort and one appended loan of
    the same records, under a lifetime budget of 1: only the first may spend."""
    from common.partner import open_privacy_logs

    path = tmp_path / "bank.odometer.jsonl"
    spend_one_run(versions["crlf"], path, signing_key_path, plan)
    for run, version in enumerate(("reordered", "grown"), start=2):
        _, odometer = open_privacy_logs(
            partner_on(versions[version], path, signing_key_path), f"run-{run}"
        )
        assert odometer is not None
        with pytest.raises(LifetimeBudgetExceeded):
            run_rounds(odometer, plan, f"run-{run}", range(1, 3), tmp_path / f"{run}.jsonl")
    assert len(lines_of(path)) == 2


def test_a_file_sharing_no_record_is_refused_with_its_own_message(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path], plan: Plan
) -> None:
    from common.partner import open_privacy_logs

    path = tmp_path / "bank.odometer.jsonl"
    spend_one_run(versions["original"], path, signing_key_path, plan)
    index = index_path(path)
    before = index.read_bytes()
    with pytest.raises(DatasetNotRecognised) as info:
        open_privacy_logs(partner_on(versions["disjoint"], path, signing_key_path), "run-2")
    message = str(info.value)
    assert "shares none of its 200 records with the 200 records" in message
    assert "'odometer-path'" in message and "failed verification" not in message
    assert index.read_bytes() == before and len(lines_of(path)) == 2


def test_the_record_index_is_private_compact_and_the_union_of_every_version(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path], plan: Plan
) -> None:
    from common.partner import open_privacy_logs

    path = tmp_path / "bank.odometer.jsonl"
    spend_one_run(versions["original"], path, signing_key_path, plan)
    index = index_path(path)
    assert index == tmp_path / "bank.odometer.jsonl.records"
    assert index.stat().st_mode & 0o777 == 0o600
    header, body = index.read_bytes().split(b"\n", 1)
    dataset = lines_of(path)[0]["dataset_sha256"]
    assert json.loads(header) == {"kind": INDEX_KIND, "dataset_sha256": dataset}
    assert len(body) == 8 * 200  # 8 bytes a record, no data value
    for version in ("crlf", "reordered", "grown", "grown"):
        open_privacy_logs(partner_on(versions[version], path, signing_key_path), "run-2")
    assert len(index.read_bytes().split(b"\n", 1)[1]) == 8 * 201  # the appended loan, once
    # A version that shares only the appended loan with the first is still the data set.
    lines = versions["grown"].read_text().splitlines()
    latest = tmp_path / "latest.csv"
    latest.write_text("\n".join([lines[0], lines[-1]]) + "\n")
    _, odometer = open_privacy_logs(partner_on(latest, path, signing_key_path), "run-3")
    assert odometer is not None and odometer.dataset_sha256 == dataset


def test_with_nothing_recorded_another_data_set_may_take_the_odometer(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path]
) -> None:
    from common.partner import open_privacy_logs

    path = tmp_path / "bank.odometer.jsonl"
    _, first = open_privacy_logs(partner_on(versions["original"], path, signing_key_path), "r")
    _, other = open_privacy_logs(partner_on(versions["disjoint"], path, signing_key_path), "r")
    assert first is not None and other is not None and not path.exists()
    assert other.dataset_sha256 != first.dataset_sha256 and other.spent() == 0.0


def test_an_odometer_written_before_records_were_indexed_is_carried_over(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path], plan: Plan
) -> None:
    from common.data.tables import bundled_path
    from common.partner import open_privacy_logs
    from common.privacy.crypto import load_private_key

    path, schema = tmp_path / "bank.odometer.jsonl", bundled_path("credit_data")[1]
    old = dataset_fingerprint(versions["original"], schema)  # the file's bytes, as before
    run_rounds(
        PrivacyOdometer(path, load_private_key(signing_key_path), "bank", old, 1.0, DELTA),
        plan,
        "run-1",
        range(1, 3),
        tmp_path / "a.jsonl",
    )
    with pytest.raises(DatasetNotRecognised, match="written before fedcredit identified"):
        open_privacy_logs(partner_on(versions["crlf"], path, signing_key_path), "run-2")
    assert not index_path(path).read_bytes()  # nothing indexed from a file it cannot place
    # On the file it was written with, its records are indexed under its old identity; from
    # then on the re-saved file is recognised too.
    for version in ("original", "crlf"):
        _, odometer = open_privacy_logs(
            partner_on(versions[version], path, signing_key_path), "run-2"
        )
        assert odometer is not None and odometer.dataset_sha256 == old
        assert not odometer.fits([plan.round_event]).allowed


def test_an_index_beside_another_odometer_is_refused(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path], plan: Plan
) -> None:
    from common.partner import open_privacy_logs

    path = tmp_path / "bank.odometer.jsonl"
    spend_one_run(versions["original"], path, signing_key_path, plan)
    other = tmp_path / "other" / "bank.odometer.jsonl"
    spend_one_run(versions["disjoint"], other, signing_key_path, plan)
    index_path(other).write_bytes(index_path(path).read_bytes())
    with pytest.raises(LedgerError, match="an index belongs to the odometer it was written"):
        open_privacy_logs(partner_on(versions["original"], other, signing_key_path), "run-2")


def test_an_odometer_that_fails_verification_indexes_nothing(
    tmp_path: Path, signing_key_path: Path, versions: dict[str, Path], plan: Plan
) -> None:
    from common.partner import open_privacy_logs

    path = tmp_path / "bank.odometer.jsonl"
    spend_one_run(versions["original"], path, signing_key_path, plan)
    write_lines(path, _rewrite_sigma(lines_of(path)))
    before = index_path(path).read_bytes()
    with pytest.raises(LedgerError, match=r"failed verification.*\[bad-signature\]"):
        open_privacy_logs(partner_on(versions["grown"], path, signing_key_path), "run-2")
    assert index_path(path).read_bytes() == before
