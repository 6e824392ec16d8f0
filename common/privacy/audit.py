"""The auditor's check of partners' privacy ledgers and the coordinator's receipts.

`verify` trusts nobody's arithmetic. Integrity comes from the one existing check
(`common.ledger.read_lines` + `check_log`: fields, Ed25519 signatures, hash chain, seq, run,
round order). Then every entry's cumulative ε is RECOMPUTED from its logged mechanism parameters
(Poisson rate q, noise multiplier σ, steps, δ) with an implementation other than the one that
wrote it: Google's `dp_accounting`, both its RDP accountant (the same RDP-to-(ε, δ) conversion
as the ledger's claim, so an honest claim matches within 1%) and its PLD accountant (a tighter ε,
reported for information). Receipts, when given, tie each trained entry to an update the
coordinator accepted.

Numerical agreement with the ledger's claim (`common.accounting.rdp_epsilon`: Opacus' RDP
analysis, Balle et al. 2020 conversion, the same bound as `dp_accounting.rdp.compute_epsilon`),
δ = 1e-5, grid q 0.04-0.08, σ 1.2-9, steps 1-1500:
- dp_accounting's DEFAULT orders differ by up to +29% (q=0.04 σ=4 1 step: 0.1068 vs 0.0829;
  σ=9 100 steps: 0.1674 vs 0.1603): at small ε the best order lies between 63 and 128, where
  the defaults have none. Honest ledgers would be flagged, so the audit uses the union of both
  order lists (`AUDIT_RDP_ORDERS`); the conversion bound holds at every order, so extra orders
  only tighten the recomputed ε.
- With `AUDIT_RDP_ORDERS` the worst case is +0.64% (q=0.08 σ=1.2 1000 steps, ε≈14.9); typical
  cases agree to 4 digits (q=0.04 σ=2 1500 steps: 3.9096 both). The residue comes from
  fractional orders (integer orders agree to all digits; at α=2.3 dp_accounting's RDP is ~1%
  above Opacus'). Beyond the grid (σ < 1, ε > 25) it exceeds the 1% tolerance, e.g. +8% at
  q=0.08 σ=0.7 1500 steps (ε≈58), where an honest claim would be flagged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import dp_accounting
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from dp_accounting import pld, rdp
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

from common.errors import AuditInputError, CryptoError
from common.privacy.accounting import RDP_ORDERS
from common.privacy.crypto import load_public_keys
from common.privacy.ledger import (
    LEDGER_FIELDS,
    LEDGER_KIND,
    MECHANISM,
    RECEIPT_FIELDS,
    RECEIPT_KIND,
    SAMPLING,
    Finding,
    check_log,
    entry_hash,
    read_lines,
)

log = logging.getLogger(__name__)

COORDINATOR = "coordinator"
AUDIT_RDP_ORDERS: tuple[float, ...] = tuple(sorted({float(o) for o in DEFAULT_RDP_ORDERS}
                                                   | {float(o) for o in RDP_ORDERS}))
PLD_DISCRETIZATION = 1e-3
EPSILON_TOLERANCE = 0.01
"""A claimed ε more than this fraction below the recomputed RDP ε is understated."""
BUDGET_SLACK = 1e-6
"""Relative float allowance when comparing ε to the budget."""

Keys = dict[str, tuple[str, Ed25519PublicKey]]
MechanismRound = tuple[float, float, int]
"""(q, σ, steps) of one ledger entry; a budget refusal logs (and composes) zero steps."""



def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class IndependentAccountant:
    """ε of composed DP-SGD rounds from Google's dp_accounting: RDP and PLD, per ledger entry.

    Results are remembered per instance for a sequence of rounds, so verifying the same ledger
    again (a report after a verify, many tampered copies in a test) costs nothing.
    """

    def __init__(self, *, rdp_orders: Sequence[float] = AUDIT_RDP_ORDERS,
                 pld_discretization: float = PLD_DISCRETIZATION) -> None:
        if not pld_discretization > 0:
            raise ValueError(f"pld_discretization must be > 0, got {pld_discretization}")
        self.rdp_orders = tuple(float(o) for o in rdp_orders)
        self.pld_discretization = float(pld_discretization)
        self.library = f"dp-accounting {_package_version('dp-accounting')}"
        self._memo: dict[tuple[tuple[MechanismRound, ...], tuple[float, ...]],
                         list[tuple[float, float]]] = {}

    def describe(self) -> dict[str, Any]:
        """What recomputes ε, for the report."""
        return {"library": self.library,
                "rdp": f"dp_accounting.rdp.RdpAccountant ({len(self.rdp_orders)} orders, "
                       f"{self.rdp_orders[0]:g}..{self.rdp_orders[-1]:g})",
                "pld": f"dp_accounting.pld.PLDAccountant (value discretization "
                       f"{self.pld_discretization:g}, pessimistic, add-or-remove-one neighbours)",
                "event": "SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), "
                         "steps) per round, composed over every trained round"}

    @staticmethod
    def event(sample_rate: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
        """The dp_accounting event of one round: `steps` Poisson-subsampled Gaussian steps."""
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)

    def cumulative(self, rounds: Sequence[MechanismRound],
                   deltas: Sequence[float]) -> list[tuple[float, float]]:
        """(RDP ε, PLD ε) after each round, every round before it composed, at its δ."""
        if len(rounds) != len(deltas):
            raise ValueError(f"{len(rounds)} rounds but {len(deltas)} deltas")
        key = (tuple(rounds), tuple(deltas))
        if key not in self._memo:
            rdp_accountant = rdp.RdpAccountant(orders=list(self.rdp_orders))
            pld_accountant = pld.PLDAccountant(
                value_discretization_interval=self.pld_discretization)
            values = []
            # dp_accounting warns (through absl) when a fractional order's series does not
            # converge (large σ with q near 0.5) and drops that order: ε is then minimised over
            # fewer orders, never understated. Keep those warnings out of the auditor's output.
            absl_logger, level = logging.getLogger("absl"), logging.getLogger("absl").level
            absl_logger.setLevel(logging.ERROR)
            try:
                for (sample_rate, noise_multiplier, steps), delta in zip(rounds, deltas,
                                                                         strict=True):
                    if steps > 0:
                        event = self.event(sample_rate, noise_multiplier, steps)
                        rdp_accountant.compose(event)
                        pld_accountant.compose(event)
                    values.append((float(rdp_accountant.get_epsilon(delta)),
                                   float(pld_accountant.get_epsilon(delta))))
            finally:
                absl_logger.setLevel(level)
            self._memo[key] = values
        return list(self._memo[key])


@dataclass
class EntryAudit:
    """One ledger entry as the auditor sees it: logged mechanism, claimed and recomputed ε."""

    line: int
    seq: int | None
    round: int | None
    event: str
    sample_rate: float | None
    noise_multiplier: float | None
    steps: int | None
    clipping_norm: float | None
    delta: float | None
    epsilon_claimed: float | None
    epsilon_rdp: float | None = None
    epsilon_pld: float | None = None
    entry_sha256: str = ""
    receipt_line: int | None = None
    refusal_reason: str = ""


@dataclass
class PartnerAudit:
    """One partner's ledger: budget, claimed vs recomputed ε, rounds, every entry."""

    partner: str
    ledger: str
    run_id: str | None
    key_fingerprint: str | None
    epsilon_budget: float | None
    delta: float | None
    epsilon_claimed: float | None
    epsilon_rdp: float | None
    epsilon_pld: float | None
    rounds_trained: int
    refusals: int
    entries: list[EntryAudit] = field(default_factory=list)


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


