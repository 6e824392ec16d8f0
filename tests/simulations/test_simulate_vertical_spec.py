"""`fedcredit simulate --spec` with a vertical data spec (simulations/simulate/own_data.py,
simulations/simulate/vertical.py): the parties' own CSVs run as the vertical simulation, the
spec kept as the run's `data-spec`; a bad table or spec exits 2 naming the file and the column
or key, with no traceback, before anything is written.

The run goes through the real CLI, `simulate_vertical`, ServerApp relay and party ClientApps;
only Flower's Simulation Engine (Ray, ~20 s to start) is replaced by the in-process
`tests.vertical_helpers.VerticalGrid`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from common.config import RunConfig
from common.data.vertical_spec import VerticalSpec
from common.outputs import DATA_SPEC_FILE, RUN_MANIFEST
from server.vertical import run_vertical
from simulations.cli import app
from simulations.simulate.own_data import resolve_spec
from tests.common.vertical.own_tables import BANK_SCHEMA, write_own_tables
from tests.flower_helpers import set_task_identity
from tests.vertical_helpers import VerticalGrid

RUNNER = CliRunner(env={"COLUMNS": "240"})


@pytest.fixture
def own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: the three parties' CSVs and schemas, spec.toml."""
    monkeypatch.chdir(tmp_path)
    write_own_tables(tmp_path)
    return tmp_path


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the vertical federation through `VerticalGrid` instead of Ray (2 fine-tuning steps
    instead of 40: the same messages, fewer of them); audit.html's plots are left out (the
    audit itself runs)."""
    import server.app
    import simulations.audit.html
    import simulations.simulate.vertical as driver

    built: dict[str, Any] = {}

    def build_server_app(config: dict, observer: Any = None, **_: Any) -> None:
        built.update(config=config, observer=observer)

    def engine(_server_app: Any, _client_app: Any, _num_supernodes: int) -> None:
        set_task_identity()
        run = replace(RunConfig.from_flower(built["config"]), vertical_finetune_steps=2)
        run_vertical(VerticalGrid(run), run, "test-run", built["observer"])

    monkeypatch.setattr(server.app, "build_server_app", build_server_app)
    monkeypatch.setattr(driver, "run_in_simulation_engine", engine)
    monkeypatch.setattr(simulations.audit.html, "render_audit_html", lambda audit: "")


def test_simulate_runs_the_parties_own_csvs_and_keeps_the_spec(own: Path, in_process) -> None:
    done = RUNNER.invoke(app, ["simulate", "--spec", "spec.toml", "--out", "run"])
    assert done.exit_code == 0, done.output
    report = json.loads((own / "run" / "report.json").read_text())
    assert report["scenario"] == "own data" and report["audit"]["ok"]
    assert report["data_spec"] == str((own / "run" / DATA_SPEC_FILE).resolve())
    assert set(report["results"]) == {"lender", "lender+ecommerce", "lender+bank",
                                      "lender+ecommerce+bank"}
    kept = (own / "run" / DATA_SPEC_FILE).read_text()
    assert f'data = "{own / "bank.csv"}"' in kept and 'id_column = "acct_no"' in kept
    manifest = json.loads((own / "run" / RUN_MANIFEST).read_text())
    assert manifest["status"] == "completed" and DATA_SPEC_FILE in manifest["files"]


def test_resolve_spec_loads_and_aligns_a_vertical_spec(own: Path) -> None:
    spec = resolve_spec(None, data=[], partner_column="", schema=None, spec=Path("spec.toml"),
                        split="natural", alpha=0.5, seed=0)
    assert isinstance(spec, VerticalSpec) and spec.party("lender").id_column == "loan_ref"


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text, encoding="utf-8")


BAD = [
    (lambda d: (d / "spec.toml").write_text((d / "spec.toml").read_text().replace(
        '"acct_no"', '"account"')), ["parties.bank", "id_column 'account'", "bank.csv"]),
    (lambda d: _append(d / "bank.csv", (d / "bank.csv").read_text().splitlines()[1] + "\n"),
     ["bank.csv", "column 'acct_no'", "given twice"]),
    (lambda d: _append(d / "ecommerce.csv", "7,,0.2\n"),
     ["ecommerce.csv", "column 'shopper'", "missing customer ID"]),
    (lambda d: (d / "lender.toml").write_text(BANK_SCHEMA.replace("own-bank", "no-label")),
     ["parties.lender", "the lender holds the label", "'no-label'"]),
    (lambda d: (d / "spec.toml").write_text((d / "spec.toml").read_text().replace(
        "[parties.ecommerce]", "[parties.shop]")), ["parties.shop", "unknown vertical party"]),
    (lambda d: _append(d / "spec.toml", "budget = 1\n"), ["parties.bank", "'budget'"]),
]


@pytest.mark.parametrize(("spoil", "names"), BAD)
def test_a_bad_vertical_spec_or_table_exits_2_before_anything_is_written(
        own: Path, spoil, names: list[str]) -> None:
    spoil(own)
    done = RUNNER.invoke(app, ["simulate", "--spec", "spec.toml", "--out", "run"])
    assert done.exit_code == 2, done.output
    flat = " ".join(done.output.split()).replace("│", "")
    for name in ["--spec", *names]:
        assert name in " ".join(flat.split()), (name, done.output)
    assert "Traceback" not in done.output and not (own / "run").exists()


def test_options_of_a_horizontal_run_are_refused_with_a_vertical_spec(own: Path) -> None:
    done = RUNNER.invoke(app, ["simulate", "--spec", "spec.toml", "--rounds", "3"])
    assert done.exit_code == 2 and "--rounds" in done.output


def test_schema_check_takes_a_passive_partys_label_less_table_with_its_id_column(
        own: Path) -> None:
    checked = RUNNER.invoke(app, ["schema", "check", "bank.csv", "bank.toml",
                                  "--id-column", "acct_no"])
    assert checked.exit_code == 0, checked.output
    rows = len((own / "bank.csv").read_text().splitlines()) - 1
    assert f"ids:      {rows} distinct in 'acct_no'" in checked.output
    assert "label:    none (a vertical passive party's table)" in checked.output
    without_ids = RUNNER.invoke(app, ["schema", "check", "bank.csv", "bank.toml"])
    assert without_ids.exit_code == 2 and "--id-column" in without_ids.output
    (own / "twice.csv").write_text((own / "bank.csv").read_text()
                                   + (own / "bank.csv").read_text().splitlines()[1] + "\n")
    twice = RUNNER.invoke(app, ["schema", "check", "twice.csv", "bank.toml",
                                "--id-column", "acct_no"])
    assert twice.exit_code == 2 and "given twice" in twice.output
    assert "Traceback" not in twice.output
    labelled = RUNNER.invoke(app, ["schema", "check", "lender.csv", "lender.toml",
                                   "--id-column", "loan_ref"])
    assert labelled.exit_code == 0 and "bad rate:" in labelled.output, labelled.output
    a_feature = RUNNER.invoke(app, ["schema", "check", "lender.csv", "lender.toml",
                                    "--id-column", "lender_ref"])
    assert a_feature.exit_code == 2 and "also declared in schema" in a_feature.output
