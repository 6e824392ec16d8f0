"""The auditor's tools: `common.privacy.audit.verify`, the `audit` CLI and the HTML report.

Every ledger here is written by honest code (PartnerLedger, ReceiptLog, calibrate_plan, the
partner's RDP accountant) and then tampered with the way a dishonest partner or coordinator
could; each test asserts the named finding at the tampered line and the CLI's exit status.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
from typer.testing import CliRunner

from common.errors import AuditInputError
from common.privacy.accounting import SubsampledGaussianEvent, rdp_epsilon
from common.privacy.audit import AuditResult, IndependentAccountant, verify
from common.privacy.budget import PrivacyPlan
from common.privacy.ledger import Finding, ReceiptLog
from simulations.audit.cli import audit_app
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

Invoke = Callable[..., Result]


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    """Signing keys of the three partners and the coordinator (shared by the module)."""
    return make_keys()


@pytest.fixture(scope="module")
def plans() -> dict[str, PrivacyPlan]:
    """Each partner's calibrated plan (σ from its budget)."""
    return make_plans()


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Ed25519PrivateKey],
              plans: dict[str, PrivacyPlan]) -> Federation:
    """Honest run-A: bank trains rounds 1-3; lender and ecommerce also refuse round 4."""
    return build_federation(tmp_path_factory.mktemp("clean") / "fed", keys=keys, plans=plans,
                            rounds={"bank": 3})


@pytest.fixture
def fed(clean_set: Federation, tmp_path: Path) -> Federation:
    """A private copy of the clean federation to tamper with."""
    return clean_set.copy_to(tmp_path / "fed")


def cli_args(fed: Federation, *, receipts: bool = True) -> list[Any]:
    """verify's arguments for every ledger of `fed` (and its receipts)."""
    return [*fed.ledger_paths, "--keys", fed.keys_dir,
            *(["--receipts", fed.receipts] if receipts else [])]


def audit(fed: Federation, accountant: IndependentAccountant, *,
          receipts: bool = True) -> AuditResult:
    """verify() of the whole federation."""
    return verify(fed.ledger_paths, fed.keys_dir, fed.receipts if receipts else None,
                  accountant=accountant)


def found(result: AuditResult, path: Path, code: str | None = None) -> list[Finding]:
    """Findings about `path` (of `code`, when given)."""
    return [f for f in result.findings
            if f.path == str(path) and (code is None or f.code == code)]


def assert_reported(output: Result, path: Path, line: int, code: str) -> None:
    """The CLI failed (exit 1) and its output names the file, the line and the code."""
    assert output.exit_code == 1, output.output
    assert f"{path}:{line}: [{code}]" in output.output, output.output
    assert re.search(r"^FAILED: \d+ findings$", output.output, re.MULTILINE), output.output


def entries_of(path: Path) -> list[dict[str, Any]]:
    """Parsed entries of a log."""
    return [json.loads(line) for line in read_entries(path)]


# --- a clean federation -------------------------------------------------------------------------


def test_clean_federation_verifies_and_recomputed_rdp_matches_claims(
        clean_set: Federation, tmp_path: Path) -> None:
    # The real CLI path, with its own (fresh) dp_accounting recomputer.
    output = CliRunner(env={"COLUMNS": "400"}).invoke(audit_app,
                                                      ["verify", *map(str, cli_args(clean_set))])
    assert output.exit_code == 0, output.output
    assert re.search(r"^OK: 3 ledgers, 14 entries verify, 9 receipts", output.output,
                     re.MULTILINE), output.output
    result = audit(clean_set, IndependentAccountant())
    assert result.ok and result.findings == []
    assert result.receipts_checked == 9 and result.run_id == "run-A"
    assert [(p.partner, p.rounds_trained, p.refusals) for p in result.partners] == [
        ("bank", 3, 0), ("lender", 3, 1), ("ecommerce", 3, 1)]
    for partner in result.partners:
        for entry in partner.entries:
            # Claims are by the prv accountant: at most RDP, at least PLD less its tolerance.
            assert entry.accountant == "prv"
            assert entry.epsilon_claimed <= entry.epsilon_rdp * (1 + 1e-9)
            assert entry.epsilon_claimed >= entry.epsilon_independent - entry.epsilon_tolerance
            assert entry.epsilon_tolerance < 0.01 * entry.epsilon_independent
            # PLD lands below RDP for these mechanisms, not in general.
            assert entry.epsilon_pld < entry.epsilon_rdp
            assert (entry.receipt_line is not None) == (entry.event == "train")
        assert partner.epsilon_claimed <= partner.epsilon_budget * (1 + 1e-9)


