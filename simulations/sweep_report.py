"""What `fedcredit sweep` writes from its cells' reports: `sweep.csv` (one row per cell and
setting), `sweep.md` (mean ± standard deviation across seeds, and the pooled AUC per seed) and
`sweep.png` (the privacy-utility curve; matplotlib is imported only to draw it)."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SWEEP_CSV = "sweep.csv"
SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"
DP_SETTINGS = {"federated_dp": "federated + DP (global model)",
               "federated_dp_personalized": "federated + DP, personalised"}
BASELINES = {"federated": "federated, non-private", "local_only": "local only, non-private",
             "centralized": "centralized pooled, non-private"}
"""The non-private settings: they do not depend on ε (each seed's value is averaged over the
sweep's ε cells, which run them on the same splits, then mean ± std across seeds)."""
METRICS = ("auc", "ks")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (0 for a single value) of `n` values."""

    mean: float
    std: float
    n: int

    def text(self, digits: int = 4) -> str:
        """`mean ± std` (just the mean for a single value)."""
        return (f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1
                else f"{self.mean:.{digits}f}")


def stat(values: Iterable[float]) -> Stat:
    """The Stat of `values` (at least one)."""
    data = list(values)
    return Stat(statistics.fmean(data), statistics.stdev(data) if len(data) > 1 else 0.0,
                len(data))


def partners_of(reports: Iterable[dict[str, Any]]) -> list[str]:
    """Every partner named in the reports, in order of first appearance."""
    names: dict[str, None] = {}
    for report in reports:
        for result in report["results"].values():
            names.update(dict.fromkeys(result["partners"]))
    return list(names)


def rows(reports: dict[tuple[float, int], dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """One row per cell (key: (ε, seed)) and setting: pooled and per-partner AUC and KS, and for
    the DP settings the largest ε a partner spent and whether the audit verified."""
    partners = partners_of(reports.values())
    table = []
    for (epsilon, seed), report in sorted(reports.items()):
        spent = max((f["epsilon_spent"] for f in report.get("privacy", {}).values()),
                    default=None)
        for setting in (*DP_SETTINGS, *BASELINES):
            result = report["results"][setting]
            row: dict[str, Any] = {"epsilon": epsilon, "seed": seed, "setting": setting,
                                   "private": setting in DP_SETTINGS}
            row.update({f"pooled_{m}": result["pooled"][m] for m in METRICS})
            for partner in partners:
                figures = result["partners"].get(partner, {})
                row.update({f"{partner}_{m}": figures.get(m) for m in METRICS})
            private = setting in DP_SETTINGS
            row["epsilon_spent_max"] = spent if private else None
            row["audit_ok"] = report.get("audit", {}).get("ok") if private else None
            row["run_dir"] = str(out / f"eps{epsilon:g}-seed{seed}")
            table.append(row)
    return table


def write_csv(path: Path, table: list[dict[str, Any]]) -> None:
    """The rows as CSV (empty cells for missing values)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)


def columns(table: list[dict[str, Any]]) -> list[str]:
    """The metric columns: pooled AUC and KS, then every partner's."""
    return [c for c in table[0] if c.endswith(tuple(f"_{m}" for m in METRICS))]


def summarise(table: list[dict[str, Any]]) -> dict[str, dict[Any, dict[str, Stat]]]:
    """Per DP setting and ε, per baseline (key None): each metric column's Stat across seeds."""
    summary: dict[str, dict[Any, dict[str, Stat]]] = {}
    for setting in DP_SETTINGS:
        picked = [r for r in table if r["setting"] == setting]
        summary[setting] = {eps: _stats([r for r in picked if r["epsilon"] == eps], table)
                            for eps in sorted({r["epsilon"] for r in picked})}
    for setting in BASELINES:
        per_seed = []
        for seed in sorted({r["seed"] for r in table}):
            mine = [r for r in table if r["setting"] == setting and r["seed"] == seed]
            per_seed.append({c: _mean([r[c] for r in mine]) for c in columns(table)})
        summary[setting] = {None: _stats(per_seed, table)}
    return summary


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _stats(picked: list[dict[str, Any]], table: list[dict[str, Any]]) -> dict[str, Stat]:
    found = {c: [r[c] for r in picked if r[c] is not None] for c in columns(table)}
    return {c: stat(values) for c, values in found.items() if values}


