"""A vertical party's own table (common/vertical/parties.py: `load_party_csv`, `load_party` and
`load_vertical_scenario` over a vertical data spec): each party's rows are lined up by the PSI on
its real customer IDs, and a bad table fails naming the file and the column, not with a
traceback. The bundled scenario keeps its made-up IDs and its alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.scenarios import LENDER, PARTIES
from common.data.spec import load_vertical_spec
from common.errors import DataValidationError
from common.vertical.parties import (
    known_ids,
    load_party,
    load_party_csv,
    load_vertical_scenario,
    split_aligned,
    split_seed,
)
from tests.common.vertical.own_tables import (
    BANK_SCHEMA,
    ECOMMERCE_SCHEMA,
    LENDER_SCHEMA,
    OwnTables,
    customer_ref,
    write_own_tables,
)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> OwnTables:
    return write_own_tables(tmp_path_factory.mktemp("own"))


def refs(block: np.ndarray) -> list[int]:
    """The customer numbers k of a view's `*_ref` column (encoded from clip [0, 1000])."""
    return [int(k) for k in np.rint((block[:, 0] + 1.0) / 2.0 * 1000.0)]


def test_the_psi_lines_up_each_partys_own_rows_by_their_real_ids(tables: OwnTables) -> None:
    scenario = load_vertical_scenario(0, spec=load_vertical_spec(tables.spec))
    # The lender orders the common customers by its own row, then splits them (as bundled).
    aligned = [k for k in tables.known[LENDER] if k in tables.common]
    train, test = split_aligned(len(aligned), test_fraction=0.25, seed=split_seed(0))
    for part, positions in (("train", train), ("test", test)):
        expected = [aligned[int(i)] for i in positions]
        for party in PARTIES:  # every party's own row of the same customer, in the same place
            assert refs(getattr(scenario.views[party], part)) == expected, (party, part)
    assert scenario.num_aligned == len(tables.common) < min(map(len, tables.known.values()))
    assert scenario.train_labels.tolist() == [tables.labels[aligned[int(i)]] for i in train]
    assert scenario.known_customers == {p: len(tables.known[p]) for p in PARTIES}


def test_a_party_holds_its_own_ids_and_columns_and_only_the_lender_a_label(
        tables: OwnTables) -> None:
    spec = load_vertical_spec(tables.spec)
    bank = load_party("bank", 0, spec)
    assert bank.ids == tuple(customer_ref(k) for k in tables.known["bank"])  # its own row order
    assert bank.feature_names == ("bank_ref", "income", "income__missing", "segment=retail",
                                  "segment=premium")
    assert bank.labels is None and bank.features.shape == (len(bank.ids), 5)
    lender = load_party(LENDER, 0, spec)
    assert lender.labels is not None
    assert lender.labels.tolist() == [tables.labels[k] for k in tables.known[LENDER]]
    assert "defaulted" not in lender.feature_names and "loan_ref" not in lender.feature_names


def test_without_a_spec_a_party_reads_the_bundled_scenario_as_before() -> None:
    lender, bank = load_party(LENDER, 0), load_party("bank", 0)
    assert lender.ids == tuple(f"cust-{i:06d}" for i in range(4454))
    assert lender.feature_names == ("Time", "Records=no", "Records=yes", "Amount")
    assert bank.ids == tuple(known_ids("bank", 0, 4454)) and bank.labels is None


def _bad_bank(tables: OwnTables, folder: Path, *, rows: str = "", schema: str = BANK_SCHEMA,
              ) -> tuple[Path, Path]:
    """A copy of the bank's table with `rows` appended and `schema` as its schema."""
    csv_path, schema_path = folder / "bank.csv", folder / "bank.toml"
    csv_path.write_text(tables.csv("bank").read_text() + rows, encoding="utf-8")
    schema_path.write_text(schema, encoding="utf-8")
    return csv_path, schema_path


@pytest.mark.parametrize(("party", "rows", "schema", "id_column", "message"), [
    ("bank", "", BANK_SCHEMA, "account", r"bank.csv: no customer-ID column 'account'"),
    ("bank", f"{customer_ref(3)},0.1,3,retail\n", BANK_SCHEMA, "acct_no",
     r"bank.csv: column 'acct_no', rows \d+ and \d+: customer ID 'A-[0-9a-f]{10}' given twice"),
    ("bank", ",0.1,3,retail\n", BANK_SCHEMA, "acct_no",
     r"bank.csv: column 'acct_no', row \d+: missing customer ID ''"),
    ("bank", "NA,0.1,3,retail\n", BANK_SCHEMA, "acct_no", r"missing customer ID 'NA'"),
    ("bank", "", BANK_SCHEMA, "", r"no customer-ID column given"),
    ("bank", "", BANK_SCHEMA.replace('name = "own-bank"', 'name = "own-bank"\nlabel = "x"\n'
                                     'label_values = ["a", "b"]\nbad_value = "b"'),
     "acct_no", r"bank is a passive party and holds no label"),
    ("bank", "", BANK_SCHEMA + '\n[[columns]]\nname = "acct_no"\ntype = "categorical"\n'
                               'categories = ["x"]\n', "acct_no",
     r"customer-ID column 'acct_no' is also declared in schema"),
    (LENDER, "", ECOMMERCE_SCHEMA, "acct_no", r"the lender holds the label, but its schema"),
    ("insurer", "", BANK_SCHEMA, "acct_no", r"unknown vertical party 'insurer'"),
])
def test_a_bad_own_table_fails_naming_the_file_and_column(
        tables: OwnTables, tmp_path: Path, party: str, rows: str, schema: str, id_column: str,
        message: str) -> None:
    csv_path, schema_path = _bad_bank(tables, tmp_path, rows=rows, schema=schema)
    with pytest.raises(DataValidationError, match=message):
        load_party_csv(party, csv_path, schema_path, id_column)


def test_parties_without_enough_common_customers_fail_before_any_stage(
        tables: OwnTables, tmp_path: Path) -> None:
    """The bank knows none of the lender's customers: nothing lines up, and the error says so."""
    for party in PARTIES:
        schema = {"lender": LENDER_SCHEMA, "ecommerce": ECOMMERCE_SCHEMA, "bank": BANK_SCHEMA}
        (tmp_path / f"{party}.toml").write_text(schema[party], encoding="utf-8")
        text = tables.csv(party).read_text()
        if party == "bank":
            text = text.replace("A-", "B-")
        (tmp_path / f"{party}.csv").write_text(text, encoding="utf-8")
    (tmp_path / "spec.toml").write_text(tables.spec.read_text(), encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"spec.toml: the parties share 0 customers "
                                                  r"\(known: lender 228, ecommerce 204, bank"):
        load_vertical_scenario(0, spec=load_vertical_spec(tmp_path / "spec.toml"))
