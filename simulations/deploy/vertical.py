"""Vertical mode on the local federation (`fedcredit federation demo --spec` / `--mode vertical`):
each party's own table for its SuperNode, and the checks a vertical demo passes before any
process starts.

The parties (lender, e-commerce platform, bank) hold different columns of the same customers;
each SuperNode names its own CSV, schema and customer-ID column in its node config (`data-path`,
`schema-path`, `id-column`), the run config says `mode='vertical'`, and the ServerApp relays the
PSI and the sealed releases between them (docs/vertical.md). With a vertical data spec each party
reads its own files where they are; without one the demo writes the bundled scenario
credit_data_vertical as one CSV and schema per party (`export_vertical_party_files`).
"""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

from common.data.scenarios import LENDER, PARTIES, PARTY_COLUMNS, VERTICAL_DATASET
from common.data.tables import bundled_path, load_bundled
from common.data.toml_text import toml_value
from common.data.vertical_spec import VerticalSpec
from common.vertical.parties import known_ids
from simulations.deploy.commands import VERTICAL_ID_COLUMN, PartyTable

LABEL_KEYS = ("label", "label_values", "bad_value")


def spec_tables(spec: VerticalSpec) -> dict[str, PartyTable]:
    """Each party's own CSV, schema and ID column as its node config names them (absolute
    paths: the SuperNodes run in the demo's workspace)."""
    return {p.party: PartyTable(str(p.data.resolve()), str(p.schema.resolve()), p.id_column)
            for p in spec.parties}


def check_vertical_demo(spec: VerticalSpec | None, *, epsilon: float, delta: float,
                        seed: int) -> None:
    """What a vertical demo checks before any process starts; ValueError naming the file, key
    or option otherwise: every party's table read and checked, the tables aligned on their IDs
    and split at the deployed lender's default test fraction (both parts need good and bad
    labels; the lender's own split, by its key, picks other rows of the same sizes), and the
    parties able to calibrate their releases to (`epsilon`, `delta`). Same checks as
    `fedcredit simulate --spec` (`spec` None: the bundled credit_data_vertical)."""
    from common.vertical.parties import load_vertical_scenario
    from common.vertical.settings import DEFAULT_TEST_FRACTION, VerticalSettings
    from simulations.simulate.plan import check_vertical_plan

    if spec is not None:
        for party, table in spec_tables(spec).items():
            for key, value in (("data", table.data), ("schema", table.schema),
                               ("id_column", table.id_column)):
                if "'" in value:
                    raise ValueError(f"{spec.source}: parties.{party}.{key} {value!r} holds a "
                                     f"single quote, which a node config string cannot carry; "
                                     f"rename it")
        load_vertical_scenario(seed, test_fraction=DEFAULT_TEST_FRACTION, spec=spec)
    check_vertical_plan(VerticalSettings(epsilon=epsilon, delta=delta), seed, spec)


def party_schema_toml(party: str) -> str:
    """The bundled credit_data schema cut to `party`'s columns (`PARTY_COLUMNS`): the lender's
    keeps the label, a passive party's declares none; the ratio columns, which read two parties'
    columns, are left out (the vertical scenario leaves them out too)."""
    raw = tomllib.loads(bundled_path(VERTICAL_DATASET)[1].read_text(encoding="utf-8"))
    dataset = {k: v for k, v in raw["dataset"].items()
               if party == LENDER or k not in LABEL_KEYS}
    dataset["name"] = f"{raw['dataset']['name']}-{party}"
    lines = [f"# {party}'s columns of credit_data (credit_data_vertical), written by "
             "`fedcredit federation demo --mode vertical`", "", "[dataset]",
             *(f"{k} = {toml_value(v)}" for k, v in dataset.items())]
    for column in raw["columns"]:
        if column["name"] in PARTY_COLUMNS[party]:
            lines += ["", "[[columns]]", *(f"{k} = {toml_value(v)}" for k, v in column.items())]
    return "\n".join(lines) + "\n"


def export_vertical_party_files(out_dir: Path, *, seed: int = 0) -> dict[str, PartyTable]:
    """Write credit_data_vertical as each party would hold it: `<party>.csv` (its customers,
    ID column `customer_id`, its own columns, the lender also the label) and `<party>.toml`.
    The customers each party knows are the scenario's (`known_ids`: the lender all, each passive
    party a seeded 85-95%)."""
    table, schema = load_bundled(VERTICAL_DATASET)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {}
    for party in PARTIES:
        columns = [*PARTY_COLUMNS[party], *([schema.label] if party == LENDER else [])]
        index = [table.header.index(c) for c in columns]
        csv_path, schema_path = out_dir / f"{party}.csv", out_dir / f"{party}.toml"
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([VERTICAL_ID_COLUMN, *columns])
            for customer in known_ids(party, seed, len(table.rows)):
                row = table.rows[int(customer.split("-")[1])]
                writer.writerow([customer, *(row[i] for i in index)])
        schema_path.write_text(party_schema_toml(party), encoding="utf-8")
        tables[party] = PartyTable(str(csv_path), str(schema_path), VERTICAL_ID_COLUMN)
    return tables