@pytest.mark.parametrize("sample_rate", [0.04, 0.08])
@pytest.mark.parametrize("sigma", [1.2, 2.5, 9.0])
def test_dp_accounting_rdp_agrees_with_the_ledgers_accountant(
        accountant: IndependentAccountant, sample_rate: float, sigma: float) -> None:
    rounds = [(sample_rate, sigma, 1), (sample_rate, sigma, 9), (sample_rate, sigma, 490),
              (sample_rate, sigma, 1000)]  # 1, 10, 500 and 1500 steps composed
    recomputed = accountant.cumulative(rounds, [DELTA] * len(rounds))
    steps = 0
    for (_, _, n), (eps_rdp, eps_pld) in zip(rounds, recomputed, strict=True):
        steps += n
        ours = rdp_epsilon([SubsampledGaussianEvent(sample_rate, sigma, steps)], delta=DELTA)
        assert eps_rdp == pytest.approx(ours, rel=0.01)
        assert eps_pld < eps_rdp


def test_dp_accounting_default_orders_would_flag_honest_small_epsilons() -> None:
    # Why the audit passes a richer order list: at small ε the best order lies between 63 and
    # 128, where dp_accounting's defaults have none (its ε is 4% too high here).
    orders = DEFAULT_RDP_ORDERS
    ours = rdp_epsilon([SubsampledGaussianEvent(0.04, 9.0, 100)], delta=DELTA)
    default = IndependentAccountant(rdp_orders=orders).cumulative([(0.04, 9.0, 100)], [DELTA])
    audit_orders = IndependentAccountant().cumulative([(0.04, 9.0, 100)], [DELTA])
    assert default[0][0] > ours * 1.03
    assert audit_orders[0][0] == pytest.approx(ours, rel=1e-3)


# --- integrity: bytes, entries, runs, keys ---------------------------------------------------


def first_finding_line(result: AuditResult, path: Path) -> int:
    """The earliest line with a finding in `path` (0 when none)."""
    lines = [f.line for f in found(result, path)]
    return min(lines) if lines else 0


def flip(path: Path, line: int, position: int, mask: int) -> None:
    """XOR one byte of one line of a log."""
    lines = read_entries(path)
    data = bytearray(lines[line - 1])
    data[position] ^= mask
    lines[line - 1] = bytes(data)
    write_entries(path, lines)


def test_flipping_any_byte_of_an_entry_is_reported_at_its_line(
        tmp_path: Path, keys: dict[str, Ed25519PrivateKey], plans: dict[str, PrivacyPlan],
        accountant: IndependentAccountant) -> None:
    # The last entry of a two-round ledger: no later entry's chain link can give it away, so
    # every byte must be caught by the entry's own checks (and recomputing stays cheap).
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans,
                           rounds={"bank": 1, "lender": 1, "ecommerce": 2})
    path, line = fed.ledgers["ecommerce"], 3  # the count, then rounds 1 and 2
    assert len(read_entries(path)) == line
    original = path.read_bytes()
    length = len(read_entries(path)[line - 1])
    masks = (0x01, 0x04, 0x20, 0x80)  # a neighbouring digit/letter, case, non-UTF-8 byte...
    for position in range(length):  # every byte of the entry
        mask = masks[position % len(masks)]
        flip(path, line, position, mask)
        result = verify([path], fed.keys_dir, accountant=accountant)
        assert not result.ok, (position, mask)
        assert first_finding_line(result, path) == line, (position, mask, result.findings)
        path.write_bytes(original)