def _number(value: Any) -> float | None:
    """A JSON number as float, None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    """A JSON integer, None if it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _well_formed(entry: dict[str, Any], kind: str) -> bool:
    fields = LEDGER_FIELDS if kind == LEDGER_KIND else RECEIPT_FIELDS
    return set(entry) == fields and entry.get("kind") == kind


def _parse_entry(path: Path, line: int, entry: dict[str, Any],
                 findings: list[Finding]) -> tuple[EntryAudit, MechanismRound | None]:
    """The entry's logged values, and its (q, σ, steps) if they are a valid mechanism."""
    def problem(code: str, message: str) -> None:
        findings.append(Finding(str(path), line, code, message))

    mechanism = entry["mechanism"] if isinstance(entry["mechanism"], dict) else {}
    sample_rate = _number(mechanism.get("sample_rate"))
    sigma = _number(mechanism.get("noise_multiplier"))
    steps = _integer(mechanism.get("steps"))
    clip = _number(mechanism.get("clipping_norm"))
    delta = _number(entry["delta"])
    claimed = _number(entry["epsilon_cumulative"])
    event = str(entry["event"])
    audit = EntryAudit(line=line, seq=_integer(entry["seq"]),
                       round=_integer(entry["round"]), event=event,
                       sample_rate=sample_rate, noise_multiplier=sigma,
                       steps=steps, clipping_norm=clip, delta=delta, epsilon_claimed=claimed,
                       entry_sha256=entry_hash(entry), refusal_reason=str(entry["refusal_reason"]))
    if (mechanism.get("name"), mechanism.get("sampling")) != (MECHANISM, SAMPLING):
        problem("mechanism", f"mechanism {mechanism.get('name')!r} with "
                             f"{mechanism.get('sampling')!r} sampling; the audit knows only "
                             f"{MECHANISM!r} with {SAMPLING!r} sampling")
    valid = (sample_rate is not None and 0.0 < sample_rate <= 1.0 and sigma is not None
             and math.isfinite(sigma) and sigma >= 0.0 and steps is not None and steps >= 0
             and clip is not None and math.isfinite(clip) and clip > 0.0)
    if not valid:
        problem("bad-mechanism", f"mechanism parameters are not a DP-SGD mechanism (need "
                                 f"0 < q <= 1, sigma >= 0, integer steps >= 0, clipping norm "
                                 f"> 0): q={sample_rate}, sigma={sigma}, steps={steps}, "
                                 f"C={clip}")
    if delta is None or not 0.0 < delta < 1.0:
        problem("bad-value", f"delta must be in (0, 1), got {entry['delta']!r}")
        valid = False
    if claimed is None or not claimed >= 0.0:
        problem("bad-value", f"epsilon_cumulative must be a number >= 0, got "
                             f"{entry['epsilon_cumulative']!r}")
    budget = _number(entry["epsilon_budget"])
    if budget is None or not budget > 0.0:
        problem("bad-value", f"epsilon_budget must be a number > 0, got "
                             f"{entry['epsilon_budget']!r}")
    if event == "train":
        if entry["refusal_reason"] or not isinstance(entry["update_sent_sha256"], str):
            problem("event", "a train entry must name the update it sent and no refusal reason")
    elif event == "refusal":
        if not entry["refusal_reason"] or entry["update_sent_sha256"] is not None:
            problem("event", "a refusal entry must give its reason and name no update sent")
    else:
        problem("event", f"event {event!r} is neither 'train' nor 'refusal'")
        valid = False
    if not valid:
        return audit, None
    assert sample_rate is not None and sigma is not None and steps is not None
    # Steps count whatever the event: a round whose training diverged ran its noisy steps.
    return audit, (sample_rate, sigma, steps)


