"""The auditor's check of partners' privacy ledgers and the coordinator's receipts.

`verify` trusts nobody's arithmetic. Integrity comes from the one existing check
(`common.privacy.ledger.read_lines` + `check_log`: fields, Ed25519 signatures, hash chain, seq,
run, round order). Then every entry's cumulative ε is RECOMPUTED from its logged mechanism
parameters (Poisson rate q, noise multiplier σ, steps, δ) with an implementation other than the
one that wrote it (`accountant`). Each ledger's consistency and ε are checked in `ledgers`;
receipts, when given, tie each trained entry to an update the coordinator accepted (`receipts`);
partners' lifetime odometers, when given, must hold every release the ledgers spent (`odometer`).
"""

from common.privacy.audit.accountant import (
    AUDIT_RDP_ORDERS,
    PLD_DISCRETIZATION,
    IndependentAccountant,
    MechanismRound,
)
from common.privacy.audit.ledgers import BUDGET_SLACK, EPSILON_TOLERANCE, EntryAudit, PartnerAudit
from common.privacy.audit.odometer import OdometerAudit, OdometerEntryAudit
from common.privacy.audit.receipts import COORDINATOR, Keys
from common.privacy.audit.verification import AuditResult, load_audit_keys, verify

__all__ = [
    "AUDIT_RDP_ORDERS", "BUDGET_SLACK", "COORDINATOR", "EPSILON_TOLERANCE", "PLD_DISCRETIZATION",
    "AuditResult", "EntryAudit", "IndependentAccountant", "Keys", "MechanismRound",
    "OdometerAudit", "OdometerEntryAudit", "PartnerAudit", "load_audit_keys", "verify",
]