def _cell(stats: dict[str, Stat], column: str) -> str:
    return stats[column].text() if column in stats else "n/a"


def render_markdown(table: list[dict[str, Any]], spec_line: str, title: str,
                    failed: list[str]) -> str:
    """sweep.md: pooled and per-partner AUC and KS (mean ± std across seeds) per setting and ε,
    the pooled AUC per seed, the privacy and audit check, the plot."""
    summary = summarise(table)
    seeds = sorted({r["seed"] for r in table})
    epsilons = sorted({r["epsilon"] for r in table})
    partners = [c.removesuffix("_auc") for c in columns(table)
                if c.endswith("_auc") and c != "pooled_auc"]
    labels = {**DP_SETTINGS, **BASELINES}
    entries = [(s, eps) for eps in epsilons for s in DP_SETTINGS if eps in summary[s]]
    entries += [(s, None) for s in BASELINES]

    def eps_text(eps: float | None) -> str:
        return "–" if eps is None else f"{eps:g}"

    lines = [f"# fedcredit sweep: {title}", "",
             f"Every cell: `{spec_line}`, ε per partner {', '.join(f'{e:g}' for e in epsilons)}, "
             f"seeds {', '.join(map(str, seeds))}. Mean ± standard deviation across seeds; the "
             "non-private settings do not depend on ε (each seed averaged over its ε cells).", "",
             "## Pooled test metrics (all partners' test splits)", "",
             "| setting | ε | AUC | KS | seeds |", "|---|---|---|---|---|"]
    for setting, eps in entries:
        stats = summary[setting][eps]
        n = stats["pooled_auc"].n if "pooled_auc" in stats else 0
        lines.append(f"| {labels[setting]} | {eps_text(eps)} | {_cell(stats, 'pooled_auc')} | "
                     f"{_cell(stats, 'pooled_ks')} | {n} |")
    for metric in ("AUC", "KS"):
        lines += ["", f"## Per partner: {metric} on the partner's own test split", "",
                  "| setting | ε | " + " | ".join(partners) + " |",
                  "|---|---|" + "---|" * len(partners)]
        for setting, eps in entries:
            stats = summary[setting][eps]
            lines.append(f"| {labels[setting]} | {eps_text(eps)} | " + " | ".join(
                _cell(stats, f"{p}_{metric.lower()}") for p in partners) + " |")
    lines += ["", "## Pooled test AUC per seed", "",
              "| setting | ε | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
              "|---|---|" + "---|" * (len(seeds) + 1)]
    for setting, eps in entries:
        by_seed = {s: _mean([r["pooled_auc"] for r in table if r["setting"] == setting
                             and r["seed"] == s and (eps is None or r["epsilon"] == eps)])
                   for s in seeds}
        values = [v for v in by_seed.values() if v is not None]
        cells = [f"{by_seed[s]:.4f}" if by_seed[s] is not None else "n/a" for s in seeds]
        mean = f"{statistics.fmean(values):.4f}" if values else "n/a"
        lines.append(f"| {labels[setting]} | {eps_text(eps)} | " + " | ".join(cells)
                     + f" | **{mean}** |")
    dp_rows = [r for r in table if r["setting"] == "federated_dp"]
    worst = max((r["epsilon_spent_max"] / r["epsilon"] for r in dp_rows
                 if r["epsilon_spent_max"] is not None), default=None)
    audits = all(r["audit_ok"] for r in dp_rows)
    lines += ["", ("largest ε spent / budget: " + (f"{worst:.6f}" if worst is not None else "n/a")
                   + f"; every audit verified: {audits}")]
    if failed:
        lines += ["", "Cells that did not finish (left out above; re-run the sweep to retry): "
                  + ", ".join(failed)]
    lines += ["", f"![privacy-utility curve; error bars and bands: ± one standard deviation "
              f"across seeds]({SWEEP_PNG})", ""]
    return "\n".join(lines)