def _audit_ledger(path: Path, lines: list[tuple[int, dict[str, Any]]],
                  accountant: IndependentAccountant) -> tuple[PartnerAudit, list[Finding]]:
    """Consistency of one ledger's entries and their recomputed ε; integrity is check_log's."""
    findings: list[Finding] = []
    entries = [(line, e) for line, e in lines if _well_formed(e, LEDGER_KIND)]
    first = entries[0][1] if entries else {}
    partner = str(first.get("partner", path.stem))
    budget, delta = _number(first.get("epsilon_budget")), _number(first.get("delta"))
    if not entries:
        findings.append(Finding(str(path), 0, "empty-ledger", "no valid ledger entry"))
    audits: list[EntryAudit] = []
    rounds: list[MechanismRound] = []
    deltas: list[float] = []
    recomputable = True
    for line, entry in entries:
        if entry["partner"] != partner:
            findings.append(Finding(str(path), line, "partner-changed",
                                    f"entry of partner {entry['partner']!r} in the ledger of "
                                    f"{partner!r}"))
        if (entry["epsilon_budget"], entry["delta"]) != (first["epsilon_budget"],
                                                         first["delta"]):
            findings.append(Finding(str(path), line, "budget-changed",
                                    f"budget (epsilon={entry['epsilon_budget']}, "
                                    f"delta={entry['delta']}) differs from the ledger's first "
                                    f"entry (epsilon={first['epsilon_budget']}, "
                                    f"delta={first['delta']})"))
        audit, mechanism = _parse_entry(path, line, entry, findings)
        audits.append(audit)
        if mechanism is None:
            recomputable = False
        if recomputable:
            assert mechanism is not None and audit.delta is not None
            rounds.append(mechanism)
            deltas.append(audit.delta)
    for audit, (eps_rdp, eps_pld) in zip(audits, accountant.cumulative(rounds, deltas),
                                         strict=False):
        audit.epsilon_rdp, audit.epsilon_pld = eps_rdp, eps_pld
    for audit in audits:
        findings += _epsilon_findings(path, audit, partner, budget)
    trained = [a for a in audits if a.event == "train"]
    last = audits[-1] if audits else None
    summary = PartnerAudit(
        partner=partner, ledger=str(path), run_id=first.get("run_id"),
        key_fingerprint=first.get("key_fingerprint"), epsilon_budget=budget, delta=delta,
        epsilon_claimed=last.epsilon_claimed if last else None,
        epsilon_rdp=last.epsilon_rdp if last else None,
        epsilon_pld=last.epsilon_pld if last else None,
        rounds_trained=len(trained), refusals=sum(a.event == "refusal" for a in audits),
        entries=audits)
    return summary, findings


