"""Honest lifetime odometers beside a federation built by `tests.audit_fixtures`."""

from __future__ import annotations

from pathlib import Path

from common.privacy.crypto import sha256_hex
from common.privacy.ledger import ledger_event
from common.privacy.odometer import RELEASE_COUNT, RELEASE_DP_SGD, PrivacyOdometer
from tests.audit_fixtures import DELTA, PARTNERS, Federation

LIFETIME_SCALE = 2.0
"""Each partner's lifetime budget, as a multiple of its run budget."""


def dataset_of(partner: str) -> str:
    """A stand-in data set fingerprint of a partner."""
    return sha256_hex(f"dataset/{partner}".encode())


def odometer_path(fed: Federation, partner: str) -> Path:
    """Where `write_odometers` puts a partner's odometer (inside the federation's root)."""
    return fed.root / f"{partner}.odometer.jsonl"


def odometer_paths(fed: Federation) -> list[Path]:
    """Every partner's odometer, in partner order."""
    return [odometer_path(fed, name) for name in PARTNERS]


def write_odometers(fed: Federation, *,
                    skip: frozenset[tuple[str, int]] = frozenset()) -> list[Path]:
    """Reserve every release of every ledger of `fed` in its partner's odometer, as an honest
    partner does before it trains, except the (partner, round) pairs in `skip`."""
    for name, entries in fed.entries.items():
        odometer = PrivacyOdometer(odometer_path(fed, name), fed.keys[name], name,
                                   dataset_of(name),
                                   fed.plans[name].epsilon_budget * LIFETIME_SCALE, DELTA)
        for entry in entries:
            if entry["mechanism"]["steps"] > 0 and (name, entry["round"]) not in skip:
                odometer.record(run_id=entry["run_id"], server_round=entry["round"],
                                release=(RELEASE_COUNT if entry["event"] == "count"
                                         else RELEASE_DP_SGD), event=ledger_event(entry),
                                ledger_path=str(fed.ledgers[name]))
    return odometer_paths(fed)
