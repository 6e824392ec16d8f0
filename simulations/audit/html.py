"""A self-contained HTML page of an audit: verdict, budgets vs spent, ε per round, findings.

Everything is inline (CSS, plots as base64 PNG drawn with matplotlib's Agg canvas), so the page
can be archived or mailed and opened offline. Every string from a ledger is HTML-escaped: the
ledgers are the audited party's input, not trusted markup.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from common.outputs import format_number
from common.privacy.audit import EPSILON_TOLERANCE, AuditResult, EntryAudit, PartnerAudit
from common.privacy.audit.empirical_result import CheckedResult

COLORS = {"claimed": "#1f4e99", "rdp": "#d9822b", "pld": "#2e8b57", "budget": "#c0392b"}

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;
 background:#f4f5f7;color:#1d2433;line-height:1.45}
main{max-width:1160px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:32px 0 10px;
 border-bottom:2px solid #d5d9e0;padding-bottom:4px}h3{font-size:1.05em;margin:18px 0 8px}
.meta{color:#5a6475;font-size:.9em;margin:0 0 16px}
.verdict{border-radius:8px;padding:16px 20px;font-size:1.25em;font-weight:600;margin:14px 0;
 color:#fff}
.verdict small{display:block;font-size:.7em;font-weight:400;margin-top:4px;opacity:.95}
.pass{background:#1e8449}.fail{background:#b03a2e}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 18px;
 margin:14px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.86em;background:#fff}
th,td{border-bottom:1px solid #e3e6eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td .code{white-space:nowrap}
tr.refusal td{color:#6b7280;background:#fafafa}
tr.bad td{background:#fdecea}
.code{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.92em}
.path{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.85em;
 word-break:break-all}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:.85em;font-weight:600;
 white-space:nowrap}
td.file{min-width:16em}td.code{white-space:nowrap}
.tag.ok{background:#d4efdf;color:#145a32}.tag.bad{background:#f5b7b1;color:#78281f}
.tag.info{background:#e5e8ec;color:#34495e}
img.plot{max-width:100%;height:auto;display:block;margin:6px auto}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:18px}
@media (max-width:900px){.cols{grid-template-columns:1fr}}
ul{margin:6px 0 6px 20px;padding:0}li{margin:3px 0}
.facts td:first-child{color:#5a6475;white-space:nowrap;width:1%}
"""


def table_cells(head: Sequence[str], cells: Sequence[str], numeric: set[str] | Sequence[str],
                tag: str = "td") -> str:
    """One table row's cells (`tag` "th": the header's), right-aligned in the `numeric`
    columns."""
    return "".join(f'<{tag} class="num">{c}</{tag}>' if h in numeric else f"<{tag}>{c}</{tag}>"
                   for h, c in zip(head, cells, strict=True))


