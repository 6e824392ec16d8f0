"""Simulation reports: `report.json` (a contract for later tools), `report.md` and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.outputs import write_json  # noqa: E402

SETTING_TITLES = {
    "federated_dp": "Federated + DP",
    "federated": "Federated (non-private)",
    "local_only": "Local only (non-private)",
    "centralized": "Centralized pooled (non-private)",
    "federated_dp_personalized": "Federated + DP, personalised",
}
AUC_PLOT = "pooled_auc_per_round.png"
EPSILON_PLOT = "epsilon_per_round.png"


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """Write report.json, the two plots and report.md into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", report)
    plot_pooled_auc(out_dir / AUC_PLOT, report)
    plot_epsilon(out_dir / EPSILON_PLOT, report)
    (out_dir / "report.md").write_text(render_markdown(report))


def _round_series(history: dict[str, Any] | None, key: str) -> tuple[list[int], list[float]]:
    rounds, values = [], []
    for record in (history or {}).get("rounds", []):
        if key in record.get("pooled", {}):
            rounds.append(record["round"])
            values.append(record["pooled"][key])
    return rounds, values


def plot_pooled_auc(path: Path, report: dict[str, Any]) -> None:
    """Pooled test AUC of the global model after each round, with the baselines as lines."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for setting in ("federated_dp", "federated"):
        rounds, aucs = _round_series(report["history"].get(setting), "auc")
        ax.plot(rounds, aucs, marker="o", markersize=3, label=SETTING_TITLES[setting])
    for setting, style in (("centralized", "--"), ("local_only", ":")):
        ax.axhline(report["results"][setting]["pooled"]["auc"], linestyle=style, color="grey",
                   label=SETTING_TITLES[setting])
    ax.set_xlabel("round")
    ax.set_ylabel("pooled test AUC")
    ax.set_title(f"{report['scenario']}: pooled AUC per round (eps={report['epsilon']:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_epsilon(path: Path, report: dict[str, Any]) -> None:
    """ε spent after each round per partner, against each partner's budget."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (partner, figures) in enumerate(report["privacy"].items()):
        color = f"C{i}"
        series = figures["epsilon_per_round"]
        ax.plot(range(1, len(series) + 1), series, marker="o", markersize=3, color=color,
                label=f"{partner} spent")
        ax.axhline(figures["epsilon_budget"], color=color, linestyle="--", linewidth=1,
                   label=f"{partner} budget")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (RDP, composed over rounds)")
    ax.set_title(f"Privacy spent per partner (delta={report['delta']:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


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
        "## Pooled test metrics (all partners' test splits)",
        "",
        "| setting | AUC | KS | Gini | Brier | PR-AUC |",
        "|---|---|---|---|---|---|",
    ]
    for setting, title in SETTING_TITLES.items():
        m = res[setting]["pooled"]
        lines.append(f"| {title} | {_fmt(m['auc'])} | {_fmt(m['ks'])} | {_fmt(m['gini'])} | "
                     f"{_fmt(m['brier'])} | {_fmt(m['pr_auc'])} |")
    lines += ["", "## Per partner: AUC on the partner's own test split", "",
              "| partner | rows (train/test) | " + " | ".join(SETTING_TITLES.values()) + " |",
              "|---|---|" + "---|" * len(SETTING_TITLES)]
    for p in partners:
        info = report["partners"][p]
        cells = [_fmt(res[s]["partners"][p]["auc"]) for s in SETTING_TITLES]
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
        lines.append(f"| {p} | {_fmt(f['epsilon_spent'])} | {f['epsilon_budget']:g} | "
                     f"{f['delta']:g} | {_fmt(f['noise_multiplier'], 3)} | "
                     f"{_fmt(f['sample_rate'], 4)} | {f['rounds_trained']} |")
    lines += [
        "", "ε is composed over every DP-SGD step of every round (one RDP accountant, Opacus "
        "analysis, Balle et al. 2020 conversion) and covers each partner's released model "
        "updates. Not covered: evaluation metrics and example counts the partners report "
        "(see README, Privacy).",
        "", f"![pooled AUC per round]({AUC_PLOT})", "", f"![epsilon per round]({EPSILON_PLOT})",
        "",
    ]
    audit = report.get("audit")
    if audit:
        verdict = ("verified: every signature, hash chain and receipt checks out and every "
                   "claimed epsilon matches an independent recomputation (dp-accounting RDP)"
                   if audit["ok"] else f"FAILED with {len(audit['findings'])} finding(s)")
        lines += ["## Privacy audit", "",
                  f"Partner ledgers, coordinator receipts and public keys are in this directory "
                  f"(`federated_dp/ledgers/`, `federated_dp/receipts.jsonl`, `keys/`). Audit: "
                  f"{verdict}. Full report: [{audit['report']}]({audit['report']}).", "",
                  "| partner | eps claimed | eps recomputed (RDP) | eps recomputed (PLD) |",
                  "|---|---|---|---|"]
        for partner, f in audit["partners"].items():
            lines.append(f"| {partner} | {_fmt(f['epsilon_claimed'])} | "
                         f"{_fmt(f['epsilon_rdp_recomputed'])} | "
                         f"{_fmt(f['epsilon_pld_recomputed'])} |")
        lines += [f"- {finding}" for finding in audit["findings"]] + [""]
    return "\n".join(lines)
