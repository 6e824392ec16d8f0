"""A vertical party's own table in the ClientApp (clients/vertical/base.py `party_data`): a
simulated party reads its entry of the run's vertical data spec (`data-spec`), a deployed party
its node config's `data-path`, `schema-path` and `id-column`; the Flower run over the parties'
own CSVs equals the in-process reference, and no customer ID crosses in clear. A party whose
table is bad refuses, naming only itself and the kind of failure; the details stay in its log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.common.serde import message_to_proto

from clients.vertical.base import party_data
from common.config import PartnerConfig, RunConfig
from common.data.spec import load_vertical_spec
from common.errors import DataValidationError
from common.protocol import VFL_HELLO
from common.vertical.in_memory import run_vertical_in_memory
from tests.common.vertical.own_tables import OwnTables, customer_ref, write_own_tables
from tests.flower_helpers import node_context
from tests.vertical_helpers import deliver, keyed_run_config, run_in_process


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> OwnTables:
    return write_own_tables(tmp_path_factory.mktemp("own"))


def test_the_flower_parties_run_on_their_own_csvs_as_the_reference_does(
        tables: OwnTables, tmp_path: Path) -> None:
    run = keyed_run_config(tmp_path, seed=0, data_spec=str(tables.spec))
    flower = run_in_process(run)
    memory = run_vertical_in_memory(0, spec=load_vertical_spec(tables.spec), non_private=False)
    assert flower.summary["metrics"]["dp"] == memory.metrics["dp"]
    universe = [customer_ref(k) for k in range(max(tables.labels) + 1)]
    for message in flower.grid.pushed + flower.grid.pulled:  # PSI values are blinded, rest sealed
        wire = message_to_proto(message).SerializeToString()
        assert not [c for c in universe if c.encode() in wire]


def _deployed(tables: OwnTables, party: str, **node: object) -> dict[str, object]:
    return {"partner": party, "epsilon": 3.0, "delta": 1e-5, "data-path": str(tables.csv(party)),
            "schema-path": str(tables.schema(party)), "ledger-path": "l.jsonl",
            "signing-key": "k.key", **node}


def test_a_deployed_party_reads_its_data_path_schema_path_and_id_column(
        tables: OwnTables) -> None:
    run = RunConfig(mode="vertical")
    partner = PartnerConfig.from_node_config(_deployed(tables, "bank", **{"id-column":
                                                                          "acct_no"}), run)
    data = party_data(run, partner)
    assert data.ids == tuple(customer_ref(k) for k in tables.known["bank"])
    assert data.labels is None and data.feature_names[0] == "bank_ref"
    lender = PartnerConfig.from_node_config(
        _deployed(tables, "lender", **{"id-column": "loan_ref"}), run)
    assert party_data(run, lender).labels is not None
    without = PartnerConfig.from_node_config(_deployed(tables, "bank"), run)
    with pytest.raises(DataValidationError, match=r"vertical party 'bank' lacks 'id-column'"):
        party_data(run, without)


@pytest.mark.parametrize(("node", "logged"), [
    ({}, "lacks 'id-column'"),
    ({"id-column": "account"}, "no customer-ID column 'account'"),
])
def test_a_deployed_party_with_a_bad_table_refuses_and_keeps_the_details(
        tables: OwnTables, caplog: pytest.LogCaptureFixture, node: dict, logged: str) -> None:
    context = node_context(_deployed(tables, "bank", **node), RunConfig(mode="vertical"))
    with caplog.at_level(logging.ERROR):
        reply = deliver(context, VFL_HELLO, {})
    assert reply.has_error()
    assert reply.error.reason == ("bank: its own table failed validation (details are in its "
                                  "own log)")
    assert logged in caplog.text and "Traceback" not in caplog.text
