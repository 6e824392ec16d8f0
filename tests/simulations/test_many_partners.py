"""Reports of many partners: a summary in report.md, every partner in partners.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from simulations.simulate.many_partners import MANY_PARTNERS, partner_records, spread
from simulations.simulate.reports import SETTING_TITLES, render_markdown, write_report


def _report(partners: int, drawn: int) -> dict:
    names = [f"p{k:03d}" for k in range(1, partners + 1)]
    auc = {n: {"auc": math.nan if k == 0 else 0.6 + k / 1000} for k, n in enumerate(names)}
    pooled = {"auc": 0.7, "ks": 0.3, "gini": 0.4, "brier": 0.1, "pr_auc": 0.2}
    privacy = {n: {"epsilon_spent": 2.5, "epsilon_budget": 3.0, "delta": 1e-5,
                   "noise_multiplier": 1.2, "sample_rate": 0.1, "rounds_trained": 2,
                   "epsilon_per_round": [1.5, 2.5], "trained_rounds": [1, 3]}
               for n in names[:drawn]}
    verdict = {"federated_dp": {"difference": 0.01, "low": -0.02, "high": 0.04,
                                "verdict": "no clear difference"}}
    return {"scenario": "lending_club", "split": "iid", "seed": 0, "epsilon": 3.0,
            "delta": 1e-5, "rounds": 3, "timing": {"wall_seconds": 1.0},
            "partners": {n: {"train_rows": 70, "test_rows": 25, "train_bad_rate": 0.1}
                         for n in names},
            "results": {s: {"pooled": pooled, "partners": auc} for s in SETTING_TITLES},
            "privacy": privacy, "history": {}, "audit": None,
            "verdict": {"partners": {n: {"differences": verdict} for n in names}}}


def test_many_partners_get_a_summary_and_every_partner_a_csv_row(tmp_path: Path) -> None:
    report = _report(MANY_PARTNERS + 5, drawn=MANY_PARTNERS)
    write_report(tmp_path, report)
    text = (tmp_path / "report.md").read_text()
    assert "p007" not in text  # no row per partner
    assert "partners never drawn to train: 5" in text
    assert "1 undefined" in text  # p001's test rows hold one class
    assert "federated_dp vs local-only: 15 no clear difference" in text
    with (tmp_path / "partners.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["partner"] for r in rows] == list(report["partners"])
    never = rows[-1]
    assert (never["epsilon_spent"], never["rounds_trained"]) == ("0", "0")
    assert rows[0]["epsilon_spent"] == "2.5" and rows[0]["federated_dp_verdict"]


def test_a_few_partners_keep_their_own_rows() -> None:
    report = {**_report(3, drawn=3), "verdict": None}
    assert "| p002 |" in render_markdown(report)
    assert len(partner_records(report)) == 3


def test_spread_shows_median_range_and_undefined() -> None:
    assert spread([1, 2, 10]) == "2 (1 to 10)"
    assert spread([0.5, math.nan]) == "0.5000 (0.5000 to 0.5000), 1 undefined"
    assert spread([]) == "n/a"
