"""`fedcredit sweep` (issue 13, section 3): cells reused by their manifest, interrupted and failed
cells run again, the aggregation across seeds, sweep.csv/.md/.png, and bad options exiting 2.
A stub stands in for `fedcredit simulate`: it claims and finishes each cell's directory as
simulate does and writes a hand-made report.json."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path
from typing import IO

import pytest
import typer
from typer.testing import CliRunner

from common.outputs import RUN_MANIFEST, read_manifest, write_json
from simulations.bench.seeds import sweep_args
from simulations.cli import app
from simulations.simulate.rundir import finish_run_dir, prepare_run_dir
from simulations.sweep import (
    Cell,
    Spec,
    SweepInterrupted,
    cell_dir,
    last_line,
    parse_epsilons,
    parse_seeds,
    simulate_args,
)
from simulations.sweep_cli import run_sweep_cli
from simulations.sweep_report import rows, stat, summarise

RUNNER = CliRunner(env={"COLUMNS": "240"})
SETTINGS = ("federated_dp", "federated_dp_personalized", "federated", "local_only",
            "centralized")
BASE = {"federated_dp": 0.70, "federated_dp_personalized": 0.72, "federated": 0.80,
        "local_only": 0.78, "centralized": 0.85}


def auc(setting: str, epsilon: float, seed: int) -> float:
    """The stub's pooled AUC: DP grows with ε, every setting with the seed."""
    grows = 0.01 * epsilon if setting.startswith("federated_dp") else 0.0
    return BASE[setting] + grows + 0.01 * seed


def fake_report(spec: Spec, epsilon: float, seed: int, out: Path) -> dict:
    """A report.json as simulate writes it, as far as the sweep reads it."""
    def metrics(setting: str, shift: float) -> dict:
        value = auc(setting, epsilon, seed) + shift
        return {"auc": value, "ks": value - 0.3}

    return {"scenario": spec.scenario, "seed": seed, "epsilon": epsilon,
            "config": spec.run_config(epsilon, seed, out).to_flower(),
            "results": {s: {"pooled": metrics(s, 0.0),
                            "partners": {"lender": metrics(s, -0.05), "bank": metrics(s, 0.05)}}
                        for s in SETTINGS},
            "privacy": {p: {"epsilon_spent": 0.999 * epsilon, "epsilon_budget": epsilon}
                        for p in ("lender", "bank")},
            "audit": {"ok": True}}


class StubSimulate:
    """Plays `fedcredit simulate <args>`: `plan[(ε, seed)]` is `ok` (default), `fail` or
    `interrupt`; records every call's arguments."""

    def __init__(self, spec: Spec, plan: dict[tuple[float, int], str] | None = None) -> None:
        self.spec, self.plan, self.calls = spec, plan or {}, []

    def __call__(self, args: list[str], log: IO[str]) -> int:
        self.calls.append(args)
        value = dict(zip(args[1::2], args[2::2], strict=False))
        out = Path(args[args.index("--out") + 1])
        epsilon, seed = float(args[args.index("--epsilon") + 1]), int(
            args[args.index("--seed") + 1])
        prepare_run_dir(out, overwrite="--overwrite" in args, command="simulate")
        what = self.plan.get((epsilon, seed), "ok")
        if what == "interrupt":
            finish_run_dir(out, "interrupted", "stopped by SIGINT")
            raise SweepInterrupted(signal.SIGINT)
        if what == "fail":
            log.write("simulation failed: the bank's partner broke\n")
            finish_run_dir(out, "failed", "broke")
            return 1
        assert value.get("--rounds") == str(self.spec.rounds)
        write_json(out / "report.json", fake_report(self.spec, epsilon, seed, out))
        finish_run_dir(out, "completed")
        return 0

    def cells(self) -> list[tuple[float, int, bool]]:
        """(ε, seed, overwrite) of every call, in order."""
        return [(float(a[a.index("--epsilon") + 1]), int(a[a.index("--seed") + 1]),
                 "--overwrite" in a) for a in self.calls]


