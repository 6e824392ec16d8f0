"""The accounting benchmark: every accountant is timed, and ε grows with the rounds composed."""

from __future__ import annotations

from simulations.bench.accounting import KINDS, format_table, measure_accounting

PLAN = {"partner": "bank", "scenario": "test", "epsilon": 3.0, "delta": 1e-5,
        "local_epochs": 1.0, "rows": 1000, "planned_rounds": 4, "max_grad_norm": 1.0,
        "batch_size": 0, "count_epsilon_share": 0.1, "seed": 0}
# The calibrations (about 1 s a call, pure-Python RDP at each σ tried) are left out to keep this
# test short; `measure_accounting` runs `calibrate_plan` once anyway, for the plan it composes.
ACCOUNTANT_KINDS = tuple(kind for kind in KINDS if not kind.startswith("calibrate."))


def test_every_accountant_is_timed_and_epsilon_grows_with_rounds() -> None:
    figures = measure_accounting((4, 2), kinds=ACCOUNTANT_KINDS, plan=PLAN, repeats=1, cap_s=30)
    assert figures["rounds"] == [2, 4]
    assert set(figures["results"]) == set(ACCOUNTANT_KINDS)
    assert figures["plan"]["steps_per_round"] > 0 and figures["plan"]["noise_multiplier"] > 0
    for kind, rows in figures["results"].items():
        assert [row["rounds"] for row in rows] == [2, 4], kind
        assert all(row.get("seconds", 0) > 0 for row in rows), (kind, rows)
        small, large = (row["value"] for row in rows)
        assert 0 < small < large, kind  # ε grows with the rounds composed
    assert "epsilon.pld" in format_table(figures)