def _epsilon_findings(path: Path, audit: EntryAudit, partner: str,
                      budget: float | None) -> list[Finding]:
    """Claimed ε below the recomputed RDP ε, and ε over the budget."""
    findings = []
    claimed, eps_rdp = audit.epsilon_claimed, audit.epsilon_rdp
    where = f"{partner} round {audit.round}"
    if claimed is not None and eps_rdp is not None and claimed < eps_rdp * (1 - EPSILON_TOLERANCE):
        findings.append(Finding(
            str(path), audit.line, "epsilon-understated",
            f"{where} claims epsilon={claimed:.6g} but its logged mechanisms compose to "
            f"epsilon={eps_rdp:.6g} (dp_accounting RDP; PLD {_fmt(audit.epsilon_pld)}) at "
            f"delta={audit.delta:g}: more than {EPSILON_TOLERANCE:.0%} below"))
    if audit.event == "train" and budget is not None:
        # The claim is held to the budget exactly; the independent recomputation within the
        # same tolerance as above (RDP implementations differ slightly at fractional orders).
        over_claimed = claimed is not None and claimed > budget * (1 + BUDGET_SLACK)
        over_recomputed = eps_rdp is not None and eps_rdp > budget * (1 + EPSILON_TOLERANCE)
        if over_claimed or over_recomputed:
            findings.append(Finding(
                str(path), audit.line, "budget-exceeded",
                f"{where} trained past its budget epsilon={budget:g}: claimed "
                f"{_fmt(claimed)}, recomputed RDP {_fmt(eps_rdp)}"))
    return findings


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _check_receipts(path: Path, keys: Keys, partners: list[PartnerAudit],
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
    receipts = [(line, r) for line, r in lines if _well_formed(r, RECEIPT_KIND)]
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


def _first_run_id(lines: list[tuple[int, dict[str, Any]]], kind: str) -> tuple[int, str] | None:
    for line, entry in lines:
        if _well_formed(entry, kind):
            return line, entry["run_id"]
    return None


def verify(ledger_paths: Sequence[Path], keys_dir: Path, receipts_path: Path | None = None, *,
           accountant: IndependentAccountant | None = None) -> AuditResult:
    """Verify partners' ledgers (and the coordinator's receipts): integrity, ε, cross-checks.

    Raises AuditInputError when a file or the keys directory is missing; every problem in the
    logs themselves is a `Finding` of the result.
    """
    paths = [Path(p) for p in ledger_paths]
    if not paths:
        raise AuditInputError("no ledger given: pass at least one partner ledger")
    for path in [*paths, *([Path(receipts_path)] if receipts_path is not None else [])]:
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
        summary, more = _audit_ledger(path, lines, accountant)
        findings += problems + more
        ledger_lines[str(path)] = lines
        partners.append(summary)
        log.info("%s: %s, %d entries, claimed epsilon %s, recomputed RDP %s", path,
                 summary.partner, len(summary.entries), _fmt(summary.epsilon_claimed),
                 _fmt(summary.epsilon_rdp))

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
        more, receipts_checked = _check_receipts(Path(receipts_path), keys, partners,
                                                 ledger_lines, run_id)
        findings += more

    order = {str(p): i for i, p in enumerate([*paths, *([receipts_path] if receipts_path
                                                        else [])])}
    findings.sort(key=lambda f: (order.get(f.path, len(order)), f.line))
    result = AuditResult(ledgers=[str(p) for p in paths],
                         receipts=str(receipts_path) if receipts_path else None,
                         keys_dir=str(keys_dir), run_id=run_id, partners=partners,
                         findings=findings, receipts_checked=receipts_checked,
                         key_names=key_names, accountant=accountant.describe())
    log.info("audit %s: %d finding(s)", "passed" if result.ok else "FAILED", len(findings))
    return result
