"""`fedcredit audit replay --out --signing-key` and `audit report --replay`: a signed replay
result, shown in audit.html under its partner ("Replayed rounds"), checked against the audited
ledger's entry, with its signature status. One tiny deployed partner (2 rounds) serves the module.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from common.data.tables import Split
from common.privacy.audit.empirical_result import load_result, verify_result, write_result
from common.privacy.audit.replay import DATA_MISMATCH, replay_kind, replay_round, sign_replay
from common.privacy.crypto import (
    generate_signing_key,
    load_private_key,
    load_public_key,
    write_key_pair,
)
from common.privacy.ledger import entry_hash, read_lines
from simulations.audit.cli import audit_app
from tests.common.privacy.test_replay import RUN_ID, _train_partner

SCHEMA = "common/data/credit_data.toml"


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _train_partner(tmp_path_factory.mktemp("replayed"))


@pytest.fixture(scope="module")
def auditor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_key_pair(generate_signing_key(), tmp_path_factory.mktemp("auditor"), "auditor")


def _replay_args(partner: dict, server_round: int) -> list[str]:
    return [str(partner["ledger"]), "--round", str(server_round), "--data", str(partner["csv"]),
            "--schema", SCHEMA, "--opening", str(partner["openings"]),
            "--keys", str(partner["keys"])]


@pytest.fixture(scope="module")
def replayed(partner: dict, auditor: tuple[Path, Path], tmp_path_factory) -> Path:
    """Round 1 replayed by an auditor on the partner's premises, signed with the auditor's key
    (the partner's key derives the split)."""
    out = tmp_path_factory.mktemp("results") / "round-1.json"
    output = CliRunner(env={"COLUMNS": "400"}).invoke(audit_app, [
        "replay", *_replay_args(partner, 1), "--split-key", str(partner["keys"] / "bank.key"),
        "--signing-key", str(auditor[0]), "--out", str(out)])
    assert output.exit_code == 0, output.output
    assert "MATCH" in output.output and f"signed result: {out}" in output.output
    return out


def _report(invoke, partner: dict, out: Path, *extra: Any) -> tuple[Result, str]:
    output = invoke("report", partner["ledger"], "--keys", partner["keys"], "--out", out, *extra)
    return output, out.read_text(encoding="utf-8") if out.exists() else ""


def test_replay_writes_a_signed_result(partner: dict, replayed: Path, auditor) -> None:
    document = load_result(replayed, replay_kind())
    verify_result(document, load_public_key(auditor[1]), replay_kind())
    assert document["kind"] == "fedcredit-replay" and document["format"] == 1
    lines, _ = read_lines(partner["ledger"])
    entry = next(e for _, e in lines if e["event"] == "train" and e["round"] == 1)
    replay = document["replay"]
    assert replay["entry_sha256"] == entry_hash(entry) and replay["run_id"] == RUN_ID
    assert replay["partner"] == "bank" and replay["ledger"] == str(partner["ledger"])
    assert replay["match"] is True and replay["failed_check"] is None
    assert replay["update_replayed"] == replay["update_logged"] == entry["update_sent_sha256"]
    assert replay["receipt_matched"] is None and replay["signatures_checked"] is True
    assert document["created_utc"].endswith("Z") and document["fedcredit_version"]
    assert document["parameters"]["round"] == 1


def test_out_and_signing_key_go_together(partner: dict, invoke, tmp_path: Path) -> None:
    output = invoke("replay", *_replay_args(partner, 1), "--out", tmp_path / "r.json")
    assert output.exit_code == 2 and "go together" in output.output, output.output
    assert not (tmp_path / "r.json").exists()


def test_report_shows_a_matching_replay(partner: dict, replayed: Path, auditor, invoke,
                                        tmp_path: Path) -> None:
    output, page = _report(invoke, partner, tmp_path / "audit.html", "--replay", replayed,
                           "--replay-key", auditor[1])
    assert output.exit_code == 0, output.output
    assert "(bank round 1): signature verifies" in output.output
    assert "<h3>Replayed rounds</h3>" in page and "REPLAYED ROUNDS: every replay matches" in page
    assert "matches the ledger's entry at round 1" in page
    assert '<span class="tag ok">match</span>' in page and "signature verified" in page
    assert "MISMATCH" not in page and "does not belong" not in page


def test_report_shows_a_tampered_result_as_unverified(partner: dict, replayed: Path, auditor,
                                                      invoke, tmp_path: Path) -> None:
    document = json.loads(replayed.read_text())
    document["replay"]["message"] = "edited"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document))
    output, page = _report(invoke, partner, tmp_path / "audit.html", "--replay", tampered,
                           "--replay-key", auditor[1])
    assert output.exit_code == 1, output.output
    assert "tampered.json (bank round 1): SIGNATURE DOES NOT VERIFY" in output.output
    assert "REPLAYED ROUNDS: 1 not verified" in page
    assert "TAMPERED or foreign key" in page and "signature verified" not in page


def test_report_fails_on_a_mismatch_and_on_another_ledgers_result(
        partner: dict, tmp_path: Path, invoke) -> None:
    """A data mismatch signed by the partner (verified with its key in --keys), and a validly
    signed match of an entry the audited ledger does not hold."""
    train = partner["data"].train
    features = train.features.copy()
    features[0, 0] += 1.0
    mismatch = replay_round(partner["ledger"], 2, Split(features, train.labels),
                            partner["openings"])
    assert mismatch.reason == DATA_MISMATCH
    key = load_private_key(partner["keys"] / "bank.key")
    write_result(tmp_path / "mismatch.json", sign_replay(mismatch, key, {}))
    foreign = dataclasses.replace(mismatch, reason="match", entry_sha256="ab" * 32,
                                  ledger="elsewhere/bank.ledger.jsonl")
    write_result(tmp_path / "foreign.json", sign_replay(foreign, key, {}))
    output, page = _report(invoke, partner, tmp_path / "audit.html",
                           "--replay", tmp_path / "mismatch.json")
    assert output.exit_code == 1, output.output
    assert "MISMATCH [data-mismatch]" in output.output
    assert "MISMATCH (data-mismatch)" in page and "matches the ledger's entry at round 2" in page
    assert "REPLAYED ROUNDS: 1 MISMATCH" in page and "signature verified (bank)" in page
    output, page = _report(invoke, partner, tmp_path / "audit2.html",
                           "--replay", tmp_path / "foreign.json")
    assert output.exit_code == 1, output.output
    assert "DOES NOT BELONG to the audited ledgers" in output.output
    assert "does not belong to this ledger" in page and "1 not of the audited ledgers" in page