def _png(figure: Figure) -> str:
    """An <img> with the figure as inline base64 PNG."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def _finite(value: float | None) -> float:
    return math.nan if value is None or not math.isfinite(value) else value


def _epsilon_plot(partner: PartnerAudit, bad_lines: set[int]) -> str:
    """ε after each round: claimed, recomputed RDP and PLD, budget line; refusals marked."""
    figure = Figure(figsize=(7.2, 3.3))
    axes = figure.add_subplot()
    rounds = [e.round if e.round is not None else i for i, e in enumerate(partner.entries)]
    series = [("PLD (dp_accounting, for information)", "pld",
               [e.epsilon_pld for e in partner.entries],
               {"marker": "^", "linestyle": ":", "markersize": 4, "linewidth": 1.4}),
              ("recomputed RDP (auditor)", "rdp", [e.epsilon_rdp for e in partner.entries],
               {"marker": "s", "linestyle": "-", "markersize": 4, "linewidth": 3, "alpha": 0.6}),
              ("claimed (ledger)", "claimed", [e.epsilon_claimed for e in partner.entries],
               {"marker": "o", "linestyle": "--", "markersize": 7, "linewidth": 1.2,
                "markerfacecolor": "none", "markeredgewidth": 1.6})]
    top = 0.0
    for label, color, values, style in series:
        points = [_finite(v) for v in values]
        top = max([top, *(v for v in points if not math.isnan(v))])
        axes.plot(rounds, points, color=COLORS[color], label=label, **style)
    if partner.epsilon_budget is not None:
        top = max(top, partner.epsilon_budget)
        axes.axhline(partner.epsilon_budget, color=COLORS["budget"], linestyle="-.",
                     linewidth=1.2, label=f"budget ε={partner.epsilon_budget:g}")
    refused = [(r, _finite(e.epsilon_claimed)) for r, e in zip(rounds, partner.entries,
                                                                strict=True)
               if e.event == "refusal"]
    if refused:
        axes.plot(*zip(*refused, strict=True), "x", color="#555", markersize=9,
                  markeredgewidth=2, label="refused round")
    flagged = [(r, _finite(e.epsilon_claimed)) for r, e in zip(rounds, partner.entries,
                                                                strict=True)
               if e.line in bad_lines]
    if flagged:
        axes.plot(*zip(*flagged, strict=True), "o", markersize=12, markerfacecolor="none",
                  markeredgecolor="#b03a2e", markeredgewidth=1.8, label="entry with finding")
    axes.set_xlabel("round")
    axes.set_ylabel(f"cumulative ε (δ={partner.delta:g})" if partner.delta else "cumulative ε")
    axes.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7.5, loc="lower right", framealpha=0.9)
    axes.set_title(f"{partner.partner}: ε spent per round", fontsize=10)
    return _png(figure)


def _overview_plot(result: AuditResult) -> str:
    """Budget vs claimed vs recomputed RDP/PLD ε, one group of bars per partner."""
    partners = result.partners
    figure = Figure(figsize=(7.2, 1.2 + 0.75 * max(1, len(partners))), layout="constrained")
    axes = figure.add_subplot()
    bars = [("budget", "budget", lambda p: p.epsilon_budget),
            ("claimed", "claimed", lambda p: p.epsilon_claimed),
            ("recomputed RDP", "rdp", lambda p: p.epsilon_rdp),
            ("recomputed PLD", "pld", lambda p: p.epsilon_pld)]
    height = 0.8 / len(bars)
    for k, (label, color, value) in enumerate(bars):
        positions = [i + (k - (len(bars) - 1) / 2) * height for i in range(len(partners))]
        values = [_finite(value(p)) for p in partners]
        axes.barh(positions, [0 if math.isnan(v) else v for v in values], height=height * 0.92,
                  color=COLORS[color], label=label, alpha=0.55 if color == "budget" else 0.9)
        for y, v in zip(positions, values, strict=True):
            if not math.isnan(v):
                axes.text(v, y, f" {v:.3f}", va="center", fontsize=7)
    axes.set_yticks(range(len(partners)), [p.partner for p in partners])
    axes.invert_yaxis()
    axes.set_xlabel("ε (final, cumulative)")
    axes.margins(x=0.15)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(bars),
                frameon=False)
    return _png(figure)


def _verdict(result: AuditResult) -> str:
    entries = sum(len(p.entries) for p in result.partners)
    scope = (f"{len(result.partners)} ledger(s), {entries} entries"
             + (f", {result.receipts_checked} receipt(s)" if result.receipts else
                ", no receipts given"))
    if result.ok:
        matched = ", receipts match the ledgers one to one" if result.receipts else ""
        return (f'<div class="verdict pass">VERIFIED: no findings<small>{escape(scope)}: '
                f"signatures, hash chains and order verify, every claimed ε is within "
                f"{EPSILON_TOLERANCE:.0%} of (or above) the independently recomputed RDP ε, no "
                f"budget is exceeded{matched}.</small></div>")
    codes = sorted({f.code for f in result.findings})
    return (f'<div class="verdict fail">FAILED: {len(result.findings)} finding(s)<small>'
            f"{escape(scope)}. Problems: {escape(', '.join(codes))}. See the findings below."
            f"</small></div>")


def _summary_table(result: AuditResult, counts: dict[str, int]) -> str:
    head = ("partner", "ledger", "rounds", "refused", "budget ε", "δ", "claimed ε",
            "RDP ε", "PLD ε", "PLD / RDP", "status")
    numeric = set(head[2:10])
    rows = []
    for p in result.partners:
        ratio = (f"{p.epsilon_pld / p.epsilon_rdp:.3f}" if p.epsilon_pld is not None
                 and p.epsilon_rdp and math.isfinite(p.epsilon_rdp) else "n/a")
        n = counts.get(p.ledger, 0)
        status = ('<span class="tag ok">verified</span>' if n == 0 else
                  f'<span class="tag bad">{n} finding(s)</span>')
        name = p.ledger.replace("\\", "/").rsplit("/", 1)[-1]
        cells = [escape(p.partner), f'<span class="code" title="{escape(p.ledger)}">'
                                    f"{escape(name)}</span>",
                 str(p.rounds_trained), str(p.refusals),
                 *(format_number(v, style="g") for v in (p.epsilon_budget, p.delta)),
                 *(format_number(v, infinity="∞")
                   for v in (p.epsilon_claimed, p.epsilon_rdp, p.epsilon_pld)),
                 ratio, status]
        rows.append("<tr>" + table_cells(head, cells, numeric) + "</tr>")
    header = table_cells(head, head, numeric, "th")
    return (f'<div class="scroll"><table><tr>{header}</tr>{"".join(rows)}</table></div>'
            '<p class="meta">RDP ε and PLD ε are recomputed by the auditor from the logged '
            "mechanisms; claimed ε is what the partner signed. PLD / RDP may exceed 1: see "
            "below.</p>")


def _findings_table(result: AuditResult) -> str:
    if not result.findings:
        return '<p><span class="tag ok">none</span> Every check passed.</p>'
    rows = "".join(
        f'<tr><td class="path file">{escape(f.path)}</td><td class="num">{f.line or "-"}</td>'
        f'<td class="code">{escape(f.code)}</td><td>{escape(f.message)}</td></tr>'
        for f in result.findings)
    return ('<div class="scroll"><table><tr><th>file</th><th class="num">line</th><th>code</th>'
            f"<th>message</th></tr>{rows}</table></div>")


def _entry_row(entry: EntryAudit, codes: list[str], receipts: bool) -> str:
    gap = ""
    if (entry.epsilon_claimed is not None and entry.epsilon_rdp
            and math.isfinite(entry.epsilon_rdp)):
        relative = (entry.epsilon_claimed - entry.epsilon_rdp) / entry.epsilon_rdp
        gap = "0.00%" if abs(relative) < 5e-5 else f"{relative:+.2%}"
    if not receipts:
        receipt = "-"
    elif entry.receipt_line is not None:
        receipt = f"line {entry.receipt_line}"
    else:
        receipt = "none" if entry.event == "train" else "-"
    notes = " ".join(f'<span class="tag bad">{escape(c)}</span>' for c in codes)
    if entry.event == "refusal":
        notes = (f'<span class="tag info">refused</span> {escape(entry.refusal_reason[:160])} '
                 + notes)
    css = "bad" if codes else ("refusal" if entry.event == "refusal" else "")
    logged = (entry.sample_rate, entry.noise_multiplier, entry.steps, entry.clipping_norm,
              entry.delta)
    epsilons = (entry.epsilon_claimed, entry.epsilon_rdp, entry.epsilon_pld)
    cells = [str(entry.line), format_number(entry.seq, style="g"),
             format_number(entry.round, style="g"), escape(entry.event),
             *(format_number(v, style="g") for v in logged),
             *(format_number(v, infinity="∞") for v in epsilons), gap or "n/a", receipt]
    body = "".join(f'<td class="num">{c}</td>' for c in cells)
    return f'<tr class="{css}">{body}<td>{notes}</td></tr>'


def _partner_section(partner: PartnerAudit, codes_by_line: dict[int, list[str]],
                     key_names: dict[str, str], receipts: bool, replayed: str = "") -> str:
    signer = key_names.get(partner.key_fingerprint or "", "unknown key")
    budget, delta = (format_number(v, style="g") for v in (partner.epsilon_budget, partner.delta))
    claimed, rdp, pld = (format_number(v, infinity="∞") for v in (
        partner.epsilon_claimed, partner.epsilon_rdp, partner.epsilon_pld))
    facts = [("ledger", f'<span class="path">{escape(partner.ledger)}</span>'),
             ("run", f'<span class="code">{escape(str(partner.run_id))}</span>'),
             ("signing key", f'<span class="path">{escape(str(partner.key_fingerprint))}</span> '
                             f"({escape(signer)}.pub)"),
             ("budget", f"ε = {budget}, δ = {delta}"),
             ("spent (final)", f"claimed {claimed}; recomputed RDP {rdp}, PLD {pld}"),
             ("rounds", f"{partner.rounds_trained} trained, {partner.refusals} refused")]
    fact_rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)
    head = ("line", "seq", "round", "event", "q", "σ", "steps", "clip C", "δ", "ε claimed",
            "ε RDP", "ε PLD", "claimed vs RDP", "receipt")
    header = "".join(f'<th class="num">{h}</th>' for h in head) + "<th>notes</th>"
    rows = "".join(_entry_row(e, codes_by_line.get(e.line, []), receipts)
                   for e in partner.entries)
    plot = _epsilon_plot(partner, set(codes_by_line)) if partner.entries else ""
    return (f'<section class="card"><h3>{escape(partner.partner)}</h3>'
            f'<table class="facts">{fact_rows}</table>{plot}'
            f"<h3>Mechanism per round</h3>"
            f'<div class="scroll"><table><tr>{header}</tr>{rows}</table></div>{replayed}'
            "</section>")


def _odometer_section(result: AuditResult, counts: dict[str, int]) -> str:
    """The partners' lifetime odometers: lifetime budget vs spent, and which ledgers they cover."""
    if not result.odometers:
        return ""
    head = ("partner", "odometer", "data set (sha256)", "runs", "releases", "lifetime ε", "δ",
            "claimed ε", "RDP ε", "PLD ε", "ledgers covered", "status")
    numeric = set(head[3:11])
    rows = []
    for o in result.odometers:
        n = counts.get(o.path, 0)
        status = ('<span class="tag ok">verified</span>' if n == 0 else
                  f'<span class="tag bad">{n} finding(s)</span>')
        covered = "<br>".join(f'<span class="path">{escape(p)}</span>'
                              for p in o.ledgers_checked) or "none given"
        cells = [escape(str(o.partner)), f'<span class="path">{escape(o.path)}</span>',
                 f'<span class="code" title="{escape(str(o.dataset_sha256))}">'
                 f"{escape(str(o.dataset_sha256 or 'n/a')[:16])}</span>",
                 str(len(o.runs)), str(len(o.entries)),
                 *(format_number(v, style="g") for v in (o.epsilon_lifetime_budget, o.delta)),
                 *(format_number(v, infinity="∞")
                   for v in (o.epsilon_claimed, o.epsilon_rdp, o.epsilon_pld)),
                 covered, status]
        rows.append("<tr>" + table_cells(head, cells, numeric) + "</tr>")
    header = table_cells(head, head, numeric, "th")
    return (f'<h2>Lifetime privacy odometers</h2><div class="card"><div class="scroll"><table>'
            f'<tr>{header}</tr>{"".join(rows)}</table></div><p class="meta">Each odometer is a '
            "partner's signed record of every release of one data set, across runs and ledgers, "
            "reserved before the release. Its lifetime ε is recomputed by the auditor; every "
            "ledger entry that spent steps must be covered by a reservation (same run, round "
            "and mechanism), else <span class=\"code\">release-not-in-odometer</span>.</p>"
            "</div>")


