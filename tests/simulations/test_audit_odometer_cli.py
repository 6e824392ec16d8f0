"""`fedcredit audit verify/report --odometer`: partners' lifetime odometers in the audit CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.audit_fixtures import Federation, build_federation, make_keys, make_plans
from tests.odometer_fixtures import odometer_paths, write_odometers


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return make_keys()


def federation(root: Path, keys: dict[str, Ed25519PrivateKey],
               skip: frozenset[tuple[str, int]] = frozenset()) -> Federation:
    fed = build_federation(root, keys=keys, plans=make_plans(), rounds={"bank": 3})
    write_odometers(fed, skip=skip)
    return fed


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory,
          keys: dict[str, Ed25519PrivateKey]) -> Federation:
    return federation(tmp_path_factory.mktemp("cli") / "fed", keys)


def args(fed: Federation, odometers: list[Path]) -> list[Any]:
    return [*fed.ledger_paths, "--keys", fed.keys_dir, "--receipts", fed.receipts,
            *[a for path in odometers for a in ("--odometer", path)]]


def test_verify_accepts_one_odometer_per_partner(clean: Federation, invoke) -> None:
    output = invoke("verify", *args(clean, odometer_paths(clean)))
    assert output.exit_code == 0, output.output
    assert "lifetime privacy odometers" in output.output
    assert re.search(r"^OK: .*3 odometer\(s\) verify", output.output, re.MULTILINE), output.output
    assert "no odometer given for" not in output.output


def test_verify_names_partners_without_an_odometer(clean: Federation, invoke) -> None:
    output = invoke("verify", *args(clean, odometer_paths(clean)[:1]))
    assert output.exit_code == 0, output.output
    assert "no odometer given for: lender, ecommerce" in output.output


def test_a_release_missing_from_the_odometer_fails_the_audit(
        tmp_path: Path, keys: dict[str, Ed25519PrivateKey], invoke) -> None:
    fed = federation(tmp_path / "fed", keys, skip=frozenset({("bank", 3)}))
    output = invoke("verify", *args(fed, odometer_paths(fed)))
    assert output.exit_code == 1, output.output
    entries = [json.loads(line) for line in fed.ledgers["bank"].read_bytes().splitlines()]
    line = next(n for n, e in enumerate(entries, 1) if e["round"] == 3 and e["event"] == "train")
    assert f"{fed.ledgers['bank']}:{line}: [release-not-in-odometer]" in output.output
    data = json.loads(invoke("verify", *args(fed, odometer_paths(fed)), "--json").output)
    assert data["ok"] is False
    assert [o["partner"] for o in data["odometers"]] == ["bank", "lender", "ecommerce"]
    assert data["odometers"][0]["ledgers_checked"] == [str(fed.ledgers["bank"])]


def test_a_missing_odometer_file_is_a_usage_error(clean: Federation, invoke,
                                                  tmp_path: Path) -> None:
    output = invoke("verify", *args(clean, [tmp_path / "nope.jsonl"]))
    assert output.exit_code == 2, output.output


def test_report_has_an_odometer_section(clean: Federation, invoke, tmp_path: Path) -> None:
    out = tmp_path / "audit.html"
    output = invoke("report", *args(clean, odometer_paths(clean)), "--out", out)
    assert output.exit_code == 0, output.output
    page = out.read_text(encoding="utf-8")
    assert "<h2>Lifetime privacy odometers</h2>" in page
    for path in odometer_paths(clean):
        assert str(path) in page
