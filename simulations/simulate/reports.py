"""Simulation reports: `report.json` (a contract for later tools), `report.md` and PNG plots;
the vertical scenario's `report.md`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.learning.verdict import COST, NO_CLEAR, PAID_OFF, verdict_sentence  # noqa: E402
from common.outputs import (  # noqa: E402
    AUC_PLOT,
    EPSILON_PLOT,
    FEDERATED_DP_DIR,
    KEYS_DIR,
    LEDGER_DIR,
    RECEIPTS_FILE,
    VERTICAL_LEDGER_DIR,
    RunLayout,
    format_number,
    write_json,
)
from simulations.simulate.many_partners import (  # noqa: E402
    is_many,
    spread,
    summary_markdown,
    write_partners_csv,
)

SETTING_TITLES = {
    "federated_dp": "Federated + DP",
    "federated": "Federated (non-private)",
    "local_only": "Local only (non-private)",
    "centralized": "Centralized pooled (non-private)",
    "federated_dp_personalized": "Federated + DP, personalised",
}


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """Write report.json, partners.csv, the two plots and report.md into `out_dir`."""
    layout = RunLayout(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(layout.report_json, report)
    write_partners_csv(out_dir, report)
    plot_pooled_auc(out_dir / AUC_PLOT, report)
    plot_epsilon(out_dir / EPSILON_PLOT, report)
    layout.report_md.write_text(render_markdown(report))


def _round_series(history: dict[str, Any] | None, key: str) -> tuple[list[int], list[float]]:
    rounds, values = [], []
    for record in (history or {}).get("rounds", []):
        if key in record.get("pooled", {}):
            rounds.append(record["round"])
            values.append(record["pooled"][key])
    return rounds, values


PARTNER_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"))
"""Marker and line style per partner: their ε curves nearly coincide (each partner calibrates to
spend its budget by the last round), so colour alone would hide all but the last one drawn."""


def _integer_rounds(ax: Axes) -> None:
    """Round numbers on the x axis: whole rounds only."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def auc_figure(report: dict[str, Any]) -> Figure:
    """Pooled test AUC of the global model after each round, with the baselines as lines."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for setting, (marker, style) in zip(("federated_dp", "federated"), PARTNER_STYLES,
                                        strict=False):
        rounds, aucs = _round_series(report["history"].get(setting), "auc")
        ax.plot(rounds, aucs, marker=marker, linestyle=style, markersize=4,
                label=SETTING_TITLES[setting])
    for setting, style in (("centralized", "--"), ("local_only", ":")):
        ax.axhline(report["results"][setting]["pooled"]["auc"], linestyle=style, color="grey",
                   label=SETTING_TITLES[setting])
    _integer_rounds(ax)
    ax.set_ylabel("pooled test AUC")
    ax.set_title(f"{report['scenario']}: pooled AUC per round (eps={report['epsilon']:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def epsilon_figure(report: dict[str, Any]) -> Figure:
    """ε spent after each round per partner (its own marker and line style, drawn half
    transparent so coinciding curves stay visible), against each partner's budget (one line when
    every partner has the same)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    privacy = report["privacy"]
    budgets = {figures["epsilon_budget"] for figures in privacy.values()}
    many = is_many(report)
    for i, (partner, figures) in enumerate(privacy.items()):
        color = f"C{i}"
        marker, style = PARTNER_STYLES[i % len(PARTNER_STYLES)]
        series = figures["epsilon_per_round"]
        rounds = figures.get("trained_rounds") or range(1, len(series) + 1)
        if many:  # one thin line each, no legend entry: the spread is what shows
            ax.plot(rounds, series, color="C0", alpha=0.25, linewidth=0.8,
                    label="one partner each" if i == 0 else None)
            continue
        ax.plot(rounds, series, marker=marker, linestyle=style,
                markersize=7 - 1.5 * (i % 3), alpha=0.75, color=color, label=f"{partner} spent")
        if len(budgets) > 1:
            ax.axhline(figures["epsilon_budget"], color=color, linestyle="--", linewidth=1,
                       label=f"{partner} budget")
    if budgets and (len(budgets) == 1 or many):
        ax.axhline(max(budgets), color="grey", linestyle="--", linewidth=1,
                   label="budget (every partner)" if len(budgets) == 1 else "largest budget")
    _integer_rounds(ax)
    ax.set_ylabel("epsilon spent (RDP, composed over rounds)")
    ax.set_title(f"Privacy spent per partner (delta={report['delta']:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_pooled_auc(path: Path, report: dict[str, Any]) -> None:
    """Write `auc_figure` to `path`."""
    _save(auc_figure(report), path)


def plot_epsilon(path: Path, report: dict[str, Any]) -> None:
    """Write `epsilon_figure` to `path`."""
    _save(epsilon_figure(report), path)


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable report: did joining the federation pay off, and at what privacy cost?"""
    res = report["results"]
    partners = list(report["partners"])
    lines = [
        f"# fedcredit simulation: {report['scenario']} ({report['split']} split)",
        "",
        f"Seed {report['seed']}, {report['rounds']} rounds, budget per partner "
        f"eps={report['epsilon']:g}, delta={report['delta']:g}. "
        + ("Federated settings aggregated with SecAgg+ (the coordinator saw only sums). "
           if report.get("config", {}).get("secure-aggregation") else "")
        + f"Wall time {report['timing']['wall_seconds']:.1f} s.",
        "",
        *[f"**Warning: {name} ended before its last round:** {h['message']}\n"
          for name, h in report["history"].items() if h and h["status"] != "completed"],
        *verdict_lines(report),
        "## Pooled test metrics (all partners' test splits)",
        "",
        "| setting | AUC | KS | Gini | Brier | PR-AUC |",
        "|---|---|---|---|---|---|",
    ]
    for setting, title in SETTING_TITLES.items():
        m = res[setting]["pooled"]
        lines.append(f"| {title} | " + " | ".join(
            format_number(m[key]) for key in ("auc", "ks", "gini", "brier", "pr_auc")) + " |")
    if is_many(report):
        return "\n".join(lines + [""] + summary_markdown(report, SETTING_TITLES)
                         + privacy_note(report) + audit_lines(report))
    lines += ["", "## Per partner: AUC on the partner's own test split", "",
              "| partner | rows (train/test) | " + " | ".join(SETTING_TITLES.values()) + " |",
              "|---|---|" + "---|" * len(SETTING_TITLES)]
    for p in partners:
        info = report["partners"][p]
        cells = [format_number(res[s]["partners"][p]["auc"]) for s in SETTING_TITLES]
        lines.append(f"| {p} | {info['train_rows']}/{info['test_rows']} | " + " | ".join(cells)
                     + " |")
    weights = (report.get("personalization") or {}).get("global_weight", {})
    if weights:
        lines += ["", "Personalised: each partner blends the global DP model with a model trained "
                  "on its own rows only (weight of the global model chosen by 3-fold CV on its "
                  "own training rows: " + ", ".join(f"{p} {w:g}" for p, w in weights.items())
                  + "). Neither model leaves the partner; no privacy is spent."]
    lines += ["", "## Privacy spent (federated + DP)", "",
              "| partner | eps spent | eps budget | delta | noise multiplier | sample rate | "
              "rounds trained |", "|---|---|---|---|---|---|---|"]
    for p, f in report["privacy"].items():
        lines.append(f"| {p} | {format_number(f['epsilon_spent'])} | {f['epsilon_budget']:g} | "
                     f"{f['delta']:g} | {format_number(f['noise_multiplier'], 3)} | "
                     f"{format_number(f['sample_rate'], 4)} | {f['rounds_trained']} |")
    return "\n".join(lines + privacy_note(report) + audit_lines(report))


def privacy_note(report: dict[str, Any]) -> list[str]:
    """What ε covers, and the two plots."""
    return [
        "", "ε is composed over each partner's noisy count and every DP-SGD step of every round "
        "it trained (the `prv` accountant: the smaller of Opacus' RDP and Opacus' PRV upper "
        "bound) and covers those releases: the count and the model updates. Every metric in "
        "this report (pooled and per-partner AUC, KS, Brier, the verdicts) and each simulated "
        "partner's training loss and evaluations in history.json are computed exactly on test "
        "or training rows, which this simulation may do because the analyst holds every "
        "partner's data: none of them is a DP release. A deployed partner releases no such "
        "metric unless its node config sets `release-metrics=true` (README, Privacy).",
        "", f"![pooled AUC per round]({AUC_PLOT})", "", f"![epsilon per round]({EPSILON_PLOT})",
        "",
    ]


def audit_lines(report: dict[str, Any]) -> list[str]:
    """The "Privacy audit" section (a spread across partners when there are many)."""
    lines: list[str] = []
    audit = report.get("audit")
    if audit and audit.get("report"):
        verdict = ("verified: every signature, hash chain and receipt checks out and every "
                   "claimed epsilon matches an independent recomputation (dp-accounting RDP)"
                   if audit["ok"] else f"FAILED with {len(audit['findings'])} finding(s)")
        lines += ["## Privacy audit", "",
                  f"Partner ledgers, coordinator receipts and public keys are in this directory "
                  f"(`{FEDERATED_DP_DIR}/{LEDGER_DIR}/`, `{FEDERATED_DP_DIR}/{RECEIPTS_FILE}`, "
                  f"`{KEYS_DIR}/`). Audit: "
                  f"{verdict}. Full report: [{audit['report']}]({audit['report']}).", "",
                  ]
        if is_many(report):
            figures = audit["partners"].values()
            lines += [f"- {title} across partners: {spread([f[key] for f in figures])}"
                      for key, title in (("epsilon_claimed", "eps claimed"),
                                         ("epsilon_rdp_recomputed", "eps recomputed (RDP)"),
                                         ("epsilon_pld_recomputed", "eps recomputed (PLD)"))]
            return lines + [f"- {finding}" for finding in audit["findings"]] + [""]
        lines += ["| partner | eps claimed | eps recomputed (RDP) | eps recomputed (PLD) |",
                  "|---|---|---|---|"]
        for partner, f in audit["partners"].items():
            lines.append(f"| {partner} | {format_number(f['epsilon_claimed'])} | "
                         f"{format_number(f['epsilon_rdp_recomputed'])} | "
                         f"{format_number(f['epsilon_pld_recomputed'])} |")
        lines += [f"- {finding}" for finding in audit["findings"]] + [""]
    return lines


def _budget(report: dict[str, Any], partner: str) -> float | None:
    """The partner's own ε budget (partners may differ), else the run's."""
    return (report.get("privacy") or {}).get(partner, {}).get("epsilon_budget") or report.get(
        "epsilon")


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The "Did joining pay off?" section: one sentence per partner from report.json `verdict`
    (none for a report without one)."""
    verdict = report.get("verdict")
    if not verdict or is_many(report):  # many partners: counts in the summary, rows in the CSV
        return []
    return [
        "## Did joining pay off?", "",
        *[f"- {verdict_sentence(p, v, _budget(report, p), verdict['level'])}"
          for p, v in verdict["partners"].items()],
        "", f"Each partner's models scored the same test rows of that partner; the interval is a "
        f"{verdict['resamples']}-resample {verdict['method']}. \"{PAID_OFF}\": the whole "
        f"interval lies above 0; \"{COST}\": below 0; \"{NO_CLEAR}\": it contains 0. It covers "
        f"which rows happened to be in the test split, not training randomness: run several seeds "
        f"(a sweep) for that spread. The personalised model spends no privacy beyond the "
        f"federation's ε.", "",
    ]


def render_vertical_markdown(report: dict[str, Any]) -> str:
    """report.md: does joining pay off for the lender, with and without DP?"""
    lines = [f"# fedcredit simulation: {report['scenario']} (vertical)", "",
             f"Seed {report['seed']}. Same customers, columns split by party, aligned by PSI; "
             f"the lender holds the label. Budget per party eps={report['epsilon']:g}, "
             f"delta={report['delta']:g} (lender's label eps={report['label_epsilon']:g}). "
             f"Transport: {report['transport']}. Wall time {report['wall_seconds']:.1f} s.", "",
             "## Lender's pooled test metrics per party combination", "",
             "| setting | AUC (DP) | KS (DP) | AUC (non-private) | KS (non-private) |",
             "|---|---|---|---|---|"]
    for name, modes in report["results"].items():
        cells = [modes.get(m, {}).get(k, float("nan"))
                 for m in ("dp", "non_private") for k in ("auc", "ks")]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    c = report["centralized"]
    lines += [f"| centralized logistic regression (reference, pooled data) | | | {c['auc']:.4f} | "
              f"{c['ks']:.4f} |", "", "## Privacy spent", "",
              "| party | eps spent | eps budget | what it covers |", "|---|---|---|---|"]
    for party, p in report["privacy"].items():
        lines.append(f"| {party} | {p['epsilon_spent']:.4f} | {p['epsilon_budget']:g} | "
                     f"{p['covers']} |")
    audit = report["audit"]
    verdict = ("verified: every signature and hash chain checks out and every claimed epsilon "
               "matches an independent recomputation (dp-accounting RDP)" if audit["ok"] else
               f"{len(audit['findings'])} finding(s): " + "; ".join(audit["findings"]))
    lines += ["", f"Audit of the ledgers in `{VERTICAL_LEDGER_DIR}/` (keys in `{KEYS_DIR}/`): "
              f"{verdict}. Full report: [{audit['report']}]({audit['report']}).", "",
              "What the DP covers: each passive party's released embeddings of training customers "
              "and its bottom model (zero-out of one customer's columns); the lender's noisy "
              "labels (label DP). Not covered: the clean embeddings of customers being scored "
              "(the test rows here), the PSI outcome (which customers are common), set sizes. "
              "The non-private column exchanged exact labels, embeddings and gradients: no "
              "epsilon applies to it (simulation only; a deployed party refuses that mode). "
              "See docs/vertical.md.", ""]
    return "\n".join(lines)
