"""The empirical-audit part of audit.html: per signed result, the accounted ε beside the
empirical lower bound, the finding flag, membership inference against the DP ceiling, and whether
the result's signature verified (a tampered or unverifiable result is shown as such)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from matplotlib.figure import Figure

from common.outputs import format_number
from common.privacy.audit import AuditResult
from common.privacy.audit.empirical import MIA_FPRS, dp_ceiling
from common.privacy.audit.empirical_result import CheckedResult
from simulations.audit.html import COLORS, _png, table_cells


def _number(value: Any) -> float | None:
    """A finite number from an untrusted document, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "n/a"


def empirical_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The figures of an empirical-audit result document, type-checked: a number that is not a
    finite number, or a string that is not a string, becomes None / "n/a" (the document is input
    to the audit, possibly forged; its signature status is shown separately)."""
    result = document.get("result")
    result = result if isinstance(result, dict) else {}
    out: dict[str, Any] = {name: _text(result.get(name)) for name in (
        "scenario", "partner", "mechanism_override")}
    out.update({name: _number(result.get(name)) for name in (
        "epsilon_budget", "delta", "epsilon_accounted", "epsilon_lower_bound", "confidence",
        "canaries", "canaries_included", "k", "guesses", "correct", "noise_multiplier_claimed",
        "noise_multiplier_used", "sample_rate", "steps", "seed")})
    finding = result.get("finding")
    out["finding"] = finding if isinstance(finding, bool) else None
    out.update({name: _text(document.get(name)) for name in (
        "created_utc", "fedcredit_version", "signer")})
    parameters = document.get("parameters")
    out["parameters"] = parameters if isinstance(parameters, dict) else {}
    mia = result.get("membership")
    out["mia"] = None
    if isinstance(mia, dict):
        epsilon, delta = _number(mia.get("epsilon")), _number(mia.get("delta"))
        points = {}
        for point in mia.get("points") if isinstance(mia.get("points"), list) else []:
            if isinstance(point, dict) and _number(point.get("fpr")) in MIA_FPRS:
                points[_number(point.get("fpr"))] = _number(point.get("tpr"))
        roc = [(_number(p[0]), _number(p[1])) for p in (
            mia.get("roc") if isinstance(mia.get("roc"), list) else [])
            if isinstance(p, list) and len(p) == 2]
        out["mia"] = {"attack": _text(mia.get("attack")), "auc": _number(mia.get("auc")),
                      "members": _number(mia.get("members")),
                      "non_members": _number(mia.get("non_members")),
                      "epsilon": epsilon, "delta": delta, "tpr": points,
                      "roc": [(f, t) for f, t in roc if f is not None and t is not None]}
    return out


def _ceiling(mia: dict[str, Any], fpr: float) -> float | None:
    """The DP ceiling recomputed by the report from the result's ε and δ."""
    if mia["epsilon"] is None or mia["delta"] is None:
        return None
    return dp_ceiling(fpr, epsilon=min(mia["epsilon"], 700.0), delta=mia["delta"])


def signature_tag(item: CheckedResult) -> str:
    label = {"verified": f"signature verified ({item.key_name or 'given key'})",
             "invalid": "TAMPERED or foreign key: signature does not verify",
             "unverified": "NOT VERIFIED: no public key"}[item.status]
    css = "ok" if item.verified else "bad"
    return f'<span class="tag {css}" title="{escape(item.detail)}">{escape(label)}</span>'


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _mia_plot(fields: dict[str, Any]) -> str:
    """The attack's ROC (log-log) beside the DP ceiling e^ε·FPR + δ and chance."""
    mia = fields["mia"]
    points = [(f, t) for f, t in mia["roc"] if f > 0]
    if not points:
        return ""
    figure = Figure(figsize=(4.6, 3.4), layout="constrained")
    axes = figure.add_subplot()
    grid = [10 ** (-3 + 3 * i / 60) for i in range(61)]
    axes.plot(grid, grid, color="#888", linestyle=":", linewidth=1, label="chance (TPR = FPR)")
    ceiling = [_ceiling(mia, f) for f in grid]
    if None not in ceiling:
        axes.plot(grid, ceiling, color=COLORS["budget"], linestyle="-.", linewidth=1.4,
                  label=f"DP ceiling e^ε·FPR + δ (ε={mia['epsilon']:.3g})")
    axes.plot(*zip(*points, strict=True), color=COLORS["claimed"], marker="o", markersize=3,
              linewidth=1.4, label=f"{mia['attack']} attack")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(1e-3, 1)
    axes.set_ylim(1e-3, 1.05)
    axes.set_xlabel("false-positive rate")
    axes.set_ylabel("true-positive rate")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="lower right", framealpha=0.9)
    axes.set_title(f"{fields['partner']}: membership inference", fontsize=10)
    return _png(figure)


def empirical_verdict(checked: Sequence[CheckedResult]) -> str:
    if not checked:
        return ""
    unverified = sum(not c.verified for c in checked)
    findings = sum(empirical_fields(c.document)["finding"] is not False for c in checked)
    scope = f"{len(checked)} empirical-audit result(s)"
    if not unverified and not findings:
        return (f'<div class="verdict pass">EMPIRICAL AUDIT: no finding<small>{scope}: every '
                f"signature verifies, no lower bound exceeds its accounted ε.</small></div>")
    problems = [f"{unverified} not verified (tampered, signed by another key, or no key)"
                if unverified else "",
                f"{findings} finding(s): lower bound above the accounted ε" if findings else ""]
    summary = escape("; ".join(p for p in problems if p))
    return (f'<div class="verdict fail">EMPIRICAL AUDIT: {summary}'
            f"<small>{scope}. See the empirical audit below.</small></div>")


