"""The vertical data spec (common/data/vertical_spec.py, read by common/data/spec.py): each party's
own CSV, schema and ID column; an unknown or missing party, a missing key, a file that is not
there or a schema that does not fit the party's role fails naming the file and the key. A schema
may declare no label (a passive party's); only a labelled one encodes a labelled table."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.csv_table import read_csv
from common.data.schema import encode_features, encode_table, load_schema
from common.data.spec import DataSpec, load_any_spec, load_spec, load_vertical_spec
from common.data.vertical_spec import VerticalSpec
from common.errors import DataValidationError, SchemaError
from tests.common.data.test_spec import FILES, SCHEMA, _csv
from tests.common.vertical.own_tables import ECOMMERCE_SCHEMA, spec_text, write_own_tables


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_own_tables(tmp_path)
    return tmp_path


def test_a_vertical_spec_names_each_partys_csv_schema_and_id_column(folder: Path) -> None:
    spec = load_any_spec(folder / "spec.toml")
    assert isinstance(spec, VerticalSpec) and spec.party_names == ["lender", "ecommerce", "bank"]
    bank = spec.party("bank")
    assert (bank.data, bank.schema, bank.id_column) == (folder / "bank.csv",
                                                       folder / "bank.toml", "acct_no")
    again = folder / "again.toml"  # written with absolute paths, read back the same
    again.write_text(spec.to_toml(), encoding="utf-8")
    assert load_vertical_spec(again).parties == spec.parties


def test_either_form_is_read_by_load_any_spec_and_each_loader_refuses_the_other(
        folder: Path) -> None:
    (folder / "ids.toml").write_text(SCHEMA, encoding="utf-8")
    _csv(folder / "north.csv", range(0, 40))
    _csv(folder / "south.csv", range(40, 80))
    (folder / "h.toml").write_text('mode = "horizontal"\n' + FILES, encoding="utf-8")
    assert isinstance(load_any_spec(folder / "h.toml"), DataSpec)
    with pytest.raises(DataValidationError, match=r"spec.toml: is a vertical spec"):
        load_spec(folder / "spec.toml")
    with pytest.raises(DataValidationError, match=r"h.toml: mode must be 'vertical', got "
                                                  r"'horizontal'"):
        load_vertical_spec(folder / "h.toml")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("[parties.bank]", "[parties.insurer]"),
     r"spec.toml: parties.insurer: unknown vertical party 'insurer'; the parties are "
     r"\['lender', 'ecommerce', 'bank'\]"),
    (lambda t: t.split("[parties.bank]")[0],
     r"spec.toml: a vertical run needs the parties .* exactly once .*missing \['bank'\]"),
    (lambda t: t.replace('id_column = "acct_no"\n', ""),
     r"parties.bank.id_column is missing or not a non-empty string"),
    (lambda t: t.replace('id_column = "acct_no"', 'id_column = "acct_no"\nbudget = 2'),
     r"parties.bank: unknown key\(s\) \['budget'\]"),
    (lambda t: "seed = 3\n" + t, r"unknown key\(s\) \['seed'\] in a vertical spec"),
    (lambda t: t.replace('"bank.csv"', '"gone.csv"'), r"parties.bank: data: no such file .*gone"),
    (lambda t: t.replace('id_column = "acct_no"', 'id_column = "account"'),
     r"parties.bank: id_column 'account' is not a column of .*bank.csv"),
    (lambda t: t.replace('"lender.toml"', '"ecommerce.toml"'),
     r"parties.lender: the lender holds the label, but its schema 'own-shop' declares none"),
    (lambda t: t.replace('"bank.toml"', '"lender.toml"'),
     r"parties.bank: bank is a passive party and holds no label, but its schema 'own-lender' "
     r"declares label 'defaulted'"),
])
def test_a_bad_vertical_spec_fails_naming_the_file_and_the_key(
        folder: Path, edit, message: str) -> None:
    (folder / "spec.toml").write_text(edit(spec_text()), encoding="utf-8")
    with pytest.raises(DataValidationError, match=message):
        load_any_spec(folder / "spec.toml")


def test_a_schema_without_a_label_encodes_features_only(tmp_path: Path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(ECOMMERCE_SCHEMA, encoding="utf-8")
    schema = load_schema(path)
    assert not schema.has_label and schema.feature_names == ["shop_ref", "basket"]
    (tmp_path / "shop.csv").write_text("shopper,shop_ref,basket\nA-1,3,0.5\nA-2,4,-1\n")
    table = read_csv(tmp_path / "shop.csv")
    assert encode_features(table, schema).ravel().tolist() == pytest.approx(
        [-0.994, 0.125, -0.992, -0.25])
    with pytest.raises(DataValidationError, match=r"shop.csv: schema 'own-shop' declares no "
                                                  r"label"):
        encode_table(table, schema)
    path.write_text(ECOMMERCE_SCHEMA.replace("[dataset]", '[dataset]\nbad_value = "bad"'))
    with pytest.raises(SchemaError, match=r"missing required key 'label_values'"):
        load_schema(path)  # label keys come all together or not at all
