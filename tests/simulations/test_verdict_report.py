"""report.json `verdict` and report.md's "Did joining pay off?" (issue 13 section 2), built from
small fake predictions without running a simulation."""

from __future__ import annotations

import json

import numpy as np

from common.config import RunConfig
from common.data.tables import PartnerData, Split
from common.learning.metrics import credit_metrics
from common.learning.verdict import COST, PAID_OFF
from common.outputs import format_number
from simulations.simulate.horizontal import SETTINGS, SettingResult, partner_verdicts
from simulations.simulate.reports import SETTING_TITLES, render_markdown

GAPS = {"lender": 1.0, "bank": -0.6}  # the federated model's edge over local-only per partner


def _partners_and_results() -> tuple[list[PartnerData], dict[str, SettingResult]]:
    rng = np.random.default_rng(0)
    partners, scores = [], {name: {} for name in SETTINGS}
    for name, gap in GAPS.items():
        labels = (rng.random(600) < 0.3).astype(float)
        partners.append(PartnerData(name, Split(np.zeros((10, 2)), np.zeros(10)),
                                    Split(np.zeros((600, 2)), labels)))
        for setting in SETTINGS:
            edge = gap if setting.startswith("federated") else 0.0
            scores[setting][name] = (1.0 + edge) * labels + rng.normal(size=600)
    return partners, {name: SettingResult(by_partner) for name, by_partner in scores.items()}


def _report() -> dict:
    partners, results = _partners_and_results()
    return {
        "scenario": "credit_data", "split": "natural", "seed": 0, "rounds": 2, "epsilon": 3.0,
        "delta": 1e-5, "config": {}, "timing": {"wall_seconds": 1.0},
        "history": {"federated_dp": None, "federated": None}, "personalization": None,
        "privacy": {}, "audit": None,
        "partners": {p.partner: {"train_rows": 10, "test_rows": 600} for p in partners},
        "results": {name: results[name].metrics(partners) for name in SETTINGS},
        "verdict": partner_verdicts(RunConfig(seed=0), partners, results),
    }


def test_verdict_per_partner_in_json_matches_its_aucs() -> None:
    partners, results = _partners_and_results()
    report = _report()
    verdict = json.loads(json.dumps(report["verdict"]))  # what report.json holds
    assert set(verdict["partners"]) == set(GAPS)
    for p in partners:
        entry = verdict["partners"][p.partner]
        assert entry["test_rows"] == 600
        d = entry["differences"]["federated_dp"]
        auc = {s: credit_metrics(p.test.labels, results[s].scores[p.partner])["auc"]
               for s in ("federated_dp", "local_only")}
        assert d["difference"] == auc["federated_dp"] - auc["local_only"]
        assert d["verdict"] == (PAID_OFF if GAPS[p.partner] > 0 else COST)
        assert set(entry["differences"]) == {"federated_dp", "federated_dp_personalized"}


def test_markdown_says_whether_joining_paid_off_before_the_tables() -> None:
    report = _report()
    md = render_markdown(report)
    section = md.index("## Did joining pay off?")
    assert section < md.index("## Pooled test metrics")
    for partner, entry in report["verdict"]["partners"].items():
        d = entry["differences"]["federated_dp"]
        line = next(x for x in md.splitlines() if x.startswith(f"- {partner}: "))
        assert f"by {d['difference']:+.3f}" in line and d["verdict"] in line
    assert format_number(report["results"]["local_only"]["pooled"]["auc"]) in md
    assert all(title in md for title in SETTING_TITLES.values())  # the rest is unchanged


def test_report_without_a_verdict_renders_as_before() -> None:
    report = _report()
    del report["verdict"]
    assert "Did joining pay off?" not in render_markdown(report)
