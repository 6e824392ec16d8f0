"""The audit of a ledger's noisy-count entry: composed into ε, first and once, one Gaussian step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.privacy.accounting import rdp_epsilon
from common.privacy.audit import IndependentAccountant, verify
from tests.audit_fixtures import (
    DELTA,
    build_federation,
    dump,
    make_keys,
    make_plans,
    read_entries,
    resign_and_rechain,
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    keys, plans = make_keys(), make_plans()
    return build_federation(tmp_path_factory.mktemp("count") / "fed", keys=keys, plans=plans,
                            rounds={"bank": 2, "lender": 2, "ecommerce": 2})


def _codes(path: Path, keys_dir: Path) -> set[tuple[int, str]]:
    result = verify([path], keys_dir, accountant=IndependentAccountant())
    return {(f.line, f.code) for f in result.findings}


def test_the_count_is_composed_into_every_recomputed_epsilon(federation) -> None:
    result = verify(federation.ledger_paths, federation.keys_dir, federation.receipts,
                    accountant=IndependentAccountant())
    assert result.ok, result.findings
    for partner in result.partners:
        plan = federation.plans[partner.partner]
        count, *rounds = partner.entries
        assert (count.event, count.sample_rate, count.steps) == ("count", 1.0, 1)
        assert count.epsilon_rdp == pytest.approx(rdp_epsilon([plan.count_event], delta=DELTA),
                                                  rel=0.01)
        with_count = rdp_epsilon([plan.count_event, plan.round_event], delta=DELTA)
        assert rounds[0].epsilon_rdp == pytest.approx(with_count, rel=0.01)
        assert rounds[0].epsilon_rdp > rdp_epsilon([plan.round_event], delta=DELTA)


def test_a_count_that_is_not_the_first_entry_is_reported(federation, tmp_path: Path) -> None:
    fed = federation.copy_to(tmp_path / "fed")
    path = fed.ledgers["bank"]
    entries = [json.loads(line) for line in read_entries(path)]
    second_count = {**entries[0], "round": entries[-1]["round"] + 1}
    entries.append(second_count)  # a second count release, later in the run
    fixed = resign_and_rechain(entries, [fed.keys["bank"]] * len(entries), len(entries) - 1)
    path.write_bytes(b"".join(line + b"\n" for line in dump(fixed)))
    assert (len(entries), "count-order") in _codes(path, fed.keys_dir)


def test_a_count_logged_as_anything_but_one_gaussian_step_is_reported(
        federation, tmp_path: Path) -> None:
    fed = federation.copy_to(tmp_path / "fed")
    path = fed.ledgers["lender"]
    entries = [json.loads(line) for line in read_entries(path)]
    entries[0]["mechanism"]["sample_rate"] = 0.5  # would understate the count's cost
    fixed = resign_and_rechain(entries, [fed.keys["lender"]] * len(entries), 0)
    path.write_bytes(b"".join(line + b"\n" for line in dump(fixed)))
    assert (1, "bad-mechanism") in _codes(path, fed.keys_dir)


def test_a_ledger_that_leaves_out_its_count_is_reported(federation, tmp_path: Path) -> None:
    """Dropping the count (and re-chaining) would understate ε by the count's share."""
    fed = federation.copy_to(tmp_path / "fed")
    path = fed.ledgers["ecommerce"]
    entries = [json.loads(line) for line in read_entries(path)][1:]
    for seq, entry in enumerate(entries):
        entry["seq"] = seq
    fixed = resign_and_rechain(entries, [fed.keys["ecommerce"]] * len(entries), 0)
    path.write_bytes(b"".join(line + b"\n" for line in dump(fixed)))
    assert (1, "missing-count") in _codes(path, fed.keys_dir)


def test_a_count_whose_sigma_differs_from_the_plan_is_reported(federation,
                                                               tmp_path: Path) -> None:
    fed = federation.copy_to(tmp_path / "fed")
    path = fed.ledgers["bank"]
    entries = [json.loads(line) for line in read_entries(path)]
    entries[0]["mechanism"]["noise_multiplier"] *= 10  # a count made to look cheaper
    fixed = resign_and_rechain(entries, [fed.keys["bank"]] * len(entries), 0)
    path.write_bytes(b"".join(line + b"\n" for line in dump(fixed)))
    assert {(line, "count-mismatch") for line in range(1, len(entries) + 1)} <= _codes(
        path, fed.keys_dir)