def test_a_flipped_byte_in_every_entry_and_receipt_is_reported(
        fed: Federation, accountant: IndependentAccountant, invoke: Invoke) -> None:
    for path in [*fed.ledger_paths, fed.receipts]:
        original = path.read_bytes()
        for line, text in enumerate(read_entries(path), start=1):
            middle, digit = len(text) // 2, re.search(rb"\d", text[40:]).start() + 40
            for position in (middle, digit):
                flip(path, line, position, 0x01)
                result = audit(fed, accountant)
                assert first_finding_line(result, path) == line, (path, line, position)
                path.write_bytes(original)
    flip(fed.ledgers["bank"], 2, len(read_entries(fed.ledgers["bank"])[1]) - 5, 0x01)
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, fed.ledgers["bank"], 2, "bad-signature")


@pytest.mark.parametrize("alteration", ["exponent", "signature-padding"])
def test_changes_that_parse_or_decode_to_the_same_values_are_reported(
        fed: Federation, accountant: IndependentAccountant, alteration: str) -> None:
    # Signatures cover the canonical encoding of the parsed entry, so `1E-05` for `1e-05` would
    # still verify: read_lines reports any line that is not its entry's canonical encoding. A
    # base64 signature with its unused low bits set decodes to the same signature: the signature
    # check rejects any signature text that is not canonical base64. Both at their own line.
    path, line = fed.ledgers["lender"], 5
    lines = read_entries(path)
    if alteration == "exponent":
        assert b'"delta":1e-05' in lines[line - 1]
        lines[line - 1] = lines[line - 1].replace(b'"delta":1e-05', b'"delta":1E-05')
    else:
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        # A 64-byte signature is 86 base64 characters + "=="; the last has 4 unused bits.
        end = re.search(rb'"signature":"[A-Za-z0-9+/]{86}==', lines[line - 1]).end() - 2
        text = bytearray(lines[line - 1])
        text[end - 1] = alphabet[alphabet.index(text[end - 1]) ^ 0x01]
        lines[line - 1] = bytes(text)
    write_entries(path, lines)
    result = verify([path], fed.keys_dir, accountant=accountant)
    expected = "not-canonical" if alteration == "exponent" else "bad-signature"
    assert [(f.line, f.code) for f in result.findings] == [(line, expected)]


def test_deleted_entry(fed: Federation, invoke: Invoke) -> None:
    path = fed.ledgers["lender"]
    lines = read_entries(path)
    write_entries(path, lines[:1] + lines[2:])
    output = invoke("verify", *cli_args(fed, receipts=False))
    assert_reported(output, path, 2, "broken-chain")
    assert_reported(output, path, 2, "seq")


def test_reordered_entries(fed: Federation, invoke: Invoke) -> None:
    path = fed.ledgers["lender"]
    lines = read_entries(path)
    write_entries(path, [lines[0], lines[2], lines[1], lines[3]])
    output = invoke("verify", *cli_args(fed, receipts=False))
    assert_reported(output, path, 2, "broken-chain")
    assert_reported(output, path, 2, "seq")
    assert_reported(output, path, 3, "round-order")


def test_duplicated_entry(fed: Federation, invoke: Invoke) -> None:
    path = fed.ledgers["ecommerce"]
    lines = read_entries(path)
    write_entries(path, [lines[0], lines[1], lines[1], *lines[2:]])
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, path, 3, "broken-chain")
    assert_reported(output, path, 3, "seq")
    assert_reported(output, path, 3, "round-order")


def test_ledger_cut_mid_line(fed: Federation, invoke: Invoke) -> None:
    path = fed.ledgers["lender"]
    raw = path.read_bytes()
    last = raw.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(raw[:last + (len(raw) - last) // 2])
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, path, 5, "truncated")


def test_dropping_the_last_entry_is_caught_by_the_receipts(
        fed: Federation, accountant: IndependentAccountant, invoke: Invoke) -> None:
    path = fed.ledgers["bank"]
    write_entries(path, read_entries(path)[:-1])  # bank's round 3, a trained round
    # The chain alone cannot tell: the shorter ledger is a valid prefix of itself.
    assert audit(fed, accountant, receipts=False).ok
    receipt_line = next(n for n, r in enumerate(entries_of(fed.receipts), start=1)
                        if (r["partner"], r["round"]) == ("bank", 3))
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, fed.receipts, receipt_line, "receipt-without-entry")


