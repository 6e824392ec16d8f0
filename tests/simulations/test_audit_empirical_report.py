"""`fedcredit audit empirical --out --signing-key` and `audit report --empirical`: a signed
empirical-audit result, shown in audit.html beside the ledgers with its signature status.

One short audit run (3 rounds x 1 local epoch, 200 canaries) serves the module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from common.privacy.audit.empirical_result import load_result, sign_result, verify_result
from common.privacy.crypto import generate_signing_key, load_public_key, write_key_pair
from simulations.audit.cli import audit_app
from tests.audit_fixtures import Federation, build_federation, make_keys, make_plans

SHORT_AUDIT = ("--scenario", "credit_data", "--partner", "bank", "--epsilon", "3",
               "--rounds", "3", "--local-epochs", "1", "--canaries", "200", "--seed", "3")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return build_federation(tmp_path_factory.mktemp("fed") / "fed", keys=make_keys(),
                            plans=make_plans(), rounds={"bank": 2, "lender": 2, "ecommerce": 2})


@pytest.fixture(scope="module")
def auditor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The auditor's key pair, in the format `fedcredit keys new` writes."""
    return write_key_pair(generate_signing_key(), tmp_path_factory.mktemp("auditor"), "auditor")


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, auditor: tuple[Path, Path]):
    """(signed result path, CLI output) of one short honest audit run."""
    out = tmp_path_factory.mktemp("empirical") / "bank.json"
    output = CliRunner(env={"COLUMNS": "400"}).invoke(
        audit_app, ["empirical", *SHORT_AUDIT, "--out", str(out),
                    "--signing-key", str(auditor[0])])
    return out, output


def test_empirical_writes_a_signed_result(audited, auditor) -> None:
    path, output = audited
    assert output.exit_code == 0, output.output
    assert "membership inference (loss-threshold" in output.output
    assert f"signed result: {path}" in output.output
    document = load_result(path)
    verify_result(document, load_public_key(auditor[1]))
    assert document["parameters"]["run"]["num_server_rounds"] == 3
    assert document["parameters"]["canaries"] == 200
    result = document["result"]
    assert result["steps"] == 30 and result["partner"] == "bank"
    assert result["epsilon_lower_bound"] <= result["epsilon_accounted"]
    for point in result["membership"]["points"]:
        assert 0.0 <= point["tpr"] <= 1.0 and 0.0 <= point["ceiling"] <= 1.0


def test_out_and_signing_key_go_together(invoke, auditor, tmp_path: Path) -> None:
    for extra in (["--out", tmp_path / "r.json"], ["--signing-key", auditor[0]],
                  ["--out", tmp_path / "r.json", "--signing-key", auditor[1]]):  # a public key
        output = invoke("empirical", *SHORT_AUDIT, *extra)
        assert output.exit_code == 2, (extra, output.output)
        assert "Traceback" not in output.output and "error:" in output.output
    assert not (tmp_path / "r.json").exists()


def _tamper(source: Path, target: Path, **changes: Any) -> Path:
    document = json.loads(source.read_text())
    document["result"].update(changes)
    target.write_text(json.dumps(document, indent=2))
    return target


def test_report_shows_the_bound_beside_the_ledgers(fed: Federation, audited, auditor, invoke,
                                                   tmp_path: Path) -> None:
    path, _ = audited
    result = load_result(path)["result"]
    out = tmp_path / "audit.html"
    output = invoke("report", *fed.ledger_paths, "--keys", fed.keys_dir, "--receipts",
                    fed.receipts, "--out", out, "--empirical", path,
                    "--empirical-key", auditor[1])
    assert output.exit_code == 0, output.output
    assert re.search(r"empirical audit .*bank.json \(bank\): signature verifies", output.output)
    page = out.read_text(encoding="utf-8")
    assert "<h2>Empirical privacy audit</h2>" in page
    assert "EMPIRICAL AUDIT: no finding" in page and "signature verified" in page
    assert f"{result['epsilon_lower_bound']:.2f} (95%)" in page
    assert f"{result['epsilon_accounted']:.3f}" in page
    mia = result["membership"]
    assert f"{mia['auc']:.3f}" in page
    assert f"{mia['points'][0]['tpr']:.2%} ({mia['points'][0]['ceiling']:.2%})" in page
    assert "LiRA is not built" in page and "TAMPERED" not in page


def test_report_shows_a_tampered_result_as_unverified(fed: Federation, audited, auditor, invoke,
                                                      tmp_path: Path) -> None:
    path, _ = audited
    # a forger lowers the bound, and a result signed by someone else claims no finding
    tampered = _tamper(path, tmp_path / "tampered.json", epsilon_lower_bound=0.01)
    forged = tmp_path / "forged.json"
    document = load_result(path)
    stranger = generate_signing_key()
    from common.privacy.audit.empirical import EmpiricalAudit, GuessResult

    fields = {k: v for k, v in document["result"].items() if k != "membership"}
    fields["sweep"] = tuple(GuessResult(**g) for g in fields["sweep"])
    forged.write_text(json.dumps(sign_result(EmpiricalAudit(**fields), stranger, {})))
    out = tmp_path / "audit.html"
    output = invoke("report", *fed.ledger_paths, "--keys", fed.keys_dir, "--out", out,
                    "--empirical", tampered, "--empirical", forged, "--empirical-key",
                    auditor[1])
    assert output.exit_code == 1, output.output
    assert "tampered.json (bank): SIGNATURE DOES NOT VERIFY" in output.output
    assert "forged.json (bank): SIGNATURE DOES NOT VERIFY" in output.output
    page = out.read_text(encoding="utf-8")
    assert "EMPIRICAL AUDIT: 2 not verified" in page
    assert page.count("TAMPERED or foreign key: signature does not verify") >= 4  # rows, cards
    assert "signature verified" not in page
    assert "0.01 (95%)" in page  # the figure is shown, marked as not verified


def test_an_unreadable_result_is_a_usage_error(fed: Federation, invoke, tmp_path: Path) -> None:
    (tmp_path / "not.json").write_text("{not json")
    output = invoke("report", *fed.ledger_paths, "--keys", fed.keys_dir, "--out",
                    tmp_path / "audit.html", "--empirical", tmp_path / "not.json")
    assert output.exit_code == 2, output.output
    assert "not.json" in output.output and "Traceback" not in output.output
    assert not (tmp_path / "audit.html").exists()
