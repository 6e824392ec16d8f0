"""`fedcredit federation demo` in vertical mode, without starting a process: each party's
SuperNode names its OWN table (data-path, schema-path, id-column) and the run config says
mode='vertical' (checked by parsing them as Flower does and loading each party's table the way
its ClientApp does); bad input exits 2 with a clear message before anything starts. The real
loopback run is too slow for CI; docs/vertical.md gives its commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from clients.vertical.base import party_data
from common.config import PartnerConfig, RunConfig
from common.data.scenarios import LENDER, PARTIES
from common.data.spec import load_vertical_spec
from simulations.cli import app
from simulations.deploy.commands import FederationCommands
from simulations.deploy.local import DemoOptions, LocalFederation
from simulations.deploy.vertical import export_vertical_party_files
from tests.common.vertical.own_tables import ID_COLUMNS, OwnTables, customer_ref, write_own_tables

RUNNER = CliRunner(env={"COLUMNS": "240"})


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> OwnTables:
    return write_own_tables(tmp_path_factory.mktemp("own"))


def _node(fed: LocalFederation, party: str) -> dict:
    args = fed.supernode_command(party)
    assert args[0] == "flower-supernode" and args[-2] == "--node-config"
    return parse_config_args([args[-1]])


def _run_config(fed: LocalFederation) -> RunConfig:
    args = fed.run_command()
    return RunConfig.from_flower(parse_config_args([args[args.index("--run-config") + 1]]))


def test_each_party_gets_its_own_table_and_the_run_config_is_vertical(
        tables: OwnTables, tmp_path: Path) -> None:
    options = DemoOptions(spec=load_vertical_spec(tables.spec), epsilon=2.5,
                          superlink_port=19100, supernode_port=19101)
    assert options.vertical and options.partners == list(PARTIES)
    fed = LocalFederation(tmp_path / "w", options)  # starts nothing
    run = _run_config(fed)
    assert run.mode == "vertical" and run.vertical and run.seed == options.seed
    assert run.out_dir == str(fed.run_dir) and not run.receipts_path
    ports = set()
    for party in PARTIES:
        node = _node(fed, party)
        assert node["partner"] == party and node["epsilon"] == 2.5
        assert node["data-path"] == str(tables.csv(party).resolve())
        assert node["schema-path"] == str(tables.schema(party).resolve())
        assert node["id-column"] == ID_COLUMNS[party]
        assert node["federation-keys"] == f"{fed.pki}/auditor/keys"
        assert "odometer-path" not in node and "lifetime-epsilon" not in node
        assert node.get("release-evaluation") is (True if party == LENDER else None)
        ports.add(fed.supernode_command(party)[fed.supernode_command(party).index("--port") + 1])
        # What the party's ClientApp makes of it: its own customers, from its own CSV.
        data = party_data(run, PartnerConfig.from_node_config(node, run))
        assert set(data.ids) == {customer_ref(k) for k in tables.known[party]}
        assert (data.labels is not None) == (party == LENDER)
    assert ports == {"19101", "19102", "19103"}
    audit = fed.commands.audit(options.partners)
    assert "--receipts" not in audit and "--odometer" not in audit


def test_bundled_vertical_mode_writes_each_partys_columns(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "w", DemoOptions(mode="vertical"))
    bank = _node(fed, "bank")
    assert bank["data-path"] == f"{fed.workspace}/data/bank.csv"
    assert bank["id-column"] == "customer_id"
    tables = export_vertical_party_files(tmp_path / "data", seed=0)
    header = Path(tables["bank"].data).read_text().splitlines()[0].split(",")
    assert header == ["customer_id", "Income", "Assets", "Debt", "Seniority", "Job"]
    lender_schema = Path(tables[LENDER].schema).read_text()
    assert 'label = "Status"' in lender_schema and "label" not in Path(
        tables["bank"].schema).read_text()


def test_the_horizontal_commands_are_unchanged() -> None:
    c = FederationCommands(pki="/p", data="/d", work="/w", partners="/h")
    assert c.node_config("bank", 3.0, 1e-5) == (
        "partner='bank' epsilon=3.0 delta=1e-05 data-path='/d/bank.csv' "
        "schema-path='/d/bank.toml' ledger-path='/h/bank/bank.ledger.jsonl' "
        "signing-key='/h/bank/bank.key' "
        "odometer-path='/h/bank/bank.odometer.jsonl' lifetime-epsilon=10.0")
    assert "--receipts" in c.audit(["bank"]) and "mode=" not in c.run_config(3, 2)


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a process was started")

    monkeypatch.setattr(LocalFederation, "prepare", refuse)
    monkeypatch.setattr(LocalFederation, "_spawn", refuse)


def _demo(tmp_path: Path, *args: str):
    out = tmp_path / "out"
    result = RUNNER.invoke(app, ["federation", "demo", "--out", str(out),
                                 "--superlink-port", "19100", "--supernode-port", "19101", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    return " ".join(" ".join(result.output.split()).replace("│", "").split())


@pytest.mark.usefixtures("nothing_starts")
def test_bad_input_exits_2_before_anything_starts(tables: OwnTables, tmp_path: Path) -> None:
    spec = str(tables.spec)
    assert "does not apply to a vertical run" in _demo(
        tmp_path, "--spec", spec, "--secure-aggregation")
    assert "does not apply to a vertical run" in _demo(
        tmp_path, "--mode", "vertical", "--secure-aggregation")
    assert "--rounds not used by a vertical run" in _demo(tmp_path, "--spec", spec,
                                                          "--rounds", "5")
    assert "drop --mode horizontal" in _demo(tmp_path, "--spec", spec, "--mode", "horizontal")
    assert "must be 'horizontal' or 'vertical'" in _demo(tmp_path, "--mode", "diagonal")
    horizontal = tmp_path / "horizontal.toml"
    horizontal.write_text(f'schema = "{tables.schema(LENDER)}"\n[partners]\n'
                          f'a = "{tables.csv(LENDER)}"\n')
    assert "is not a vertical data spec" in _demo(tmp_path, "--spec", str(horizontal))
    missing = tables.folder / "missing.toml"  # next to the tables: relative paths resolve
    missing.write_text(tables.spec.read_text().replace('"bank.csv"', '"no-such.csv"'))
    assert "parties.bank: data: no such file" in _demo(tmp_path, "--spec", str(missing))
    assert "cannot read data spec" in _demo(tmp_path, "--spec", str(tmp_path / "absent.toml"))
    duplicated = tmp_path / "dup"
    dup = write_own_tables(duplicated)
    rows = dup.csv("bank").read_text().splitlines()
    dup.csv("bank").write_text("\n".join([*rows, rows[1]]) + "\n")
    assert "given twice" in _demo(tmp_path, "--spec", str(dup.spec))
