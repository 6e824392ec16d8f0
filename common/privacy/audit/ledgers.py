"""The auditor's checks of one partner's ledger: well-formed entries, a DP-SGD mechanism, one
budget, and every claimed ε against the independent recomputation and the budget.

Each entry names the accountant of its claim (`common.privacy.accounting.ACCOUNTANT_NAMES`). A
claim by `rdp` is held to the auditor's RDP (`EPSILON_TOLERANCE` below it at most); a claim by
`prv` (min of Opacus RDP and PRV) to dp_accounting's PLD less its discretisation tolerance
(`IndependentAccountant.tight`), with RDP reported for information. Integrity (signatures, hash
chain, seq, run, round order) is `common.privacy.ledger.check_log`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.outputs import format_number
from common.privacy.accounting import ACCOUNTANT_NAMES, accountant_of
from common.privacy.audit.accountant import IndependentAccountant, MechanismRound
from common.privacy.ledger import (
    COUNT_EVENT,
    LEDGER_KIND,
    MECHANISM,
    SAMPLING,
    Finding,
    entry_hash,
    has_fields,
)

EPSILON_TOLERANCE = 0.01
"""A claimed ε more than this fraction below the recomputed RDP ε is understated. A policy
margin, not a numerical one: the recomputation (`accountant`) matches honest claims to within
2e-10 relative at budgets 0.01..100 (δ 1e-8..1e-3, q 1e-3..1), so only an understatement of
more than 1% is reported."""
BUDGET_SLACK = 1e-6
"""Relative float allowance when comparing the claimed AND the recomputed ε to the budget
(calibration keeps honest claims within 1e-9 of it; recomputation adds at most 2e-10)."""


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
    accountant: str = ""
    epsilon_independent: float | None = None
    epsilon_tolerance: float | None = None


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
    accountant: str = ""
    epsilon_independent: float | None = None
    epsilon_tolerance: float | None = None



def _number(value: Any) -> float | None:
    """A JSON number as float, None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _is_sha256_hex(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def _integer(value: Any) -> int | None:
    """A JSON integer, None if it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def well_formed(entry: dict[str, Any], kind: str) -> bool:
    return has_fields(entry, kind)


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
                       entry_sha256=entry_hash(entry), refusal_reason=str(entry["refusal_reason"]),
                       accountant=accountant_of(str(entry["accountant"])) or "")
    if not audit.accountant:
        problem("unknown-accountant", f"accountant {entry['accountant']!r} is none the audit "
                                      f"knows ({', '.join(ACCOUNTANT_NAMES)}): the claim is "
                                      f"held to RDP")
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
    commitment = entry.get("replay_commitment")
    if commitment is not None and (event != "train" or not _is_sha256_hex(commitment)):
        problem("replay-commitment", "a replay_commitment must be 64 lowercase hex digits, on a "
                                     "train entry only")
    if event == "train":
        if entry["refusal_reason"] or not isinstance(entry["update_sent_sha256"], str):
            problem("event", "a train entry must name the update it sent and no refusal reason")
    elif event == "refusal":
        if not entry["refusal_reason"] or entry["update_sent_sha256"] is not None:
            problem("event", "a refusal entry must give its reason and name no update sent")
    elif event == COUNT_EVENT:
        if entry["refusal_reason"] or entry["update_sent_sha256"] is not None:
            problem("event", "a count entry must name no update sent and no refusal reason")
        if valid and (sample_rate, steps) != (1.0, 1):
            problem("bad-mechanism", f"a count is one Gaussian release (q = 1, one step), "
                                     f"logged q={sample_rate}, steps={steps}")
            valid = False
    else:
        problem("event", f"event {event!r} is not 'train', 'refusal' or '{COUNT_EVENT}'")
        valid = False
    if not valid:
        return audit, None
    assert sample_rate is not None and sigma is not None and steps is not None
    # Steps count whatever the event: a round whose training diverged ran its noisy steps.
    return audit, (sample_rate, sigma, steps)


def _count_findings(path: Path, entries: list[tuple[int, dict[str, Any]]]) -> list[Finding]:
    """A ledger whose plan includes a noisy count must open with that count's entry, at the σ
    and released size every entry's calibration names (leaving it out would understate ε)."""
    planned = [(line, e["calibration"]) for line, e in entries
               if isinstance(e["calibration"], dict)
               and "count_noise_multiplier" in e["calibration"]]
    if not planned:
        return []  # a vertical ledger: one-shot releases, no count
    first_line, first = entries[0]
    if first["event"] != COUNT_EVENT:
        return [Finding(str(path), first_line, "missing-count",
                        "the plan includes a noisy count but the ledger does not open with its "
                        "count entry: epsilon would be understated by the count's share")]
    logged = {"count_noise_multiplier": first["mechanism"].get("noise_multiplier")
              if isinstance(first["mechanism"], dict) else None,
              "released_rows": first["calibration"].get("released_rows")}
    return [Finding(str(path), line, "count-mismatch",
                    f"calibration names count sigma {calibration.get('count_noise_multiplier')!r} "
                    f"and size {calibration.get('released_rows')!r}, the count entry "
                    f"{logged['count_noise_multiplier']!r} and {logged['released_rows']!r}")
            for line, calibration in planned
            if {k: calibration.get(k) for k in logged} != logged]


def audit_ledger(path: Path, lines: list[tuple[int, dict[str, Any]]],
                  accountant: IndependentAccountant) -> tuple[PartnerAudit, list[Finding]]:
    """Consistency of one ledger's entries and their recomputed ε; integrity is check_log's."""
    findings: list[Finding] = []
    entries = [(line, e) for line, e in lines if well_formed(e, LEDGER_KIND)]
    first = entries[0][1] if entries else {}
    partner = str(first.get("partner", path.stem))
    budget, delta = _number(first.get("epsilon_budget")), _number(first.get("delta"))
    if not entries:
        findings.append(Finding(str(path), 0, "empty-ledger", "no valid ledger entry"))
    findings += _count_findings(path, entries)
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
    recompute(audits, rounds, deltas, accountant)
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
        entries=audits, accountant=", ".join(dict.fromkeys(a.accountant or "unknown"
                                                           for a in audits)),
        epsilon_independent=last.epsilon_independent if last else None,
        epsilon_tolerance=last.epsilon_tolerance if last else None)
    return summary, findings