def empirical_section(result: AuditResult, checked: Sequence[CheckedResult]) -> str:
    """Per result: ledger ε beside the empirical lower bound, the MIA figures vs ceiling, and
    the signature status; then one card per result."""
    if not checked:
        return ""
    ledgers = {}
    for p in result.partners:
        ledgers.setdefault(p.partner, p)
    head = ("partner", "signature", "ledger claimed ε", "ledger RDP ε", "ledger PLD ε",
            "audit budget ε", "audit accounted ε", "empirical lower bound", "guesses right",
            "finding", "MIA AUC", *(f"TPR at {f:.1%} FPR (ceiling)" for f in MIA_FPRS))
    numeric = set(head[2:9]) | set(head[10:])
    rows, cards = [], []
    for item in checked:
        f = empirical_fields(item.document)
        ledger = ledgers.get(f["partner"])
        claimed, rdp, pld = ((format_number(v, infinity="∞") for v in (
            ledger.epsilon_claimed, ledger.epsilon_rdp, ledger.epsilon_pld))
            if ledger else ("no ledger",) * 3)
        bound = format_number(f["epsilon_lower_bound"], 2)
        if f["confidence"] is not None:
            bound += f" ({f['confidence']:.0%})"
        right = (f"{f['correct']:.0f} / {f['guesses']:.0f}" if None not in (
            f["correct"], f["guesses"]) else "n/a")
        finding = {True: '<span class="tag bad">FINDING</span>',
                   False: '<span class="tag ok">none</span>',
                   None: '<span class="tag bad">unreadable</span>'}[f["finding"]]
        mia = f["mia"]
        mia_cells = ["n/a"] * (1 + len(MIA_FPRS))
        if mia:
            mia_cells = [format_number(mia["auc"], 3)]
            for fpr in MIA_FPRS:
                tpr, ceiling = mia["tpr"].get(fpr), _ceiling(mia, fpr)
                above = tpr is not None and ceiling is not None and tpr > ceiling
                cell = f"{_percent(tpr)} ({_percent(ceiling)})"
                mia_cells.append(f'<span class="tag bad">{cell} above</span>' if above else cell)
        partner = escape(f["partner"])
        if f["mechanism_override"] != "none":  # a --broken demonstration run, or unreadable
            partner += (f' <span class="tag info">demonstration: '
                        f'{escape(f["mechanism_override"])}</span>')
        cells = [partner, signature_tag(item), claimed, rdp, pld,
                 format_number(f["epsilon_budget"], style="g"),
                 format_number(f["epsilon_accounted"], 3), bound, right, finding, *mia_cells]
        css = "bad" if not item.verified or f["finding"] is not False else ""
        rows.append(f'<tr class="{css}">' + table_cells(head, cells, numeric) + "</tr>")
        cards.append(_empirical_card(item, f))
    header = table_cells(head, head, numeric, "th")
    return (f'<h2>Empirical privacy audit</h2><div class="card"><div class="scroll"><table>'
            f'<tr>{header}</tr>{"".join(rows)}</table></div>'
            '<p class="meta">The empirical lower bound is the one-run canary audit of Steinke, '
            "Nasr and Jagielski (2023) of the partner's mechanism on its rows, at the stated "
            "confidence, next to the ε its accountant gives that audit run (audit budget) and the "
            "ε the ledger claims. A bound above the accounted ε is a finding: the mechanism that "
            "ran leaks more than accounted. A bound below it proves nothing about the real rows: "
            "it is one attack's lower bound. MIA: loss-threshold membership inference on the "
            "partner's training rows vs its test rows (no shadow models; LiRA is not built), "
            "beside the DP ceiling TPR ≤ e^ε·FPR + δ at the audit run's accounted ε (recomputed "
            "here), a point estimate without confidence. A result whose signature does not "
            "verify is shown as such: its figures are the audited file's, not evidence.</p>"
            f"</div>{''.join(cards)}")


def _empirical_card(item: CheckedResult, f: dict[str, Any]) -> str:
    parameters = ", ".join(f"{escape(str(k))}={escape(json_value)}" for k, json_value in (
        (k, _short(v)) for k, v in sorted(f["parameters"].items())))
    sigma = (f"claimed {format_number(f['noise_multiplier_claimed'], 4, style='g')}, used "
             f"{format_number(f['noise_multiplier_used'], 4, style='g')}")
    facts = [("file", f'<span class="path">{escape(item.path)}</span>'),
             ("signature", f"{signature_tag(item)} {escape(item.detail)}"),
             ("signer", f'<span class="path">{escape(f["signer"])}</span>'),
             ("signed at", escape(f["created_utc"])),
             ("fedcredit", escape(f["fedcredit_version"])),
             ("scenario", escape(f["scenario"])),
             ("mechanism", f"{escape(f['mechanism_override'])}; σ {sigma}; q "
                           f"{format_number(f['sample_rate'], 4, style='g')}; "
                           f"{format_number(f['steps'], style='g')} DP-SGD steps"),
             ("canaries", f"{format_number(f['canaries'], style='g')} "
                          f"({format_number(f['canaries_included'], style='g')} included), "
                          f"best k = {format_number(f['k'], style='g')}"),
             ("parameters", f'<span class="code">{parameters}</span>')]
    mia = f["mia"]
    if mia:
        facts.append(("membership inference",
                      f"{escape(mia['attack'])}: {format_number(mia['members'], style='g')} "
                      f"members (training rows) vs {format_number(mia['non_members'], style='g')}"
                      f" non-members (test rows), AUC {format_number(mia['auc'], 3)}"))
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)
    plot = _mia_plot(f) if mia else ""
    return (f'<section class="card"><h3>{escape(f["partner"])}: empirical audit</h3>'
            f'<table class="facts">{rows}</table>{plot}</section>')


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"
