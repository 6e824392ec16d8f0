"""`verify`: the whole audit of a run's ledgers (and receipts), and its result."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import AuditInputError, CryptoError
from common.outputs import format_number
from common.privacy.audit.accountant import IndependentAccountant
from common.privacy.audit.ledgers import EPSILON_TOLERANCE, PartnerAudit, audit_ledger, well_formed
from common.privacy.audit.odometer import (
    OdometerAudit,
    audit_odometer,
    check_ledgers_against_odometers,
)
from common.privacy.audit.receipts import COORDINATOR, Keys, check_receipts
from common.privacy.crypto import load_public_keys
from common.privacy.ledger import LEDGER_KIND, RECEIPT_KIND, Finding, check_log, read_lines

log = logging.getLogger(__name__)


@dataclass
class AuditResult:
    """Everything `verify` found: per-partner summaries and the list of findings."""

    ledgers: list[str]
    receipts: str | None
    keys_dir: str
    run_id: str | None
    partners: list[PartnerAudit]
    findings: list[Finding]
    receipts_checked: int
    key_names: dict[str, str]
    accountant: dict[str, Any]
    epsilon_tolerance: float = EPSILON_TOLERANCE
    odometers: list[OdometerAudit] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed verification."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (infinite ε written as the string "inf")."""
        return _jsonable({**asdict(self), "ok": self.ok})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def load_audit_keys(keys_dir: Path) -> Keys:
    """Public keys `<name>.pub` of `keys_dir` by fingerprint; AuditInputError if unusable."""
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise AuditInputError(f"keys directory {keys_dir} does not exist (--keys)")
    try:
        keys = load_public_keys(keys_dir)
    except CryptoError as exc:
        raise AuditInputError(str(exc)) from exc
    if not keys:
        raise AuditInputError(f"no public keys (*.pub) in {keys_dir}: the auditor needs each "
                              f"partner's <partner>.pub and the coordinator's coordinator.pub")
    return keys


def _first_run_id(lines: list[tuple[int, dict[str, Any]]], kind: str) -> tuple[int, str] | None:
    for line, entry in lines:
        if well_formed(entry, kind):
            return line, entry["run_id"]
    return None


def verify(ledger_paths: Sequence[Path], keys_dir: Path, receipts_path: Path | None = None, *,
           accountant: IndependentAccountant | None = None,
           odometer_paths: Sequence[Path] = ()) -> AuditResult:
    """Verify partners' ledgers (and the coordinator's receipts, and their lifetime odometers):
    integrity, ε, cross-checks.

    Raises AuditInputError when a file or the keys directory is missing; every problem in the
    logs themselves is a `Finding` of the result.
    """
    paths = [Path(p) for p in ledger_paths]
    if not paths:
        raise AuditInputError("no ledger given: pass at least one partner ledger")
    odometer_files = [Path(p) for p in odometer_paths]
    for path in [*paths, *([Path(receipts_path)] if receipts_path is not None else []),
                 *odometer_files]:
        if not path.is_file():
            raise AuditInputError(f"{path} does not exist or is not a file")
    keys = load_audit_keys(keys_dir)
    key_names = {fp: name for fp, (name, _) in keys.items()}
    if receipts_path is not None and COORDINATOR not in key_names.values():
        raise AuditInputError(f"receipts given but {Path(keys_dir) / 'coordinator.pub'} is "
                              f"missing: the coordinator's public key verifies them")
    accountant = accountant or IndependentAccountant()
    log.info("auditing %d ledger(s)%s with keys from %s", len(paths),
             f" and receipts {receipts_path}" if receipts_path else "", keys_dir)

    findings: list[Finding] = []
    partners: list[PartnerAudit] = []
    ledger_lines: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for path in paths:
        if str(path) in ledger_lines:
            findings.append(Finding(str(path), 0, "duplicate-ledger", "ledger given twice"))
            continue
        lines, problems = read_lines(path)
        problems += check_log(path, lines, keys, kind=LEDGER_KIND)
        summary, more = audit_ledger(path, lines, accountant)
        findings += problems + more
        ledger_lines[str(path)] = lines
        partners.append(summary)
        log.info("%s: %s, %d entries, claimed epsilon %s, recomputed RDP %s", path,
                 summary.partner, len(summary.entries),
                 format_number(summary.epsilon_claimed, 6, style="g"),
                 format_number(summary.epsilon_rdp, 6, style="g"))

    seen: dict[str, str] = {}
    for summary in partners:
        if summary.partner in seen and summary.entries:
            findings.append(Finding(summary.ledger, summary.entries[0].line, "duplicate-partner",
                                    f"a second ledger of {summary.partner!r} (the first is "
                                    f"{seen[summary.partner]})"))
        seen.setdefault(summary.partner, summary.ledger)

    receipt_lines, _ = read_lines(Path(receipts_path)) if receipts_path else ([], [])
    reference = _first_run_id(receipt_lines, RECEIPT_KIND)
    if reference is None:
        reference = next((r for s in partners
                          if (r := _first_run_id(ledger_lines[s.ledger], LEDGER_KIND))), None)
    run_id = reference[1] if reference else None
    for summary in partners:
        first = _first_run_id(ledger_lines[summary.ledger], LEDGER_KIND)
        if first is not None and first[1] != run_id:
            findings.append(Finding(summary.ledger, first[0], "foreign-run",
                                    f"ledger of run {first[1]!r}, the audit is of run "
                                    f"{run_id!r} (first given "
                                    f"{'receipt' if receipts_path else 'ledger'})"))

    receipts_checked = 0
    if receipts_path is not None:
        more, receipts_checked = check_receipts(Path(receipts_path), keys, partners,
                                                 ledger_lines, run_id)
        findings += more

    odometers: list[OdometerAudit] = []
    for path in odometer_files:
        if any(o.path == str(path) for o in odometers):
            findings.append(Finding(str(path), 0, "duplicate-odometer", "odometer given twice"))
            continue
        odometer, more = audit_odometer(path, keys, accountant)
        odometers.append(odometer)
        findings += more
    findings += check_ledgers_against_odometers(odometers, partners, ledger_lines)

    order = {str(p): i for i, p in enumerate([*paths, *([receipts_path] if receipts_path
                                                        else []), *odometer_files])}
    findings.sort(key=lambda f: (order.get(f.path, len(order)), f.line))
    result = AuditResult(ledgers=[str(p) for p in paths],
                         receipts=str(receipts_path) if receipts_path else None,
                         keys_dir=str(keys_dir), run_id=run_id, partners=partners,
                         findings=findings, receipts_checked=receipts_checked,
                         key_names=key_names, accountant=accountant.describe(),
                         odometers=odometers)
    log.info("audit %s: %d finding(s)", "passed" if result.ok else "FAILED", len(findings))
    return result
