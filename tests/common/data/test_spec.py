"""Data specs (common/data/spec.py): one's own CSVs dealt to simulated partners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import PartnerConfig, RunConfig
from common.data.csv_table import read_csv
from common.data.scenarios import load_scenario
from common.data.schema import load_schema
from common.data.spec import (
    DataSpec,
    load_run_partners,
    load_spec,
    spec_for_scenario,
    spec_from_options,
)
from common.data.tables import bundled_path, split_train_test
from common.errors import DataValidationError
from common.partner import check_layout, load_data
from common.privacy.randomness import split_key

SCHEMA = """\
[dataset]
name = "ids"
label = "status"
label_values = ["good", "bad"]
bad_value = "bad"

[[columns]]
name = "id"
type = "numeric"
clip = [0, 1000]
"""


def _csv(path: Path, ids: range, branch: str | None = None) -> Path:
    """Rows with a unique id; every 4th row bad; an optional `branch` column."""
    head = "status,id" + (",branch" if branch is not None else "")
    rows = [f"{'bad' if i % 4 == 0 else 'good'},{i}" + (f",{branch}" if branch else "")
            for i in ids]
    path.write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def own(tmp_path: Path) -> Path:
    """A folder with north.csv, south.csv, all.csv (branch column), ids.toml."""
    (tmp_path / "ids.toml").write_text(SCHEMA, encoding="utf-8")
    _csv(tmp_path / "north.csv", range(0, 40))
    _csv(tmp_path / "south.csv", range(40, 100))
    north = (tmp_path / "north.csv").read_text().splitlines()
    south = (tmp_path / "south.csv").read_text().splitlines()
    (tmp_path / "all.csv").write_text(
        "\n".join(["status,id,branch", *[r + ",north" for r in north[1:]],
                   *[r + ",south" for r in south[1:]]]) + "\n", encoding="utf-8")
    return tmp_path


def _spec(folder: Path, text: str) -> Path:
    path = folder / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return path


FILES = 'schema = "ids.toml"\n[partners]\nnorth = "north.csv"\nsouth = "south.csv"\n'


def test_spec_file_partners_budgets_and_round_trip(own: Path) -> None:
    spec = load_spec(_spec(own, FILES + '[budgets]\nnorth = 1.5\nsouth = "2:1e-6"\n'))
    assert spec.partner_names == ["north", "south"]
    assert spec.schema == own / "ids.toml"
    assert spec.budgets_text() == "north=1.5,south=2.0:1e-06"
    copy = own / "copy.toml"
    copy.write_text(spec.to_toml())
    again = load_spec(copy)
    assert (again.files, again.budgets, again.schema) == (spec.files, spec.budgets, spec.schema)


def test_shared_csv_partners_are_sorted_column_values(own: Path) -> None:
    spec = load_spec(_spec(own, 'schema = "ids.toml"\ndata = "all.csv"\n'
                                'partner_column = "branch"\n'))
    assert spec.partner_names == ["north", "south"]
    grouped = load_spec(_spec(own, 'schema = "ids.toml"\ndata = "all.csv"\npartner_column = '
                                   '"branch"\n[groups]\nb = ["south"]\na = ["north"]\n'))
    assert grouped.partner_names == ["b", "a"]
    sizes = {p.partner: len(p.train) + len(p.test)
             for p in grouped.load_partners(seed=0, test_fraction=0.25)}
    assert sizes == {"a": 40, "b": 60}


@pytest.mark.parametrize(("text", "names"), [
    ('schema = "ids.toml"\n[partners]\nnorth = "north.csv"\n', ["at least 2 partners"]),
    ('schema = "ids.toml"\n[partners]\nnorth = "north.csv"\nsouth = "gone.csv"\n',
     ["partners.south", "gone.csv"]),
    ('schema = "nope.toml"\n[partners]\nnorth = "north.csv"\nsouth = "south.csv"\n',
     ["schema", "nope.toml"]),
    (FILES + "[budgets]\nwest = 1.0\n", ["budgets.west", "north", "south"]),
    (FILES + '[budgets]\nnorth = "lots"\n', ["budgets.north", "'lots'"]),
    (FILES + "[budgets]\nnorth = -1.0\n", ["budgets.north", "epsilon"]),
    ('schema = "ids.toml"\ndata = "all.csv"\npartner_column = "region"\n',
     ["partner_column 'region'", "all.csv"]),
    ('schema = "ids.toml"\ndata = "all.csv"\n', ["partner_column"]),
    ('schema = "ids.toml"\ndata = "all.csv"\npartner_column = "branch"\n[partners]\n'
     'north = "north.csv"\n', ["not both"]),
    ('schema = "ids.toml"\n', ["no partners"]),
    ('[partners]\nnorth = "north.csv"\nsouth = "south.csv"\n', ["'schema'"]),
    ("colour = 1\n" + FILES, ["unknown key", "colour"]),
    (FILES.replace('"south.csv"', "3"), ["partners.south", "CSV path"]),
    ('schema = "ids.toml"\n[partners]\ncoordinator = "north.csv"\nsouth = "south.csv"\n',
     ["'coordinator'"]),
    ('schema = "ids.toml"\n[partners]\n"a/b" = "north.csv"\nsouth = "south.csv"\n',
     ["'a/b'"]),
    ("schema = [", ["not a valid TOML"]),
])
def test_bad_spec_files_name_the_file_and_key(own: Path, text: str, names: list[str]) -> None:
    path = _spec(own, text)
    with pytest.raises(DataValidationError) as err:
        load_spec(path)
    for name in [str(path), *names]:
        assert name in str(err.value)


def test_groups_must_claim_every_row(own: Path) -> None:
    spec = load_spec(_spec(own, 'schema = "ids.toml"\ndata = "all.csv"\npartner_column = '
                                '"branch"\n[groups]\na = ["north"]\nb = ["east"]\n'))
    with pytest.raises(DataValidationError, match="line 42: branch 'south' is in no partner"):
        spec.load_partners(seed=0, test_fraction=0.25)


def test_too_few_rows_for_a_split(own: Path) -> None:
    _csv(own / "tiny.csv", range(1, 4))  # three good rows, no bad one
    spec = load_spec(_spec(own, 'schema = "ids.toml"\n[partners]\nnorth = "north.csv"\n'
                                'south = "tiny.csv"\n'))
    with pytest.raises(DataValidationError, match="tiny.csv"):
        spec.load_partners(seed=0, test_fraction=0.25)


def test_a_bad_csv_line_fails_naming_file_and_line(own: Path) -> None:
    (own / "south.csv").write_text("status,id\ngood,1\nbad,x\n")
    with pytest.raises(DataValidationError, match=r"south.csv.*row 3"):
        load_spec(_spec(own, FILES)).load_partners(seed=0, test_fraction=0.25)


def test_options_build_the_same_spec(own: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(own)
    spec = spec_from_options(["north=north.csv", "south=south.csv"], "ids.toml")
    assert spec.files == load_spec(_spec(own, FILES)).files
    assert spec_from_options(["all.csv"], "ids.toml", "branch").partner_names == ["north",
                                                                                   "south"]
    for data, schema, column, match in ((["north.csv"], "ids.toml", "", "NAME=CSV"),
                                        (["a=north.csv", "a=south.csv"], "ids.toml", "",
                                         "more than once"),
                                        (["north=north.csv"], "", "", "--schema is required"),
                                        (["a=all.csv"], "ids.toml", "branch", "exactly one")):
        with pytest.raises(DataValidationError, match=match):
            spec_from_options(data, schema, column)


def test_partner_loads_exactly_its_rows_with_the_keyed_split(own: Path) -> None:
    spec_path = _spec(own, FILES)
    run = RunConfig(data_spec=str(spec_path), seed=7, sim_dp=False)
    assert run.partners == ["north", "south"]
    partner = PartnerConfig.from_node_config({"partition-id": 1}, run)
    data = load_data(partner, run)
    assert data.partner == "south"
    train, test = split_train_test(read_csv(own / "south.csv"), load_schema(own / "ids.toml"),
                                   test_fraction=run.test_fraction,
                                   key=split_key(partner="south", seed=7))
    assert np.array_equal(data.train.features, train.features)
    assert np.array_equal(data.test.labels, test.labels)
    ids = np.concatenate([data.train.features, data.test.features]).ravel()
    assert len(ids) == 60  # south's rows, none of north's
    assert [p.partner for p in load_run_partners(run)] == ["north", "south"]
    assert check_layout(partner, run, {})[0] == load_schema(own / "ids.toml").layout().sha256


def test_run_config_checks_the_spec_and_its_budgets(own: Path) -> None:
    spec_path = str(_spec(own, FILES))
    with pytest.raises(ValueError, match="sim-budgets names unknown partner 'bank'"):
        RunConfig(data_spec=spec_path, sim_budgets="bank=1")
    with pytest.raises(ValueError, match="'split'"):
        RunConfig(data_spec=spec_path, split="iid")
    with pytest.raises(ValueError, match="run config key 'data-spec'"):
        RunConfig(data_spec=str(own / "missing.toml"))
    assert RunConfig.from_flower({"data-spec": spec_path}).partners == ["north", "south"]


def test_bundled_scenario_is_a_spec_of_the_same_kind() -> None:
    spec = spec_for_scenario("credit_data")
    assert isinstance(spec, DataSpec) and spec.schema == bundled_path("credit_data")[1]
    ours, theirs = spec.load_partners(seed=3, test_fraction=0.25), load_scenario("credit_data",
                                                                                 seed=3)
    assert [p.partner for p in ours] == [p.partner for p in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a.train.features, b.train.features)
        assert np.array_equal(a.test.labels, b.test.labels)
