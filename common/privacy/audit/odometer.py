"""The auditor's check of partners' lifetime odometers, and of each run's ledger against them.

An odometer's integrity is `common.privacy.odometer.check_odometer`'s (fields, the partner's
signatures, chain, seq, one partner, data set and lifetime budget). The data set is named by one
opaque identity throughout (`dataset_sha256`: a keyed fingerprint of its records, or in an older
odometer the SHA-256 of its files); which records it holds stays with the partner, so the auditor
checks that the identity never changes, not what it contains. Its lifetime ε is RECOMPUTED
from the logged mechanisms with the auditor's own accountant; a claim more than
`EPSILON_TOLERANCE` below it, or a lifetime ε over the lifetime budget, is a finding. Then every
ledger entry that ran steps must be covered by one reservation of its partner's odometer: same
run, round, mechanism (q, σ, clipping norm) and at least its steps (a reservation is made before
the release, which may take fewer steps); else `release-not-in-odometer`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.privacy.accounting import ACCOUNTANT_NAMES, accountant_of
from common.privacy.audit.accountant import IndependentAccountant, MechanismRound
from common.privacy.audit.ledgers import (
    BUDGET_SLACK,
    EPSILON_TOLERANCE,
    PartnerAudit,
    claim_floor,
    independent_text,
    recompute,
)
from common.privacy.audit.receipts import Keys
from common.privacy.ledger import MECHANISM, SAMPLING, Finding, read_lines
from common.privacy.odometer import RELEASE_COUNT, check_odometer, well_formed


@dataclass
class OdometerEntryAudit:
    """One reservation as the auditor sees it: what, for which run and round, ε claimed and
    recomputed, and the ledger entry it covers (if a given ledger has one)."""

    line: int
    run_id: str
    round: int
    release: str
    sample_rate: float
    noise_multiplier: float
    steps: int
    clipping_norm: float
    epsilon_claimed: float
    ledger_path: str
    epsilon_rdp: float | None = None
    epsilon_pld: float | None = None
    covers: str = ""
    accountant: str = ""
    epsilon_independent: float | None = None
    epsilon_tolerance: float | None = None


@dataclass
class OdometerAudit:
    """One partner's lifetime odometer: its data set, lifetime budget, ε claimed and recomputed."""

    path: str
    partner: str | None
    dataset_sha256: str | None
    key_fingerprint: str | None
    epsilon_lifetime_budget: float | None
    delta: float | None
    epsilon_claimed: float | None
    epsilon_rdp: float | None
    epsilon_pld: float | None
    runs: list[str] = field(default_factory=list)
    ledgers_checked: list[str] = field(default_factory=list)
    entries: list[OdometerEntryAudit] = field(default_factory=list)
    accountant: str = ""
    epsilon_independent: float | None = None
    epsilon_tolerance: float | None = None


def _mechanism(entry: dict[str, Any]) -> tuple[float, float, int, float] | None:
    """(q, σ, steps, C) of an entry's mechanism, None unless a valid subsampled Gaussian."""
    mechanism = entry["mechanism"]
    if (mechanism.get("name"), mechanism.get("sampling")) != (MECHANISM, SAMPLING):
        return None
    values = [mechanism.get(k) for k in ("sample_rate", "noise_multiplier", "steps",
                                         "clipping_norm")]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return None
    q, sigma, steps, clip = values
    if not (0.0 < q <= 1.0 and math.isfinite(sigma) and sigma >= 0.0 and isinstance(steps, int)
            and steps >= 0 and math.isfinite(clip) and clip > 0.0):
        return None
    return float(q), float(sigma), steps, float(clip)


