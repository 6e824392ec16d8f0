"""`fedcredit simulate --spec / --data` (simulations/simulate/own_data.py): a bad spec exits 2
naming the option and the file or key, with no traceback, before anything is written; a good one
becomes the run's `data-spec` file in --out. (A full simulation on one's own data is checked by
hand: CI time is tight.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.config import RunConfig
from common.outputs import DATA_SPEC_FILE, RUN_MANIFEST
from simulations.cli import app, build_run_config, prepare_out_dir
from simulations.simulate.own_data import resolve_spec, spec_run_config
from simulations.simulate.rundir import finish_run_dir
from tests.common.data.test_spec import FILES, SCHEMA, _csv

RUNNER = CliRunner(env={"COLUMNS": "240"})


@pytest.fixture
def own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: north.csv, south.csv, all.csv (branch column), ids.toml,
    spec.toml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ids.toml").write_text(SCHEMA, encoding="utf-8")
    _csv(tmp_path / "north.csv", range(0, 40))
    _csv(tmp_path / "south.csv", range(40, 100))
    (tmp_path / "spec.toml").write_text(FILES + "[budgets]\nnorth = 2.0\n", encoding="utf-8")
    (tmp_path / "all.csv").write_text(
        "status,id,branch\n" + "".join(f"{'bad' if i % 4 == 0 else 'good'},{i},"
                                       f"{'north' if i < 40 else 'south'}\n"
                                       for i in range(100)), encoding="utf-8")
    return tmp_path


BAD = [
    (["--spec", "spec.toml", "--scenario", "lending_club"], ["--scenario", "--spec"]),
    (["--spec", "spec.toml", "--data", "a=north.csv"], ["--spec", "either"]),
    (["--spec", "gone.toml"], ["--spec", "gone.toml"]),
    (["--spec", "spec.toml", "--split", "iid"], ["--split"]),
    (["--spec", "spec.toml", "--budget", "west=1"], ["--budget", "west", "north"]),
    (["--schema", "ids.toml"], ["--schema", "--data"]),
    (["--data", "north=north.csv", "--data", "south=south.csv"], ["--data", "--schema"]),
    (["--data", "north=north.csv", "--data", "south=gone.csv", "--schema", "ids.toml"],
     ["--data", "partners.south", "gone.csv"]),
    (["--data", "north=north.csv", "--schema", "ids.toml"], ["--data", "at least 2"]),
    (["--data", "all.csv", "--partner-column", "region", "--schema", "ids.toml"],
     ["--data", "'region'", "all.csv"]),
    (["--data", "n=north.csv", "--data", "s=bad.csv", "--schema", "ids.toml"],
     ["--data", "bad.csv", "row 3"]),
]


@pytest.mark.parametrize(("argv", "names"), BAD)
def test_bad_specs_exit_2_naming_the_culprit_before_anything_is_written(
        own: Path, argv: list[str], names: list[str]) -> None:
    (own / "bad.csv").write_text("status,id\ngood,1\nbad,x\n", encoding="utf-8")
    result = RUNNER.invoke(app, ["simulate", "--rounds", "1", "--out", "run", *argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for name in names:
        assert name in result.output, result.output
    assert not (own / "run").exists()


def test_a_good_spec_becomes_the_runs_data_spec_file(own: Path) -> None:
    spec = resolve_spec(None, data=[], partner_column="", schema=None, spec=Path("spec.toml"),
                        split="natural", alpha=0.5, seed=0)
    assert spec is not None
    out = own / "run"
    run = spec_run_config(
        spec, out, "south=1.5",
        lambda **extra: build_run_config(**{**dict(
            scenario="credit_data", epsilon=3.0, delta=1e-5, rounds=2, seed=0, out=out,
            split="natural", alpha=0.5, budgets="", check=False), **extra}),
        lambda: prepare_out_dir(out, overwrite=False))
    assert run.data_spec == str((out / DATA_SPEC_FILE).resolve())
    assert run.schema_path == str((own / "ids.toml").resolve())
    assert run.sim_budgets == "north=2.0,south=1.5"
    assert RunConfig.from_flower(run.to_flower()).partners == ["north", "south"]
    finish_run_dir(out, "completed")
    assert DATA_SPEC_FILE in json.loads((out / RUN_MANIFEST).read_text())["files"]


def test_data_and_partner_column_resolve_to_the_same_partners(own: Path) -> None:
    spec = resolve_spec(None, data=["all.csv"], partner_column="branch",
                        schema=Path("ids.toml"), spec=None, split="natural", alpha=0.5, seed=0)
    assert spec is not None and spec.partner_names == ["north", "south"]
    assert resolve_spec(None, data=[], partner_column="", schema=None, spec=None,
                        split="natural", alpha=0.5, seed=0) is None