def verdict_markdown(reports: dict[tuple[float, int], dict[str, Any]]) -> str:
    """The per-partner verdict across seeds: for each ε and partner, the AUC difference to its
    local-only model (global and personalised) as mean ± std across seeds, and in how many seeds
    each cell's own bootstrap interval said "paid off", "no clear difference" or "cost"."""
    found: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
    for (epsilon, _), report in sorted(reports.items()):
        for partner, verdict in report.get("verdict", {}).get("partners", {}).items():
            for setting, difference in verdict.get("differences", {}).items():
                found.setdefault((epsilon, partner, setting), []).append(difference)
    if not found:
        return ""
    words = ("paid off", "no clear difference", "cost")
    lines = ["## Did joining pay off? (per partner, across seeds)", "",
             "AUC of each federated+DP model (global, personalised) minus the partner's "
             "local-only model on its own test rows: mean ± std across seeds, and how many "
             "seeds' 95% bootstrap intervals said "
             + " / ".join(f"'{w}'" for w in words) + ".", "",
             "| ε | partner | setting | AUC difference | " + " / ".join(words) + " |",
             "|---|---|---|---|---|"]
    for (epsilon, partner, setting), differences in found.items():
        spread = stat(d["difference"] for d in differences)
        counts = " / ".join(str(sum(d["verdict"] == w for d in differences)) for w in words)
        lines.append(f"| {epsilon:g} | {partner} | {DP_SETTINGS.get(setting, setting)} | "
                     f"{spread.mean:+.4f} ± {spread.std:.4f} | {counts} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, table: list[dict[str, Any]], title: str) -> None:
    """sweep.png: pooled AUC (left) and KS (right) against ε (log scale), DP global and
    personalised as mean ± std error bars, the non-private settings as lines and ±std bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(table)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    epsilons = sorted({r["epsilon"] for r in table})
    for ax, metric in zip(axes, METRICS, strict=True):
        column = f"pooled_{metric}"
        for (setting, label), marker in zip(DP_SETTINGS.items(), ("o", "s"), strict=True):
            points = [(eps, s[column]) for eps, s in summary[setting].items() if column in s]
            ax.errorbar([e for e, _ in points], [s.mean for _, s in points],
                        yerr=[s.std for _, s in points], marker=marker, capsize=3, label=label)
        for i, (setting, label) in enumerate(BASELINES.items()):
            found = summary[setting][None].get(column)
            if found is None:
                continue
            color, style = f"C{i + 2}", ("--", ":", "-.")[i]
            ax.axhline(found.mean, color=color, linestyle=style, label=label)
            if found.std > 0:
                ax.axhspan(found.mean - found.std, found.mean + found.std, color=color,
                           alpha=0.12)
        ax.set_xscale("log")
        ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        ax.minorticks_off()
        ax.set_xlabel("ε per partner (log scale)")
        ax.set_ylabel(f"pooled test {metric.upper()}")
        ax.set_title(f"{title}: pooled {metric.upper()}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, reports: dict[tuple[float, int], dict[str, Any]], spec_line: str,
                  title: str, failed: list[str]) -> list[Path]:
    """sweep.csv, sweep.md and sweep.png in `out` from the finished cells' reports."""
    table = rows(reports, out)
    write_csv(out / SWEEP_CSV, table)
    markdown = render_markdown(table, spec_line, title, failed)
    (out / SWEEP_MD).write_text(markdown + verdict_markdown(reports), encoding="utf-8")
    plot(out / SWEEP_PNG, table, title)
    return [out / SWEEP_CSV, out / SWEEP_MD, out / SWEEP_PNG]