SCOPE = """
<div class="cols">
<div class="card"><h3>What this verifies</h3><ul>
<li><b>Signatures</b> (Ed25519) prove who wrote each entry: a partner's ledger entries were
signed with that partner's key, receipts with the coordinator's. Any changed byte is reported
(signature, chain or canonical-encoding check) at its line.</li>
<li><b>The hash chain and seq</b> prove completeness and order <i>relative to the signer</i>: no
entry was removed, inserted, duplicated or reordered inside the log without the signer's key,
and no entry was replayed from another run.</li>
<li><b>Recomputation</b> proves that the claimed ε follows from the logged mechanism
(q, σ, steps, δ) of every round, composed over all rounds, by an independent implementation
of the same RDP analysis (Google's dp_accounting at integer orders, the auditor's numerical
integral at fractional ones), and that no trained round went over the budget.</li>
<li><b>Receipts</b> tie each trained entry to an update the coordinator actually accepted (the
receipt names the entry's hash and the update's hash): a partner cannot later re-write an entry,
e.g. log a larger σ, nor drop one the coordinator received, without a mismatch.</li>
<li><b>Replayed rounds</b> (when given): a signed replay result whose entry hash is this
ledger's entry shows that the round's update is what the logged mechanism produces from the
committed rows and randomness.</li>
</ul></div>
<div class="card"><h3>What it cannot prove</h3><ul>
<li>That the logged σ, q and steps are what the partner really ran, if it lies consistently
from the start (the updates themselves do not reveal the noise used), for every round not shown
as a matching replay under "Replayed rounds".</li>
<li>The true size of the partner's data (q = batch / n is only as honest as n), or that each
customer appears only once in it.</li>
<li>Truncation of the ledger's tail when no receipts are given; refused rounds at the tail are
not receipted, so dropping them is undetectable even with receipts (they spend nothing).</li>
<li>That the coordinator's receipts are complete: a coordinator and a partner colluding, or a
leaked signing key, defeat the cross-check.</li>
<li>Privacy loss outside the ledger: evaluation metrics, example counts, preprocessing fitted on
private data, or anything released outside the training rounds.</li>
</ul></div>
</div>
"""