def test_replayed_entry_from_another_run(
        fed: Federation, tmp_path: Path, keys: dict[str, Ed25519PrivateKey],
        plans: dict[str, PrivacyPlan], invoke: Invoke) -> None:
    other = build_federation(tmp_path / "run-b", keys=keys, plans=plans, run_id="run-B")
    path = fed.ledgers["lender"]
    lines = read_entries(path)
    lines[1] = read_entries(other.ledgers["lender"])[1]  # validly signed by lender, run-B
    write_entries(path, lines)
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, path, 2, "foreign-run")
    # A whole ledger of another run next to run-A's receipts is foreign too.
    mixed = invoke("verify", fed.ledgers["bank"], other.ledgers["lender"], "--keys", fed.keys_dir,
                   "--receipts", fed.receipts)
    assert_reported(mixed, other.ledgers["lender"], 1, "foreign-run")


def test_entry_signed_with_another_partners_key(fed: Federation, invoke: Invoke) -> None:
    path = fed.ledgers["ecommerce"]
    entries = entries_of(path)
    signers = [fed.keys["ecommerce"]] * len(entries)
    signers[1] = fed.keys["bank"]
    write_entries(path, dump(resign_and_rechain(entries, signers, 1)))
    output = invoke("verify", *cli_args(fed, receipts=False))
    assert_reported(output, path, 2, "foreign-key")
    assert "[bad-signature]" not in output.output and "[broken-chain]" not in output.output


# --- claims vs recomputation, budgets ------------------------------------------------------------


def test_understated_epsilon_is_caught_by_recomputation(
        tmp_path: Path, keys: dict[str, Ed25519PrivateKey], plans: dict[str, PrivacyPlan],
        accountant: IndependentAccountant, invoke: Invoke) -> None:
    # The lender signs (with its own key) claims 10% below what its mechanism spent, from the
    # start: chain, signatures and receipts all verify, so only the recomputation can tell.
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans, rounds={"bank": 3},
                           claim_scale={"lender": 0.9})
    result = audit(fed, accountant)
    assert {f.code for f in result.findings} == {"epsilon-understated"}
    # Every round's claim. The count's is not: a one-shot Gaussian at ε ≈ 0.08 is claimed by
    # RDP (PRV's eps_error of 0.01 is larger), which is more than 10% above its true ε.
    assert [f.line for f in result.findings] == [2, 3, 4, 5]
    output = invoke("verify", *cli_args(fed))
    for line in (2, 3, 4, 5):
        assert_reported(output, fed.ledgers["lender"], line, "epsilon-understated")


def test_claim_within_one_percent_is_accepted(
        tmp_path: Path, keys: dict[str, Ed25519PrivateKey], plans: dict[str, PrivacyPlan],
        accountant: IndependentAccountant) -> None:
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans, rounds={"bank": 3},
                           claim_scale={"bank": 0.995})
    assert audit(fed, accountant).ok


def test_sigma_raised_after_the_fact_is_caught_by_the_receipts(
        fed: Federation, accountant: IndependentAccountant, invoke: Invoke) -> None:
    # The bank rewrites round 2 to show a larger σ than it ran, re-signs it with its own key and
    # re-chains rounds 2-3: its ledger verifies on its own and the recomputed ε even drops, so
    # neither check_log nor the recomputation objects. The coordinator's receipts name each
    # entry by hash, so the cross-check catches it: 'receipt-without-entry' for the receipts of
    # the rewritten entries and 'entry-without-receipt' for the rewritten entries themselves.
    path = fed.ledgers["bank"]
    entries = entries_of(path)
    entries[2]["mechanism"]["noise_multiplier"] *= 1.5
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["bank"]] * 4, 2)))
    assert audit(fed, accountant, receipts=False).ok
    receipt_lines = [n for n, r in enumerate(entries_of(fed.receipts), start=1)
                     if r["partner"] == "bank" and r["round"] >= 2]
    output = invoke("verify", *cli_args(fed))
    for line in receipt_lines:
        assert_reported(output, fed.receipts, line, "receipt-without-entry")
    for line in (3, 4):
        assert_reported(output, path, line, "entry-without-receipt")
    assert "[epsilon-understated]" not in output.output


