"""Schema parsing, CSV validation errors (file, column, CSV line) and data-independent encoding."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest

from common.data.csv_table import RawTable, read_csv
from common.data.schema import encode_table, load_schema
from common.errors import DataValidationError, SchemaError
from tests.conftest import WriteCase

DATASET = """\
[dataset]
name = "mini"
label = "status"
label_values = ["good", "bad"]
bad_value = "bad"
"""

EXPECTED_FEATURES = [
    "income", "income__missing", "age",
    "home=rent", "home=owner", "home=__other__", "home=__missing__",
    "job=fixed", "job=freelance", "grade",
]


def _load(write_case: WriteCase, rows: list[tuple[str, ...]] | None = None, **kwargs: object
          ) -> tuple[Path, np.ndarray, np.ndarray]:
    csv_path, schema_path = write_case(rows, **kwargs)
    features, labels = encode_table(read_csv(csv_path), load_schema(schema_path))
    return csv_path, features, labels


def _encode_error(write_case: WriteCase, rows: list[tuple[str, ...]] | None = None,
                  **kwargs: object) -> tuple[Path, str]:
    csv_path, schema_path = write_case(rows, **kwargs)
    with pytest.raises(DataValidationError) as info:
        encode_table(read_csv(csv_path), load_schema(schema_path))
    return csv_path, str(info.value)


def _hot_slot(encoded: np.ndarray, block: list[int]) -> int:
    """The one index of a one-hot `block` that is on; all other slots share one 'off' value."""
    values = encoded[block]
    on = int(np.argmax(values))
    off = np.delete(values, on)
    assert np.all(off == off[0]) and values[on] > off[0], f"not one-hot: {values}"
    return block[on]


# --- schema files -----------------------------------------------------------------------------


def test_feature_names_follow_declared_columns(write_case: WriteCase) -> None:
    _, schema_path = write_case()
    schema = load_schema(schema_path)
    assert schema.name == "tiny"
    assert schema.label == "status" and schema.bad_value == "bad"
    assert schema.feature_names == EXPECTED_FEATURES
    assert schema.num_features == len(EXPECTED_FEATURES)
    assert schema.column("home").unknown == "bucket"
    with pytest.raises(KeyError, match="nope"):
        schema.column("nope")


def test_source_hash_is_sha256_of_schema_bytes(write_case: WriteCase) -> None:
    _, schema_path = write_case()
    assert load_schema(schema_path).source_hash == hashlib.sha256(
        schema_path.read_bytes()).hexdigest()


def test_non_feature_column_is_not_encoded_but_still_validated(write_case: WriteCase) -> None:
    schema = DATASET + """
[[columns]]
name = "x"
type = "numeric"
clip = [0, 1]