def audit_odometer(path: Path, keys: Keys,
                   accountant: IndependentAccountant) -> tuple[OdometerAudit, list[Finding]]:
    """Integrity, recomputed lifetime ε and lifetime budget of one odometer."""
    lines, findings = read_lines(path)
    findings += check_odometer(path, lines, keys)
    entries = [(line, e) for line, e in lines if well_formed(e)]
    first = entries[0][1] if entries else {}
    summary = OdometerAudit(
        path=str(path), partner=first.get("partner"), dataset_sha256=first.get("dataset_sha256"),
        key_fingerprint=first.get("key_fingerprint"),
        epsilon_lifetime_budget=float(first["epsilon_lifetime_budget"]) if entries else None,
        delta=float(first["delta"]) if entries else None,
        epsilon_claimed=None, epsilon_rdp=None, epsilon_pld=None)
    if not entries:
        findings.append(Finding(str(path), 0, "empty-odometer", "no valid odometer entry"))
        return summary, findings
    delta, budget = float(first["delta"]), float(first["epsilon_lifetime_budget"])
    if not 0.0 < delta < 1.0 or not budget > 0.0:
        findings.append(Finding(str(path), entries[0][0], "bad-value",
                                f"lifetime budget must be epsilon > 0 and delta in (0, 1), got "
                                f"epsilon={budget}, delta={delta}"))
        return summary, findings
    rounds: list[MechanismRound] = []
    for line, entry in entries:
        mechanism = _mechanism(entry)
        if mechanism is None:
            findings.append(Finding(str(path), line, "bad-mechanism",
                                    f"mechanism {entry['mechanism']!r} is not a subsampled "
                                    f"Gaussian (need 0 < q <= 1, sigma >= 0, integer steps >= "
                                    f"0, clipping norm > 0): the lifetime epsilon cannot be "
                                    f"recomputed"))
            return summary, findings
        q, sigma, steps, clip = mechanism
        rounds.append((q, sigma, steps))
        summary.entries.append(OdometerEntryAudit(
            line=line, run_id=entry["run_id"], round=entry["round"], release=entry["release"],
            sample_rate=q, noise_multiplier=sigma, steps=steps, clipping_norm=clip,
            epsilon_claimed=float(entry["epsilon_lifetime_cumulative"]),
            ledger_path=entry["ledger_path"], accountant=accountant_of(entry["accountant"]) or ""))
        if not summary.entries[-1].accountant:
            findings.append(Finding(str(path), line, "unknown-accountant",
                                    f"accountant {entry['accountant']!r} is none the audit "
                                    f"knows ({', '.join(ACCOUNTANT_NAMES)}): the claim is held "
                                    f"to RDP"))
    counted_runs: set[str] = set()
    for audit in summary.entries:
        if audit.release == RELEASE_COUNT:
            if audit.run_id in counted_runs:
                findings.append(Finding(str(path), audit.line, "second-count",
                                        f"a second count reserved for run {audit.run_id!r}: a "
                                        f"partner releases its noisy count once per run (its "
                                        f"ledger of that run was lost or replaced)"))
            counted_runs.add(audit.run_id)
    recompute(summary.entries, rounds, [delta] * len(rounds), accountant)
    for audit in summary.entries:
        findings += _epsilon_findings(path, audit, str(summary.partner), budget, delta)
    last = summary.entries[-1]
    summary.epsilon_claimed, summary.epsilon_rdp, summary.epsilon_pld = (
        last.epsilon_claimed, last.epsilon_rdp, last.epsilon_pld)
    summary.epsilon_independent, summary.epsilon_tolerance = (
        last.epsilon_independent, last.epsilon_tolerance)
    summary.accountant = ", ".join(dict.fromkeys(e.accountant or "unknown"
                                                 for e in summary.entries))
    summary.runs = list(dict.fromkeys(e.run_id for e in summary.entries))
    return summary, findings