SPEC = Spec(rounds=2)


def test_lists_of_budgets_and_seeds_parse() -> None:
    assert parse_epsilons("3, 0.5,1,3") == [0.5, 1.0, 3.0]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    for bad in ("", "1,,2", "x", "0", "-1", "inf", "nan"):
        with pytest.raises(ValueError):
            parse_epsilons(bad)
    for bad in ("", "4-1", "a", "1.5", "-1", "0-"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


@pytest.mark.parametrize(("args", "option"), [
    (["--epsilons", "1,x"], "--epsilons"), (["--epsilons", "0,1"], "--epsilons"),
    (["--seeds", "4-1"], "--seeds"), (["--seeds", ""], "--seeds"),
    (["--rounds", "0"], "--rounds"), (["--scenario", "nope"], "--scenario"),
    (["--scenario", "credit_data_vertical"], "--scenario"), (["--delta", "2"], "--delta"),
    (["--split", "halves"], "--split"), (["--local-epochs", "0"], "--local-epochs"),
])
def test_bad_options_exit_2_naming_the_option_before_anything_runs(
        tmp_path: Path, args: list[str], option: str) -> None:
    out = tmp_path / "sweep"
    result = RUNNER.invoke(app, ["sweep", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_an_out_that_is_a_file_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    out.write_text("mine")
    result = RUNNER.invoke(app, ["sweep", "--epsilons", "1", "--seeds", "0", "--out", str(out)])
    assert result.exit_code == 2 and "--out" in result.output and "not a directory" in (
        result.output)
    assert out.read_text() == "mine"


def test_a_failed_cell_says_what_simulate_said_last(tmp_path: Path) -> None:
    log = tmp_path / "cell.log"
    log.write_text("progress\n╭─ Error ─╮\n│ Invalid value for --epsilon: unreachable │\n╰──╯\n")
    assert last_line(log) == "Invalid value for --epsilon: unreachable"


def test_a_cell_runs_simulate_with_the_spec_its_budget_and_seed(tmp_path: Path) -> None:
    spec = Spec(scenario="lending_club", rounds=5, split="dirichlet", alpha=0.3,
                hidden_layers="16", secure_aggregation=True)
    assert simulate_args(spec, Cell(0.5, 3), tmp_path, overwrite=True) == [
        "simulate", "--scenario", "lending_club", "--rounds", "5", "--split", "dirichlet",
        "--alpha", "0.3", "--delta", "1e-05", "--hidden-layers", "16",
        "--secure-aggregation", "--epsilon", "0.5", "--seed", "3", "--out",
        str(tmp_path / "eps0.5-seed3"), "--overwrite"]
    assert sweep_args([3.0, 1.0], [0, 1], 20, Path("runs/seeds")) == [
        "--epsilons", "3,1", "--seeds", "0,1", "--scenario", "credit_data", "--rounds", "20",
        "--out", "runs/seeds"]


def test_a_sweep_writes_csv_markdown_and_plot_with_mean_and_spread_across_seeds(
        tmp_path: Path) -> None:
    stub = StubSimulate(SPEC)
    results = run_sweep_cli(SPEC, [1.0, 3.0], [0, 1, 2], tmp_path, runner=stub)
    assert [r.outcome for r in results] == ["completed"] * 6
    with (tmp_path / "sweep.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 * len(SETTINGS)
    assert list(table[0])[:6] == ["epsilon", "seed", "setting", "private", "pooled_auc",
                                  "pooled_ks"]
    assert {"lender_auc", "bank_ks", "epsilon_spent_max", "audit_ok", "run_dir"} <= set(table[0])
    row = next(r for r in table if r["setting"] == "federated_dp" and r["epsilon"] == "3.0"
               and r["seed"] == "2")
    assert float(row["pooled_auc"]) == pytest.approx(0.70 + 0.03 + 0.02)
    assert float(row["bank_auc"]) == pytest.approx(0.75 + 0.05)
    assert row["epsilon_spent_max"] and not next(
        r for r in table if r["setting"] == "federated")["epsilon_spent_max"]

    summary = summarise(rows({(r.cell.epsilon, r.cell.seed): r.report for r in results},
                             tmp_path))
    dp = summary["federated_dp"][3.0]["pooled_auc"]
    assert dp.n == 3 and dp.mean == pytest.approx(0.74) and dp.std == pytest.approx(0.01)
    assert summary["federated_dp_personalized"][1.0]["lender_ks"].mean == pytest.approx(
        0.72 + 0.01 + 0.01 - 0.05 - 0.3)
    central = summary["centralized"][None]["pooled_auc"]  # over seeds, not seeds × ε
    assert central.n == 3 and central.mean == pytest.approx(0.86)

    md = (tmp_path / "sweep.md").read_text()
    assert "| federated + DP (global model) | 3 | 0.7400 ± 0.0100 | 0.4400 ± 0.0100 | 3 |" in md
    assert "| centralized pooled, non-private | – | 0.8600 ± 0.0100 |" in md
    assert "| federated, non-private | – | 0.8000 | 0.8100 | 0.8200 | **0.8100** |" in md
    assert "lender | bank" in md and "every audit verified: True" in md
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "logs" / "eps1-seed0.log").exists()


def test_a_rerun_reuses_completed_cells_and_reruns_interrupted_ones(tmp_path: Path) -> None:
    first = StubSimulate(SPEC, {(3.0, 0): "interrupt"})
    with pytest.raises(typer.Exit) as stopped:
        run_sweep_cli(SPEC, [1.0, 3.0], [0, 1], tmp_path, runner=first)
    assert stopped.value.exit_code == 130
    assert first.cells() == [(1.0, 0, False), (1.0, 1, False), (3.0, 0, False)]
    assert read_manifest(cell_dir(tmp_path, Cell(3.0, 0)))["status"] == "interrupted"
    assert not (tmp_path / "sweep.csv").exists()

    second = StubSimulate(SPEC)
    results = run_sweep_cli(SPEC, [1.0, 3.0], [0, 1], tmp_path, runner=second)
    assert second.cells() == [(3.0, 0, True), (3.0, 1, False)]
    assert [r.outcome for r in results] == ["reused", "reused", "completed", "completed"]

    third = StubSimulate(SPEC)
    run_sweep_cli(SPEC, [1.0, 3.0, 5.0], [0, 1], tmp_path, runner=third)
    assert third.cells() == [(5.0, 0, False), (5.0, 1, False)]


def test_a_failed_cell_is_reported_left_out_and_retried(tmp_path: Path) -> None:
    with pytest.raises(typer.Exit) as failed:
        run_sweep_cli(SPEC, [1.0], [0, 1], tmp_path,
                      runner=StubSimulate(SPEC, {(1.0, 1): "fail"}))
    assert failed.value.exit_code == 1
    md = (tmp_path / "sweep.md").read_text()
    assert "did not finish" in md and "eps1-seed1" in md
    assert len(list(csv.DictReader((tmp_path / "sweep.csv").open()))) == len(SETTINGS)
    retry = StubSimulate(SPEC)
    run_sweep_cli(SPEC, [1.0], [0, 1], tmp_path, runner=retry)
    assert retry.cells() == [(1.0, 1, True)]


def test_a_completed_cell_of_another_spec_or_a_foreign_folder_is_refused(
        tmp_path: Path) -> None:
    run_sweep_cli(SPEC, [1.0], [0], tmp_path, runner=StubSimulate(SPEC))
    other = Spec(rounds=3)
    with pytest.raises(typer.BadParameter, match="another spec: num-server-rounds 2") as exc:
        run_sweep_cli(other, [1.0], [0], tmp_path, runner=StubSimulate(other))
    assert exc.value.param_hint == "--out"

    foreign = tmp_path / "eps2-seed0"
    foreign.mkdir()
    (foreign / "report.json").write_text("{}")
    stub = StubSimulate(SPEC)
    with pytest.raises(typer.BadParameter, match=f"no {RUN_MANIFEST}"):
        run_sweep_cli(SPEC, [1.0, 2.0], [0], tmp_path, runner=stub)
    assert stub.calls == []  # refused before any cell ran
    assert json.loads((foreign / "report.json").read_text()) == {}


def test_stat_of_one_value_has_no_spread() -> None:
    assert stat([0.5]).text() == "0.5000"
    assert stat([0.5, 0.7]).text() == "0.6000 ± 0.1414"


def test_the_verdict_is_summarised_across_seeds() -> None:
    """Each cell's per-partner verdict (AUC difference to local-only, bootstrap word) becomes a
    mean ± std across seeds and a count of words per ε and partner."""
    from simulations.sweep_report import verdict_markdown

    def report(difference: float, word: str) -> dict:
        return {"verdict": {"partners": {"bank": {"differences": {
            "federated_dp": {"difference": difference, "low": 0.0, "high": 0.0,
                             "verdict": word}}}}}}

    reports = {(3.0, 0): report(-0.02, "cost"), (3.0, 1): report(0.0, "no clear difference"),
               (3.0, 2): report(0.02, "paid off")}
    text = verdict_markdown(reports)
    assert "| 3 | bank | federated + DP (global model) | +0.0000 ± 0.0200 | 1 / 1 / 1 |" in text
    assert verdict_markdown({(3.0, 0): {}}) == ""


def _two_partner_spec(folder: Path, second: str = "south.csv") -> Path:
    """A data spec of two partners' CSVs under one schema (the bundled credit_data's rows)."""
    from common.data.tables import bundled_path

    folder.mkdir(parents=True, exist_ok=True)
    csv_path, schema_path = bundled_path("credit_data")
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    (folder / "north.csv").write_text("\n".join(lines[:301]) + "\n", encoding="utf-8")
    (folder / second).write_text("\n".join([lines[0], *lines[301:601]]) + "\n",
                                 encoding="utf-8")
    spec = folder / "spec.toml"
    spec.write_text(f'schema = "{schema_path}"\n[partners]\nnorth = "north.csv"\n'
                    f'south = "{second}"\n', encoding="utf-8")
    return spec


def test_a_sweep_over_a_data_spec_runs_simulate_on_it_and_reuses_only_its_cells(
        tmp_path: Path) -> None:
    spec = Spec(data_spec=_two_partner_spec(tmp_path / "data"), rounds=2)
    assert simulate_args(spec, Cell(1.0, 0), tmp_path, overwrite=False)[:3] == [
        "simulate", "--spec", str(tmp_path / "data" / "spec.toml")]
    out = tmp_path / "sweep"
    run_sweep_cli(spec, [1.0], [0], out, runner=StubSimulate(spec))
    assert "own data" in (out / "sweep.md").read_text()
    again = StubSimulate(spec)
    assert [r.outcome for r in run_sweep_cli(spec, [1.0], [0], out, runner=again)] == [
        "reused"]
    other = Spec(data_spec=_two_partner_spec(tmp_path / "other", second="west.csv"), rounds=2)
    with pytest.raises(typer.BadParameter, match="another spec: data-spec"):
        run_sweep_cli(other, [1.0], [0], out, runner=StubSimulate(other))


def test_a_sweep_refuses_a_bad_data_spec_or_bundled_options_with_it(tmp_path: Path) -> None:
    spec = _two_partner_spec(tmp_path / "data")
    for args, option in ((["--spec", str(tmp_path / "gone.toml")], "--spec"),
                         (["--spec", str(spec), "--scenario", "lending_club"], "--spec")):
        result = RUNNER.invoke(app, ["sweep", *args, "--epsilons", "1", "--seeds", "0",
                                     "--out", str(tmp_path / "sweep")])
        assert result.exit_code == 2 and option in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "sweep").exists()