[[columns]]
name = "region"
type = "categorical"
categories = ["north", "south"]
feature = false
"""
    header = ("status", "x", "region")
    _, features, _ = _load(write_case, [("good", "0.5", "north"), ("bad", "1", "south")],
                           schema=schema, header=header)
    assert features.shape == (2, 1)
    csv_path, message = _encode_error(write_case, [("good", "0.5", "east")],
                                      schema=schema, header=header)
    assert str(csv_path) in message and "'region'" in message and "row 2" in message


MALFORMED_COLUMNS = [
    pytest.param('name = "x"\ntype = "text"\n', r"column 'x'.*type must be one of",
                 id="bad-type"),
    pytest.param('name = "x"\n', r"column 'x'.*missing required key 'type'", id="no-type"),
    pytest.param('type = "numeric"\nclip = [0, 1]\n', r"missing required key 'name'",
                 id="no-name"),
    pytest.param('name = "x"\ntype = "numeric"\n', r"column 'x'.*missing required key 'clip'",
                 id="missing-clip"),
    pytest.param('name = "x"\ntype = "numeric"\nclip = [1]\n', r"column 'x'.*clip must be",
                 id="clip-one-bound"),
    pytest.param('name = "x"\ntype = "numeric"\nclip = [5, 1]\n', r"column 'x'.*low must be <",
                 id="clip-reversed"),
    pytest.param('name = "x"\ntype = "numeric"\nclip = [0, 1]\ntransform = "sqrt"\n',
                 r"column 'x'.*transform must be one of", id="bad-transform"),
    pytest.param('name = "x"\ntype = "numeric"\nclip = [-2, 1]\ntransform = "log1p"\n',
                 r"column 'x'.*log1p needs clip low > -1", id="log1p-domain"),
    pytest.param('name = "x"\ntype = "categorical"\n',
                 r"column 'x'.*missing required key 'categories'", id="no-categories"),
    pytest.param('name = "x"\ntype = "categorical"\ncategories = []\n',
                 r"column 'x'.*non-empty list without repeats", id="empty-categories"),
    pytest.param('name = "x"\ntype = "categorical"\ncategories = ["a", "a"]\n',
                 r"column 'x'.*non-empty list without repeats", id="repeated-categories"),
    pytest.param('name = "x"\ntype = "numeric"\nclip = [0, 1]\nmissing = "drop"\n',
                 r"column 'x'.*missing must be one of", id="bad-missing-policy"),
    pytest.param('name = "x"\ntype = "numeric"\nclip = [0, 1]\nmissing = "fill"\n',
                 r"column 'x'.*needs a numeric column with a fill value", id="fill-without-value"),
    pytest.param('name = "x"\ntype = "categorical"\ncategories = ["a"]\nfill = 0\n',
                 r"column 'x'.*needs a numeric column with a fill value", id="fill-categorical"),
    pytest.param('name = "x"\ntype = "categorical"\ncategories = ["a"]\nunknown = "drop"\n',
                 r"column 'x'.*unknown must be one of", id="bad-unknown-policy"),
    pytest.param('name = "x"\ntype = "ordinal"\ncategories = ["a", "b"]\nunknown = "bucket"\n',
                 r"column 'x'.*ordinal column cannot bucket", id="ordinal-bucket"),
    pytest.param('name = "x"\ntype = "numeric"\nclip = [0, 1]\nclamp = true\n',
                 r"column 'x'.*unknown keys \['clamp'\]", id="unknown-key"),
]


@pytest.mark.parametrize(("column", "pattern"), MALFORMED_COLUMNS)
def test_malformed_column_raises_schema_error(tmp_path: Path, column: str, pattern: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(DATASET + "\n[[columns]]\n" + column, encoding="utf-8")
    with pytest.raises(SchemaError, match=pattern) as info:
        load_schema(path)
    assert str(path) in str(info.value)
    assert "#1" in str(info.value)  # which [[columns]] entry


GOOD_COLUMN = '\n[[columns]]\nname = "x"\ntype = "numeric"\nclip = [0, 1]\n'

MALFORMED_FILES = [
    pytest.param(GOOD_COLUMN, r"missing required key 'dataset'", id="no-dataset"),
    pytest.param(DATASET, r"missing required key 'columns'", id="no-columns"),
    pytest.param(DATASET.replace('label = "status"\n', "") + GOOD_COLUMN,
                 r"\[dataset\]: missing required key 'label'", id="no-label"),
    pytest.param(DATASET.replace('["good", "bad"]', '["good", "bad", "ugly"]') + GOOD_COLUMN,
                 r"label_values must be two values", id="three-label-values"),
    pytest.param(DATASET.replace('bad_value = "bad"', 'bad_value = "worse"') + GOOD_COLUMN,
                 r"label_values must be two values including bad_value", id="bad-value-unknown"),
    pytest.param(DATASET + GOOD_COLUMN + GOOD_COLUMN, r"duplicate column names",
                 id="duplicate-columns"),
    pytest.param(DATASET + GOOD_COLUMN.replace('"x"', '"status"'),
                 r"label column 'status' must not also be a feature", id="label-as-feature"),
    pytest.param("[dataset\nname = 1\n", r"invalid TOML", id="invalid-toml"),
]


@pytest.mark.parametrize(("text", "pattern"), MALFORMED_FILES)
def test_malformed_schema_file_raises_schema_error(tmp_path: Path, text: str,
                                                   pattern: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SchemaError, match=pattern) as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_unreadable_schema_file_raises_schema_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SchemaError, match=re.escape(str(missing))):
        load_schema(missing)


def test_schema_error_is_a_value_error() -> None:
    assert issubclass(SchemaError, ValueError)
    assert issubclass(DataValidationError, ValueError)


def test_numeric_missing_category_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(DATASET + GOOD_COLUMN + 'missing = "category"\n', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"column 'x'.*missing"):
        load_schema(path)


def test_explicit_missing_error_wins_over_fill(write_case: WriteCase) -> None:
    schema = DATASET + GOOD_COLUMN + 'fill = 0.5\nmissing = "error"\n'
    _encode_error(write_case, [("good", "")], schema=schema, header=("status", "x"))


# --- reading and validating CSVs --------------------------------------------------------------


def test_read_csv_strips_and_keeps_rows(write_case: WriteCase) -> None:
    csv_path, _ = write_case(text="status , x\n good , 1 \nbad,2\n")
    table = read_csv(csv_path)
    assert table.header == ("status", "x")
    assert table.rows == [("good", "1"), ("bad", "2")]
    assert table.column("x") == ["1", "2"]
    assert table.path == str(csv_path)


def test_row_with_wrong_width_names_file_and_line(write_case: WriteCase) -> None:
    csv_path, _ = write_case(text="status,x\ngood,1\nbad,2,3\n")
    with pytest.raises(DataValidationError) as info:
        read_csv(csv_path)
    message = str(info.value)
    assert str(csv_path) in message and "row 3" in message


def test_empty_file_and_unreadable_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"empty.*no header"):
        read_csv(empty)
    with pytest.raises(DataValidationError, match=re.escape(str(tmp_path / "none.csv"))):
        read_csv(tmp_path / "none.csv")


def test_missing_column_names_file_and_column(write_case: WriteCase,
                                              tiny_rows: list[tuple[str, ...]]) -> None:
    header = ("status", "income", "age", "home", "work", "grade")  # 'job' renamed
    csv_path, message = _encode_error(write_case, tiny_rows, header=header)
    assert str(csv_path) in message
    assert "missing column 'job'" in message


def test_missing_label_column_is_reported(write_case: WriteCase,
                                          tiny_rows: list[tuple[str, ...]]) -> None:
    header = ("outcome", "income", "age", "home", "job", "grade")
    _, message = _encode_error(write_case, tiny_rows, header=header)
    assert "missing column 'status'" in message


def test_non_numeric_value_names_file_column_and_line(write_case: WriteCase,
                                                      tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[2] = ("good", "900", "sixty", "owner", "fixed", "B")  # CSV line 4
    csv_path, message = _encode_error(write_case, tiny_rows)
    assert str(csv_path) in message
    assert "column 'age'" in message and "row 4" in message and "'sixty'" in message
    assert "non-numeric" in message


def test_non_finite_value_is_rejected(write_case: WriteCase,
                                      tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[0] = ("good", "inf", "30", "rent", "fixed", "A")  # CSV line 2
    _, message = _encode_error(write_case, tiny_rows)
    assert "column 'income'" in message and "row 2" in message and "non-finite" in message


def test_label_outside_declared_values(write_case: WriteCase,
                                       tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[4] = ("default", "300", "45", "rent", "fixed", "A")  # CSV line 6
    csv_path, message = _encode_error(write_case, tiny_rows)
    assert str(csv_path) in message
    assert "column 'status'" in message and "row 6" in message and "'default'" in message


def test_empty_partition_has_no_data_rows(write_case: WriteCase) -> None:
    csv_path, message = _encode_error(write_case, [])
    assert str(csv_path) in message and "no data rows" in message


def test_unknown_category_is_an_error_by_default(write_case: WriteCase,
                                                 tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[6] = ("good", "700", "50", "owner", "contract", "A")  # CSV line 8
    csv_path, message = _encode_error(write_case, tiny_rows)
    assert str(csv_path) in message
    assert "column 'job'" in message and "row 8" in message and "'contract'" in message
    assert 'unknown = "bucket"' in message  # says how to fix


def test_unknown_ordinal_level_is_an_error(write_case: WriteCase,
                                           tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[1] = ("bad", "40", "22", "owner", "freelance", "Z")  # CSV line 3
    _, message = _encode_error(write_case, tiny_rows)
    assert "column 'grade'" in message and "row 3" in message and "'Z'" in message


def test_unknown_category_is_bucketed_when_schema_says_so(write_case: WriteCase) -> None:
    rows = [("good", "120", "30", "caravan", "fixed", "A"),
            ("good", "120", "30", "rent", "fixed", "A")]
    _, features, _ = _load(write_case, rows)
    home = [i for i, name in enumerate(EXPECTED_FEATURES) if name.startswith("home=")]
    bucket = EXPECTED_FEATURES.index("home=__other__")
    assert _hot_slot(features[0], home) == bucket
    assert _hot_slot(features[1], home) == EXPECTED_FEATURES.index("home=rent")


@pytest.mark.parametrize("token", ["", "NA"])
def test_missing_value_without_fill_is_an_error(write_case: WriteCase, token: str,
                                                tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[3] = ("bad", "10", token, "rent", "freelance", "C")  # CSV line 5
    csv_path, message = _encode_error(write_case, tiny_rows)
    assert str(csv_path) in message
    assert "column 'age'" in message and "row 5" in message and "missing value" in message


def test_missing_categorical_without_missing_category_is_an_error(
        write_case: WriteCase, tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[7] = ("bad", "0", "80", "rent", "NA", "C")  # CSV line 9
    _, message = _encode_error(write_case, tiny_rows)
    assert "column 'job'" in message and "row 9" in message and "missing value" in message


@pytest.mark.parametrize("token", ["", "NA"])
def test_missing_value_with_fill_is_filled_and_flagged(write_case: WriteCase, token: str) -> None:
    rows = [("good", token, "30", "rent", "fixed", "A"),
            ("bad", "100", "30", "rent", "fixed", "A")]  # 100 is the declared fill value
    _, features, _ = _load(write_case, rows)
    income, flag = EXPECTED_FEATURES.index("income"), EXPECTED_FEATURES.index("income__missing")
    assert features[0, income] == features[1, income]
    assert features[0, flag] > features[1, flag]  # indicator on for the filled row only
    np.testing.assert_array_equal(np.delete(features[0], flag), np.delete(features[1], flag))


def test_missing_categorical_goes_to_missing_category(write_case: WriteCase) -> None:
    _, features, _ = _load(write_case, [("good", "120", "30", "NA", "fixed", "A")])
    home = [i for i, name in enumerate(EXPECTED_FEATURES) if name.startswith("home=")]
    assert _hot_slot(features[0], home) == EXPECTED_FEATURES.index("home=__missing__")


def test_ordinal_missing_category_sets_indicator(write_case: WriteCase) -> None:
    schema = DATASET + """
