"""What `fedcredit simulate` shows and records (issue 12 item 9): Flower's INFO lines and its
deprecation warning only with --verbose; report.json's `config` is what the DP federation ran
under; plots count whole rounds and keep every partner's ε curve visible; progress labels whole;
`bench` lists only the scenarios it accepts."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from common.config import RunConfig
from simulations.cli import app

PROJECT = Path(__file__).resolve().parents[2]


def test_flower_logs_stay_off_the_console_unless_verbose() -> None:
    """Before, importing Flower after `quiet_libraries` undid it: ~650 INFO lines per run."""
    script = textwrap.dedent("""
        import logging, sys
        from simulations.cli import quiet_libraries
        quiet_libraries(verbose=False)
        from flwr.common.logger import log
        log(logging.INFO, "quiet-info"); log(logging.WARNING, "quiet-deprecated")
        log(logging.ERROR, "quiet-error")
        quiet_libraries(verbose=True)
        log(logging.INFO, "verbose-info")
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True,
                          text=True, check=True)
    said = done.stdout + done.stderr
    assert "quiet-info" not in said and "quiet-deprecated" not in said
    assert said.count("quiet-error") == 1  # errors show, once (not again through the root)
    assert "verbose-info" in said


def test_report_config_is_what_the_dp_federation_ran_under(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, `config` was the CLI's own run config: sim-pooled-eval=false, no ledger paths."""
    from simulations.simulate import horizontal

    ran: dict[str, RunConfig] = {}

    def federation(run, partners, progress=None, label=""):
        ran[label] = run
        return horizontal.SettingResult(
            {p.partner: np.linspace(0, 1, len(p.test)) for p in partners},
            {"status": "completed", "message": "", "rounds": []}, object())

    def setting(run, partners, *_):
        return horizontal.SettingResult({p.partner: np.linspace(0, 1, len(p.test))
                                         for p in partners})

    for name in ("run_local_only", "run_centralized", "run_personalized"):
        monkeypatch.setattr(horizontal, name, setting)
    monkeypatch.setattr(horizontal, "run_federation", federation)
    monkeypatch.setattr(horizontal, "audit_run", lambda *_: {"ok": True})
    body = horizontal.run_all(RunConfig(num_server_rounds=2, out_dir=str(tmp_path)))
    assert body["config"] == ran["federated_dp"].to_flower()
    assert body["config"]["sim-pooled-eval"] is True
    assert body["config"]["sim-ledger-dir"] and body["config"]["receipts-path"]
    assert body["configs"]["federated"] == ran["federated"].to_flower()


def _report(rounds: int) -> dict:
    spent = [3.0 * (r / rounds) ** 0.5 for r in range(1, rounds + 1)]
    privacy = {p: {"epsilon_per_round": [s + 1e-4 * i for s in spent], "epsilon_budget": 3.0}
               for i, p in enumerate(("lender", "ecommerce", "bank"))}
    return {"privacy": privacy, "delta": 1e-5, "scenario": "credit_data", "epsilon": 3.0,
            "history": {"federated_dp": {"rounds": [{"round": r, "pooled": {"auc": 0.7}}
                                                    for r in range(1, rounds + 1)]}},
            "results": {s: {"pooled": {"auc": 0.7}} for s in ("centralized", "local_only")}}


@pytest.mark.parametrize("rounds", [2, 3])
def test_plots_count_whole_rounds_and_keep_every_partner_visible(rounds: int) -> None:
    from simulations.simulate.reports import auc_figure, epsilon_figure

    for figure in (epsilon_figure(_report(rounds)), auc_figure(_report(rounds))):
        figure.canvas.draw()
        ax = figure.axes[0]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    curves = [line for line in epsilon_figure(_report(rounds)).axes[0].get_lines()
              if str(line.get_label()).endswith(" spent")]
    assert len({(c.get_marker(), c.get_linestyle()) for c in curves}) == 3  # not colour alone


def test_progress_labels_are_whole_setting_names() -> None:
    """Before, labels were cut at 14 characters: 'federated_dp_p'."""
    from simulations.simulate.horizontal import SETTINGS
    from simulations.simulate.terminal import settings_progress

    progress = settings_progress(SETTINGS)
    for name in SETTINGS:
        progress.add_task(name, total=1)
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(progress.make_tasks_table(progress.tasks))
    shown = console.export_text()
    assert all(name in shown for name in SETTINGS)


def test_bench_lists_only_the_scenarios_it_accepts() -> None:
    shown = CliRunner(env={"COLUMNS": "240"}).invoke(app, ["bench", "--help"]).output
    assert "lending_club" in shown and "credit_data_vertical" not in shown