def recompute(audits: list[Any], rounds: list[MechanismRound], deltas: list[float],
              accountant: IndependentAccountant) -> None:
    """Fill in each audit's RDP and PLD ε and the independent ε its claim is held to, with the
    tolerance below it: RDP and `EPSILON_TOLERANCE` x RDP for an `rdp` (or unknown) claim, the
    finer PLD and its discretisation tolerance for a `prv` claim (RDP where PLD is n/a).
    `audits` are `EntryAudit`s or odometer entries (`accountant`, `epsilon_*` fields), the
    first len(rounds) of them recomputable."""
    for audit, (eps_rdp, eps_pld) in zip(audits, accountant.cumulative(rounds, deltas),
                                         strict=False):
        audit.epsilon_rdp, audit.epsilon_pld = eps_rdp, eps_pld
        audit.epsilon_independent = eps_rdp
        audit.epsilon_tolerance = EPSILON_TOLERANCE * eps_rdp
    if not any(a.accountant == "prv" for a in audits[:len(rounds)]):
        return
    for audit, (eps_tight, tolerance) in zip(audits, accountant.tight(rounds, deltas),
                                             strict=False):
        if audit.accountant == "prv" and eps_tight is not None:
            audit.epsilon_independent, audit.epsilon_tolerance = eps_tight, tolerance


def claim_floor(audit: Any) -> float | None:
    """The least ε an honest claim of this entry can state: the independent recomputation less
    its tolerance (None when it was not recomputed)."""
    if audit.epsilon_independent is None or audit.epsilon_tolerance is None:
        return None
    return audit.epsilon_independent - audit.epsilon_tolerance


def independent_text(audit: Any) -> str:
    """How the independent ε of an entry was recomputed, for findings."""
    independent, tolerance = audit.epsilon_independent, audit.epsilon_tolerance
    if audit.accountant == "prv" and audit.epsilon_pld is not None:
        return (f"epsilon={independent:.6g} by dp_accounting PLD (tolerance {tolerance:.3g}; "
                f"RDP {format_number(audit.epsilon_rdp, 6, style='g')}, for information)")
    return (f"epsilon={independent:.6g} (recomputed RDP; PLD "
            f"{format_number(audit.epsilon_pld, 6, style='g')}, for information)")


def _epsilon_findings(
    path: Path, audit: EntryAudit, partner: str, budget: float | None
) -> list[Finding]:
    """Claimed ε below the independent recomputation (less its tolerance), and claimed or
    recomputed ε over the budget."""
    findings = []
    claimed, floor = audit.epsilon_claimed, claim_floor(audit)
    where = f"{partner} round {audit.round}"
    by_prv = audit.accountant == "prv" and audit.epsilon_pld is not None
    if claimed is not None and floor is not None and claimed < floor * (1 - BUDGET_SLACK):
        margin = ("less its tolerance" if by_prv else f"more than {EPSILON_TOLERANCE:.0%} below")
        findings.append(
            Finding(
                str(path),
                audit.line,
                "epsilon-understated",
                f"{where} claims epsilon={claimed:.6g} ({audit.accountant or 'unknown'} "
                f"accountant) but its logged mechanisms compose to {independent_text(audit)} "
                f"at delta={audit.delta:g}: {margin}",
            )
        )
    if audit.event == "train" and budget is not None:
        # Both the claim and the recomputation are held to the budget up to float round-off
        # (the recomputation less its tolerance for a prv claim: PLD's discretisation), so a
        # partner cannot overrun by up to the tolerance while understating its claim by as much.
        over_claimed = claimed is not None and claimed > budget * (1 + BUDGET_SLACK)
        recomputed = floor if by_prv else audit.epsilon_rdp
        over_recomputed = recomputed is not None and recomputed > budget * (1 + BUDGET_SLACK)
        if over_claimed or over_recomputed:
            claimed_text = format_number(claimed, 6, style="g")
            findings.append(
                Finding(
                    str(path),
                    audit.line,
                    "budget-exceeded",
                    f"{where} trained past its budget epsilon={budget:g}: claimed "
                    f"{claimed_text}, recomputed {independent_text(audit)}",
                )
            )
    return findings
