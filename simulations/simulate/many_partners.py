"""Reports of federations with many partners: report.md and the terminal show a summary across
partners instead of one row each, and `partners.csv` holds every partner's figures."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from common.outputs import PARTNERS_CSV, format_number

MANY_PARTNERS = 10
"""Above this many partners, reports summarise across partners (every row is in partners.csv)."""

CSV_PRIVACY = ("epsilon_spent", "epsilon_budget", "delta", "noise_multiplier", "sample_rate",
               "rounds_trained")


def is_many(report: dict[str, Any]) -> bool:
    """Whether `report` has too many partners for a row each."""
    return len(report.get("partners") or report.get("privacy") or {}) > MANY_PARTNERS


def partner_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per partner: rows, own-test AUC per setting, privacy spent, verdict.

    A partner the coordinator never drew to train (`fraction-train` < 1) has 0 rounds trained
    and ε spent 0."""
    verdicts = (report.get("verdict") or {}).get("partners", {})
    records = []
    for partner, info in report["partners"].items():
        record: dict[str, Any] = {"partner": partner, **info}
        for setting, result in report["results"].items():
            record[f"auc_{setting}"] = result["partners"][partner]["auc"]
        privacy = report["privacy"].get(partner, {})
        record.update({key: privacy.get(key, 0 if key in ("epsilon_spent", "rounds_trained")
                                        else "") for key in CSV_PRIVACY})
        for name, difference in verdicts.get(partner, {}).get("differences", {}).items():
            record[f"{name}_minus_local_auc"] = difference["difference"]
            record[f"{name}_verdict"] = difference["verdict"]
        records.append(record)
    return records


def write_partners_csv(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write `partners.csv` (every partner's record) into `out_dir`; returns its path."""
    records = partner_records(report)
    columns = list(dict.fromkeys(key for record in records for key in record))
    path = out_dir / PARTNERS_CSV
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def spread(values: list[float]) -> str:
    """'median (min to max)' of the finite values, with how many were undefined."""
    finite = [v for v in values if isinstance(v, int | float) and np.isfinite(v)]
    if not finite:
        return "n/a"
    whole = all(float(v).is_integer() for v in finite)

    def show(value: float) -> str:
        return f"{value:g}" if whole else format_number(value)

    text = f"{show(float(np.median(finite)))} ({show(min(finite))} to {show(max(finite))})"
    missing = len(values) - len(finite)
    return text + (f", {missing} undefined" if missing else "")


def summary_markdown(report: dict[str, Any], titles: dict[str, str]) -> list[str]:
    """report.md's per-partner sections for many partners: spreads across partners."""
    records = partner_records(report)
    rows = [r["train_rows"] for r in records]
    lines = [f"## Per partner ({len(records)} partners; every partner's figures in "
             f"[{PARTNERS_CSV}]({PARTNERS_CSV}))", "",
             f"Training rows per partner: {spread(rows)}. A partner's own-test AUC is undefined "
             f"when its test rows hold one class only.", "",
             "| setting | own-test AUC across partners: median (min to max) |", "|---|---|"]
    lines += [f"| {title} | {spread([r[f'auc_{s}'] for r in records])} |"
              for s, title in titles.items()]
    trained = [int(r["rounds_trained"]) for r in records]
    lines += ["", "## Privacy spent (federated + DP)", "",
              f"- ε spent: {spread([float(r['epsilon_spent']) for r in records])}; each partner "
              f"composes only the rounds it trained.",
              f"- Rounds trained: {spread(trained)}; partners never drawn to train: "
              f"{sum(1 for t in trained if t == 0)}.",
              f"- Noise multiplier: {spread([r['noise_multiplier'] for r in records])}."]
    verdict = report.get("verdict")
    if verdict:
        counts: dict[str, dict[str, int]] = {}
        for record in records:
            for key, value in record.items():
                if key.endswith("_verdict"):
                    setting = key.removesuffix("_verdict")
                    counts.setdefault(setting, {})
                    counts[setting][value] = counts[setting].get(value, 0) + 1
        lines += ["", "## Did joining pay off?", ""]
        lines += [f"- {setting} vs local-only: " + ", ".join(
            f"{n} {name}" for name, n in sorted(c.items())) for setting, c in counts.items()]
        lines += ["", "Each partner's verdict is a paired bootstrap over its own test rows "
                  f"(difference and verdict per partner in {PARTNERS_CSV})."]
    return lines + [""]