def _epsilon_findings(path: Path, audit: OdometerEntryAudit, partner: str, budget: float,
                      delta: float) -> list[Finding]:
    """A lifetime ε claimed below the independent recomputation (less its tolerance), or over
    the lifetime budget."""
    findings = []
    where = f"{partner} run {audit.run_id!r} round {audit.round} ({audit.release})"
    claimed, floor = audit.epsilon_claimed, claim_floor(audit)
    by_prv = audit.accountant == "prv" and audit.epsilon_pld is not None
    if floor is not None and claimed < floor * (1 - BUDGET_SLACK):
        margin = "less its tolerance" if by_prv else f"more than {EPSILON_TOLERANCE:.0%} below"
        findings.append(Finding(str(path), audit.line, "epsilon-understated",
                                f"{where} claims lifetime epsilon={claimed:.6g} "
                                f"({audit.accountant or 'unknown'} accountant) but the "
                                f"odometer's releases compose to {independent_text(audit)} at "
                                f"delta={delta:g}: {margin}"))
    over_claimed = claimed > budget * (1 + BUDGET_SLACK)
    recomputed = floor if by_prv else audit.epsilon_rdp
    over_recomputed = recomputed is not None and recomputed > budget * (1 + BUDGET_SLACK)
    if over_claimed or over_recomputed:
        findings.append(Finding(str(path), audit.line, "lifetime-budget-exceeded",
                                f"{where} took the data set past its lifetime budget "
                                f"epsilon={budget:g}: claimed {claimed:.6g}, recomputed "
                                f"{independent_text(audit)}"))
    return findings


def check_ledgers_against_odometers(
        odometers: list[OdometerAudit], partners: list[PartnerAudit],
        ledger_lines: dict[str, list[tuple[int, dict[str, Any]]]]) -> list[Finding]:
    """Every ledger entry that ran steps, of a partner with an odometer, is covered by one of
    its reservations (same run, round, q, σ, C; at least its steps), each used once."""
    findings: list[Finding] = []
    by_partner: dict[str, list[tuple[OdometerAudit, OdometerEntryAudit]]] = defaultdict(list)
    for odometer in odometers:
        if odometer.partner is not None:
            by_partner[odometer.partner] += [(odometer, e) for e in odometer.entries]
    for summary in partners:
        if summary.partner not in by_partner:
            continue
        candidates = by_partner[summary.partner]
        raw = dict(ledger_lines[summary.ledger])
        checked = {o.path for o in odometers if o.partner == summary.partner}
        for audit in summary.entries:
            if (not audit.steps or audit.line not in raw or audit.round is None
                    or None in (audit.sample_rate, audit.noise_multiplier, audit.clipping_norm)):
                continue  # spent nothing, or not a mechanism (the ledger audit reports it)
            entry = raw[audit.line]
            key = (entry["run_id"], audit.round, audit.sample_rate, audit.noise_multiplier,
                   audit.clipping_norm)
            fitting = [(o, e) for o, e in candidates if not e.covers
                       and (e.run_id, e.round, e.sample_rate, e.noise_multiplier,
                            e.clipping_norm) == key and e.steps >= audit.steps]
            if fitting:
                _, best = min(fitting, key=lambda pair: pair[1].steps)
                best.covers = f"{summary.ledger}:{audit.line}"
                continue
            same_round = [e for _, e in candidates if (e.run_id, e.round) == key[:2]]
            hint = ("" if not same_round else
                    " (its reservations for that round log " + ", ".join(
                        f"q={e.sample_rate:g} sigma={e.noise_multiplier:g} steps={e.steps} "
                        f"C={e.clipping_norm:g}" + (" already used" if e.covers else "")
                        for e in same_round) + ")")
            findings.append(Finding(
                summary.ledger, audit.line, "release-not-in-odometer",
                f"{summary.partner} run {entry['run_id']!r} round {audit.round} spent {audit.steps}"
                f" steps (q={audit.sample_rate:g}, sigma={audit.noise_multiplier:g}, "
                f"C={audit.clipping_norm:g}) that no odometer of {summary.partner!r} reserved"
                f"{hint}: the release escaped the lifetime budget"))
        for odometer in odometers:
            if odometer.path in checked:
                odometer.ledgers_checked.append(summary.ledger)
    return findings