def test_budget_overrun(tmp_path: Path, keys: dict[str, Ed25519PrivateKey],
                        plans: dict[str, PrivacyPlan], accountant: IndependentAccountant,
                        invoke: Invoke) -> None:
    # ecommerce keeps training past its budget (rounds 4 and 5) and honestly says so.
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans,
                           rounds={"bank": 3, "lender": 3, "ecommerce": 5},
                           refuse_after_budget=False)
    result = audit(fed, accountant)
    assert {f.code for f in result.findings} == {"budget-exceeded"}
    assert [f.line for f in result.findings] == [5, 6]
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, fed.ledgers["ecommerce"], 5, "budget-exceeded")


def test_zero_noise_is_infinite_epsilon(fed: Federation, invoke: Invoke) -> None:
    path = fed.ledgers["lender"]
    entries = entries_of(path)
    entries[2]["mechanism"]["noise_multiplier"] = 0.0  # re-signed: only recomputation can tell
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["lender"]] * 5, 2)))
    output = invoke("verify", *cli_args(fed, receipts=False), "--json")
    assert output.exit_code == 1
    data = json.loads(output.output)
    lender = next(p for p in data["partners"] if p["partner"] == "lender")
    assert lender["epsilon_rdp"] == "inf" and lender["entries"][0]["epsilon_rdp"] != "inf"
    codes = {(f["line"], f["code"]) for f in data["findings"]}
    assert {(3, "budget-exceeded"), (3, "epsilon-understated")} <= codes


@pytest.mark.parametrize(("change", "code"), [
    (lambda e: e.update(epsilon_budget=e["epsilon_budget"] * 2), "budget-changed"),
    (lambda e: e.update(delta=1e-4), "budget-changed"),
    (lambda e: e["mechanism"].update(sampling="shuffle"), "mechanism"),
    (lambda e: e["mechanism"].update(name="laplace"), "mechanism"),
    (lambda e: e["mechanism"].update(sample_rate=0.0), "bad-mechanism"),
])
def test_ledger_consistency_checks(fed: Federation, accountant: IndependentAccountant,
                                   change: Callable[[dict[str, Any]], None], code: str) -> None:
    path = fed.ledgers["bank"]
    entries = entries_of(path)
    change(entries[2])
    write_entries(path, dump(resign_and_rechain(entries, [fed.keys["bank"]] * 4, 2)))
    result = audit(fed, accountant, receipts=False)
    assert [f.line for f in found(result, path, code)] == [3], result.findings


def test_partner_name_must_stay_constant(fed: Federation,
                                         accountant: IndependentAccountant) -> None:
    path = fed.ledgers["bank"]
    entries = entries_of(path)
    entries[2]["partner"] = "lender"  # signed by the lender's own key, so check_log accepts it
    signers = [fed.keys["bank"], fed.keys["bank"], fed.keys["lender"], fed.keys["bank"]]
    write_entries(path, dump(resign_and_rechain(entries, signers, 2)))
    result = audit(fed, accountant, receipts=False)
    assert [f.line for f in found(result, path, "partner-changed")] == [3]


# --- receipts ------------------------------------------------------------------------------------


def test_receipt_without_ledger_entry(fed: Federation, invoke: Invoke) -> None:
    receipts = ReceiptLog(fed.receipts, fed.keys["coordinator"], fed.run_id)
    receipts.append(server_round=2, partner="lender", ledger_entry_sha256="ab" * 32,
                    update_sha256="cd" * 32)
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, fed.receipts, len(receipts.entries), "receipt-without-entry")