def render_audit_html(result: AuditResult, empirical: Sequence[CheckedResult] = (),
                      replays: Sequence = ()) -> str:
    """The audit as one self-contained HTML page (inline CSS and plots, no external resource),
    with the `empirical` audit results (`check_result`) beside the ledgers and the replay results
    (`replay_html.place_replays`) under their partners when given."""
    from simulations.audit.empirical_html import (
        empirical_section,
        empirical_verdict,
        signature_tag,
    )
    from simulations.audit.replay_html import (
        replay_orphans,
        replay_partner_table,
        replay_verdict,
    )

    counts: dict[str, int] = defaultdict(int)
    codes: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for finding in result.findings:
        counts[finding.path] += 1
        codes[finding.path][finding.line].append(finding.code)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    inputs = [("ledgers", "<br>".join(f'<span class="path">{escape(p)}</span>'
                                      for p in result.ledgers)),
              ("receipts", f'<span class="path">{escape(result.receipts)}</span>'
               if result.receipts else "none given (tail truncation and re-written entries "
                                       "cannot be detected)"),
              ("public keys", f'<span class="path">{escape(result.keys_dir)}</span>: '
               + ", ".join(escape(n) for n in sorted(result.key_names.values()))),
              ("run", f'<span class="code">{escape(str(result.run_id))}</span>')]
    if result.odometers:
        inputs.append(("odometers", "<br>".join(f'<span class="path">{escape(o.path)}</span>'
                                                for o in result.odometers)))
    inputs += [(f"accountant: {k}", escape(str(v))) for k, v in result.accountant.items()]
    inputs.append(("tolerance", f"claimed ε may be at most {EPSILON_TOLERANCE:.0%} below the "
                                f"recomputed RDP ε; PLD is reported for information only"))
    if empirical:
        inputs.append(("empirical audits", "<br>".join(
            f'<span class="path">{escape(c.path)}</span> {signature_tag(c)}'
            for c in empirical)))
    if replays:
        inputs.append(("replay results", "<br>".join(
            f'<span class="path">{escape(r.item.path)}</span> {signature_tag(r.item)}'
            for r in replays)))
    input_rows = "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in inputs)
    partners = "".join(_partner_section(p, codes.get(p.ledger, {}), result.key_names,
                                        result.receipts is not None,
                                        replay_partner_table(p.ledger, replays))
                       for p in result.partners) + replay_orphans(replays)
    overview = _overview_plot(result) if result.partners else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedcredit privacy audit: {"VERIFIED" if result.ok else "FAILED"}</title>
