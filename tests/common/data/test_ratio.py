"""Declared ratio columns: computed row by row from two numeric columns, validated, in the
layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from common.data.csv_table import read_csv
from common.data.schema import encode_table, load_schema
from common.errors import DataValidationError, SchemaError

HEADER = """\
[dataset]
name = "ratios"
label = "status"
label_values = ["good", "bad"]
bad_value = "bad"

[[columns]]
name = "amount"
type = "numeric"
clip = [0, 1000]
fill = 0

[[columns]]
name = "price"
type = "numeric"
clip = [0, 2000]
fill = 0
feature = {price_feature}
"""
RATIO = """
[[columns]]
name = "ltv"
type = "ratio"
numerator = "amount"
denominator = "price"
clip = [0, 2]
fill = 1
"""


def _files(tmp_path: Path, rows: list[str], *, ratio: str = RATIO,
           price_feature: str = "true") -> tuple[Path, Path]:
    schema = tmp_path / "schema.toml"
    schema.write_text(HEADER.format(price_feature=price_feature) + ratio)
    data = tmp_path / "data.csv"
    data.write_text("amount,price,status\n" + "\n".join(rows) + "\n")
    return data, schema


def test_a_ratio_is_the_scaled_quotient_and_the_fill_where_it_is_undefined(
        tmp_path: Path) -> None:
    data, schema_path = _files(tmp_path, ["500,1000,good", "900,300,bad", "NA,100,good",
                                          "100,0,good", "100,NA,bad"])
    schema = load_schema(schema_path)
    features, _ = encode_table(read_csv(data), schema)
    assert schema.feature_names == ["amount", "price", "ltv"]
    ltv = features[:, 2]
    # 0.5 -> -0.5; 3 clipped to 2 -> 1; missing numerator, zero and missing denominator -> fill 1
    assert ltv.tolist() == pytest.approx([-0.5, 1.0, 0.0, 0.0, 0.0])


def test_a_ratio_of_a_column_that_is_not_a_feature_still_validates_its_values(
        tmp_path: Path) -> None:
    data, schema = _files(tmp_path, ["500,cheap,good"], price_feature="false")
    with pytest.raises(DataValidationError, match=r"row 2: ratio 'ltv'.*'cheap'"):
        encode_table(read_csv(data), load_schema(schema))


@pytest.mark.parametrize(("ratio", "message"), [
    (RATIO.replace('denominator = "price"', 'denominator = "cost"'),
     "ratio 'ltv' reads 'cost', which is not a numeric column"),
    (RATIO.replace("fill = 1\n", ""), "a ratio needs a fill value"),
    (RATIO.replace('denominator = "price"\n', ""), "missing required key 'denominator'"),
    (RATIO.replace('type = "ratio"', 'type = "numeric"'),
     "numerator and denominator are for type = 'ratio' only"),
    (RATIO + 'missing = "error"\n', "a ratio's missing policy is 'fill'"),
])
def test_a_bad_ratio_declaration_fails_naming_the_column(tmp_path: Path, ratio: str,
                                                         message: str) -> None:
    _, schema = _files(tmp_path, ["1,1,good"], ratio=ratio)
    with pytest.raises(SchemaError, match=message):
        load_schema(schema)


def test_the_layout_names_what_a_ratio_divides(tmp_path: Path) -> None:
    _, schema = _files(tmp_path, ["1,1,good"])
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    _, other = _files(swapped, ["1,1,good"], ratio=RATIO.replace(
        'numerator = "amount"\ndenominator = "price"',
        'numerator = "price"\ndenominator = "amount"'))
    assert load_schema(schema).layout_sha256 != load_schema(other).layout_sha256


def test_the_bundled_credit_data_ratios_are_finite_and_in_range() -> None:
    from common.data.tables import load_bundled

    table, schema = load_bundled("credit_data")
    features, _ = encode_table(table, schema)
    ratios = [i for i, column in enumerate(schema.feature_columns) if column.derived]
    assert len(ratios) == 3
    block = features[:, ratios]
    assert np.all(np.isfinite(block)) and block.min() >= -1.0 and block.max() <= 1.0
    assert not math.isclose(float(block[:, 0].std()), 0.0)