[[columns]]
name = "grade"
type = "ordinal"
categories = ["A", "B", "C"]
missing = "category"
"""
    _, features, _ = _load(write_case, [("good", "A"), ("good", "B"), ("bad", "C"), ("bad", "")],
                           schema=schema, header=("status", "grade"))
    level, flag = features[:, 0], features[:, 1]
    assert level[0] < level[1] < level[2]
    assert level[1] == pytest.approx((level[0] + level[2]) / 2)  # evenly spaced levels
    assert flag[3] > flag[0] and flag[0] == flag[1] == flag[2]


def test_row_numbers_are_csv_lines_even_after_blank_lines(write_case: WriteCase) -> None:
    text = "status,x\ngood,1\n\ngood,abc\n"  # 'abc' sits on CSV line 4
    schema = DATASET + GOOD_COLUMN
    _, message = _encode_error(write_case, text=text, schema=schema)
    assert "row 4" in message


# --- encoding ---------------------------------------------------------------------------------


def test_numeric_encoding_is_affine_in_transformed_clip_bounds(write_case: WriteCase) -> None:
    rows = [
        ("good", "0", "18", "rent", "fixed", "A"),  # both clip lows
        ("good", "1000", "80", "rent", "fixed", "A"),  # both clip highs
        ("bad", "120", "49", "rent", "fixed", "A"),
        ("bad", "5000", "10", "rent", "fixed", "A"),  # income above clip, age below clip
        ("good", "-3", "99", "rent", "fixed", "A"),  # income below clip, age above clip
    ]
    _, features, _ = _load(write_case, rows)
    income, age = EXPECTED_FEATURES.index("income"), EXPECTED_FEATURES.index("age")
    for col, low, high in ((income, 0, 1000), (age, 18, 80)):
        assert features[0, col] < features[1, col]
        lo, hi = float(features[0, col]), float(features[1, col])
        position = (math.log1p(120) / math.log1p(1000)) if col == income else (49 - low) / (
            high - low)
        assert features[2, col] == pytest.approx(lo + position * (hi - lo), abs=1e-6)
    assert features[3, income] == features[1, income] and features[3, age] == features[0, age]
    assert features[4, income] == features[0, income] and features[4, age] == features[1, age]


def test_one_hot_and_ordinal_encoding(write_case: WriteCase,
                                      tiny_rows: list[tuple[str, ...]]) -> None:
    _, features, labels = _load(write_case, tiny_rows)
    assert features.dtype == np.float32 and labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [r[0] == "bad" for r in tiny_rows])
    home = [i for i, name in enumerate(EXPECTED_FEATURES) if name.startswith("home=")]
    job = [i for i, name in enumerate(EXPECTED_FEATURES) if name.startswith("job=")]
    grade = EXPECTED_FEATURES.index("grade")
    for row, encoded in zip(tiny_rows, features, strict=True):
        assert _hot_slot(encoded, home) == EXPECTED_FEATURES.index(f"home={row[3]}")
        assert _hot_slot(encoded, job) == EXPECTED_FEATURES.index(f"job={row[4]}")
    by_grade = {row[5]: float(encoded[grade]) for row, encoded in zip(tiny_rows, features,
                                                                       strict=True)}
    assert by_grade["A"] < by_grade["B"] < by_grade["C"]
    assert by_grade["B"] == pytest.approx((by_grade["A"] + by_grade["C"]) / 2)


def test_encoded_features_are_bounded(write_case: WriteCase,
                                      tiny_rows: list[tuple[str, ...]]) -> None:
    rows = [*tiny_rows, ("bad", "1e9", "-40", "moon", "fixed", "C"), ("good", "NA", "200", "",
                                                                      "freelance", "A")]
    _, features, _ = _load(write_case, rows)
    assert np.all(np.isfinite(features))
    assert features.min() >= -1.0 and features.max() <= 1.0


def test_encoding_is_data_independent(write_case: WriteCase) -> None:
    rng = np.random.default_rng(7)
    rows = [
        (str(rng.choice(["good", "bad"])),
         str(rng.choice(["", "NA", str(round(float(rng.uniform(-50, 3000)), 2))])),
         str(int(rng.integers(0, 120))),
         str(rng.choice(["rent", "owner", "boat", "", "NA"])),
         str(rng.choice(["fixed", "freelance"])),
         str(rng.choice(["A", "B", "C"])))
        for _ in range(40)
    ]
    csv_path, schema_path = write_case(rows)
    table, schema = read_csv(csv_path), load_schema(schema_path)
    together, labels = encode_table(table, schema)
    assert together.shape == (40, len(EXPECTED_FEATURES))
    for i, row in enumerate(rows):
        alone, label = encode_table(RawTable(path=table.path, header=table.header, rows=[row]),
                                    schema)
        np.testing.assert_array_equal(alone[0], together[i])
        assert label[0] == labels[i]
    # Reordering or dropping other rows changes nothing either.
    order = rng.permutation(40)[:25]
    shuffled, _ = encode_table(
        RawTable(path=table.path, header=table.header, rows=[rows[i] for i in order]), schema)
    np.testing.assert_array_equal(shuffled, together[order])


def test_extra_csv_columns_are_ignored(write_case: WriteCase) -> None:
    rows = [("good", "120", "30", "rent", "fixed", "A", "secret")]
    _, schema_path = write_case()
    csv_path, _ = write_case(rows, header=("status", "income", "age", "home", "job", "grade",
                                           "ssn"), name="extra")
    features, _ = encode_table(read_csv(csv_path), load_schema(schema_path))
    assert features.shape == (1, len(EXPECTED_FEATURES))