def test_ledger_entry_without_receipt(tmp_path: Path, keys: dict[str, Ed25519PrivateKey],
                                      plans: dict[str, PrivacyPlan], invoke: Invoke) -> None:
    fed = build_federation(tmp_path / "fed", keys=keys, plans=plans, rounds={"bank": 3},
                           skip_receipts=frozenset({("lender", 2)}))
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, fed.ledgers["lender"], 3, "entry-without-receipt")


def test_receipt_for_another_update(fed: Federation, invoke: Invoke) -> None:
    receipts = entries_of(fed.receipts)
    receipts[4]["update_sha256"] = "ee" * 32  # re-signed by the coordinator itself
    write_entries(fed.receipts, dump(resign_and_rechain(
        receipts, [fed.keys["coordinator"]] * len(receipts), 4)))
    output = invoke("verify", *cli_args(fed))
    assert_reported(output, fed.receipts, 5, "update-mismatch")


# --- output formats, usage errors ---------------------------------------------------------------


def test_json_output(fed: Federation, invoke: Invoke) -> None:
    clean = json.loads(invoke("verify", *cli_args(fed), "--json").output)
    assert clean["ok"] is True and clean["findings"] == []
    assert {p["partner"] for p in clean["partners"]} == {"bank", "lender", "ecommerce"}
    flip(fed.ledgers["lender"], 3, 30, 0x01)
    output = invoke("verify", *cli_args(fed), "--json")
    assert output.exit_code == 1
    data = json.loads(output.output)
    assert data["ok"] is False
    assert {"path": str(fed.ledgers["lender"]), "line": 3, "code": "bad-signature"} in [
        {k: f[k] for k in ("path", "line", "code")} for f in data["findings"]]
    lender = next(p for p in data["partners"] if p["partner"] == "lender")
    assert len(lender["entries"]) == 5 and lender["entries"][1]["sample_rate"] == pytest.approx(
        fed.plans["lender"].round_event.sample_rate)
    assert (lender["entries"][0]["event"], lender["entries"][0]["sample_rate"]) == ("count", 1.0)


def test_html_report_is_self_contained(fed: Federation, invoke: Invoke) -> None:
    clean_out = fed.root / "clean.html"
    assert invoke("report", *cli_args(fed), "--out", clean_out).exit_code == 0
    clean = clean_out.read_text(encoding="utf-8")
    assert "VERIFIED" in clean and "FAILED" not in clean
    path = fed.ledgers["ecommerce"]
    lines = read_entries(path)
    lines[0] = lines[0].replace(b'"partner":"ecommerce"', b'"partner":"<script>x()</script>"')
    write_entries(path, lines)
    out = fed.root / "report" / "audit.html"
    output = invoke("report", *cli_args(fed), "--out", out)
    assert output.exit_code == 1, output.output
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "FAILED" in html
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?!data:)[a-z]+:""", html)
    for partner in ("bank", "lender"):
        assert f"<h3>{partner}</h3>" in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in html and "<script>" not in html
    assert "bad-signature" in html and f"{path}" in html
    assert html.count("data:image/png;base64,") == 1 + len(fed.ledgers)


def test_usage_errors_exit_2(fed: Federation, tmp_path: Path, invoke: Invoke) -> None:
    missing = tmp_path / "nope.jsonl"
    assert invoke("verify", missing, "--keys", fed.keys_dir).exit_code == 2
    assert invoke("verify", *fed.ledger_paths, "--keys", tmp_path / "no-keys").exit_code == 2
    empty = tmp_path / "empty-keys"
    empty.mkdir()
    output = invoke("verify", *fed.ledger_paths, "--keys", empty)
    assert output.exit_code == 2 and "no public keys" in output.output
    (fed.keys_dir / "coordinator.pub").unlink()
    output = invoke("verify", *cli_args(fed))
    assert output.exit_code == 2 and "coordinator.pub" in output.output
    with pytest.raises(AuditInputError, match="does not exist"):
        verify([missing], fed.keys_dir)
