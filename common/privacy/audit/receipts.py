"""The auditor's cross-check of the coordinator's receipts against the partners' ledgers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.privacy.audit.ledgers import EntryAudit, PartnerAudit, well_formed
from common.privacy.ledger import RECEIPT_KIND, Finding, check_log, read_lines

COORDINATOR = "coordinator"
"""The receipts' signer: its public key is `coordinator.pub` in the keys directory."""
Keys = dict[str, tuple[str, Ed25519PublicKey]]
"""Public keys by fingerprint: (owner's name, key)."""


def check_receipts(path: Path, keys: Keys, partners: list[PartnerAudit],
                    ledger_lines: dict[str, list[tuple[int, dict[str, Any]]]],
                    run_id: str | None) -> tuple[list[Finding], int]:
    """Receipts' integrity, and that they and the ledgers' trained entries match one to one."""
    lines, findings = read_lines(path)
    findings += check_log(path, lines, keys, kind=RECEIPT_KIND, expected_signer=COORDINATOR)
    by_hash: dict[str, tuple[PartnerAudit, EntryAudit, dict[str, Any]]] = {}
    for summary in partners:
        raw = dict(ledger_lines[summary.ledger])
        for audit in summary.entries:
            by_hash.setdefault(audit.entry_sha256, (summary, audit, raw[audit.line]))
    ledger_partners = {summary.partner for summary in partners}
    receipts = [(line, r) for line, r in lines if well_formed(r, RECEIPT_KIND)]
    for line, receipt in receipts:
        def problem(code: str, message: str, line: int = line) -> None:
            findings.append(Finding(str(path), line, code, message))

        what = f"receipt for {receipt['partner']!r} round {receipt['round']}"
        if run_id is not None and receipt["run_id"] != run_id:
            problem("foreign-run", f"{what} is from run {receipt['run_id']!r}, the audit is of "
                                   f"run {run_id!r}")
        match = by_hash.get(receipt["ledger_entry_sha256"])
        if match is None:
            hint = ("" if receipt["partner"] in ledger_partners else
                    f" (no ledger of partner {receipt['partner']!r} was given)")
            problem("receipt-without-entry", f"{what} names ledger entry "
                                             f"{receipt['ledger_entry_sha256'][:16]}... which no "
                                             f"given ledger holds{hint}: the entry was altered, "
                                             f"re-signed or removed")
            continue
        summary, audit, entry = match
        expected = (entry["run_id"], entry["round"], entry["partner"], "train")
        if (receipt["run_id"], receipt["round"], receipt["partner"], audit.event) != expected:
            problem("receipt-without-entry",
                    f"{what} names the entry of {entry['partner']!r} round {entry['round']} "
                    f"(run {entry['run_id']!r}, {audit.event}) at {summary.ledger}:{audit.line}")
            continue
        if audit.receipt_line is not None:
            problem("duplicate-receipt", f"{what}: the entry at {summary.ledger}:{audit.line} "
                                         f"already has the receipt at line {audit.receipt_line}")
            continue
        audit.receipt_line = line
        if receipt["update_sha256"] != entry["update_sent_sha256"]:
            problem("update-mismatch", f"{what}: the coordinator accepted update "
                                       f"{str(receipt['update_sha256'])[:16]}... but the ledger "
                                       f"entry at {summary.ledger}:{audit.line} says it sent "
                                       f"{str(entry['update_sent_sha256'])[:16]}...")
    for summary in partners:
        for audit in summary.entries:
            if audit.event == "train" and audit.receipt_line is None:
                findings.append(Finding(summary.ledger, audit.line, "entry-without-receipt",
                                        f"{summary.partner} round {audit.round} trained but "
                                        f"the coordinator's receipts have no receipt for it"))
    return findings, len(receipts)