<style>{CSS}</style></head>
<body><main>
<h1>fedcredit privacy-budget audit</h1>
<p class="meta">run <span class="code">{escape(str(result.run_id))}</span> · generated
{generated} · {len(result.partners)} partner ledger(s)</p>
{_verdict(result)}
{empirical_verdict(empirical)}
{replay_verdict(replays)}
<h2>Budgets and privacy spent</h2>
<div class="card">{_summary_table(result, counts)}{overview}
<p class="meta">Partners calibrate and enforce with the prv accountant: the smaller of Opacus'
RDP and Opacus' PRV upper bound. Its claims are recomputed independently by dp_accounting's PLD
(pessimistic) at a quarter of the ledger's interval, and checked against that PLD less its
discretisation tolerance (stated under "accountant: tight"); RDP is recomputed on the same
orders and conversion as the partners and reported for information. Claims of ledgers written
with the rdp accountant (before prv) are checked against the recomputed RDP, PLD being shown for
information there: its discretisation (stated under "accountant: pld") adds to ε, so PLD may lie
above RDP when the per-step privacy loss is small against the interval.</p></div>
{_odometer_section(result, counts)}
{empirical_section(result, empirical)}
<h2>Findings ({len(result.findings)})</h2>
<div class="card">{_findings_table(result)}</div>
<h2>Partners</h2>
{partners}
<h2>What this verifies, and what it cannot prove</h2>
{SCOPE}
<h2>Inputs and method</h2>
<div class="card"><table class="facts">{input_rows}</table></div>
</main></body></html>
"""
