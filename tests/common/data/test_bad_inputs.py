"""CSV and schema inputs that used to mislead (issue 12 item 6), as one table: each defect raises
its error type from the loader and makes `fedcredit schema check` exit 2, with a message naming
the file and the line, column or key, and no traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.data.csv_table import read_csv
from common.data.schema import encode_table, load_schema
from common.errors import DataValidationError, FedcreditError, SchemaError
from simulations.cli import app
from tests.conftest import TINY_HEADER, TINY_ROWS, TINY_SCHEMA, csv_text

GOOD_CSV = csv_text(TINY_ROWS).encode("utf-8")


def _rows(index: int, row: tuple[str, ...]) -> bytes:
    rows = list(TINY_ROWS)
    rows[index] = row
    return csv_text(rows).encode("utf-8")


def _schema(old: str, new: str) -> str:
    assert old in TINY_SCHEMA
    return TINY_SCHEMA.replace(old, new, 1)


@dataclass(frozen=True)
class Case:
    """A defect: the files, the error, and what its message must name besides the file."""

    csv: bytes = GOOD_CSV
    schema: str | bytes = TINY_SCHEMA
    error: type[FedcreditError] = DataValidationError
    names: tuple[str, ...] = ()

    @property
    def culprit(self) -> str:
        return "csv" if self.error is DataValidationError else "toml"


CASES = [
    # --- the CSV
    pytest.param(Case(csv=GOOD_CSV.replace(b"freelance,C\ngood", b"freelance,C\ngo\xe9d", 1),
                      names=("line 4", "UTF-8")), id="latin-1-csv"),
    pytest.param(Case(csv=csv_text(TINY_ROWS, (*TINY_HEADER[:-1], "age")).encode(),
                      names=("line 1", "'age'", "more than once")), id="duplicate-header"),
    pytest.param(Case(csv=GOOD_CSV.replace(b"owner,freelance,C", b"owner,freelance,C,x", 1),
                      names=("row 3", "fields")), id="row-too-wide"),
    pytest.param(Case(csv=csv_text(TINY_ROWS, (*TINY_HEADER[:4], "work", "grade")).encode(),
                      names=("missing column 'job'",)), id="missing-column"),
    pytest.param(Case(csv=_rows(2, ("good", "900", "sixty", "owner", "fixed", "B")),
                      names=("column 'age'", "row 4", "non-numeric")), id="non-numeric"),
    pytest.param(Case(csv=_rows(6, ("good", "700", "50", "owner", "contract", "A")),
                      names=("column 'job'", "row 8", "unknown category")),
                 id="unknown-category"),
    pytest.param(Case(csv=_rows(4, ("default", "300", "45", "rent", "fixed", "A")),
                      names=("column 'status'", "row 6")), id="label-outside-values"),
    pytest.param(Case(csv=_rows(3, ("bad", "10", "", "rent", "freelance", "C")),
                      names=("column 'age'", "row 5", "missing value")), id="missing-no-fill"),
    pytest.param(Case(csv=b"", names=("no header",)), id="empty-csv"),
    # --- the schema
    pytest.param(Case(schema=_schema('label = "status"', 'label_colum = "status"'),
                      error=SchemaError, names=("[dataset]", "'label_colum'")),
                 id="dataset-key-typo"),
    pytest.param(Case(schema=TINY_SCHEMA + "\n[options]\nstrict = true\n", error=SchemaError,
                      names=("'options'",)), id="unknown-table"),
    pytest.param(Case(schema=_schema("clip = [18, 80]", "clip = [18, inf]"), error=SchemaError,
                      names=("column 'age'", "clip high", "finite")), id="clip-infinite"),
    pytest.param(Case(schema=_schema("clip = [18, 80]", 'clip = ["a", "b"]'),
                      error=SchemaError, names=("column 'age'", "clip low")),
                 id="clip-not-numbers"),
    pytest.param(Case(schema=_schema("fill = 100", "fill = 5000"), error=SchemaError,
                      names=("column 'income'", "fill", "outside clip")),
                 id="fill-outside-clip"),
    pytest.param(Case(schema=_schema("fill = 100", 'fill = "zero"'), error=SchemaError,
                      names=("column 'income'", "fill")), id="fill-not-a-number"),
    pytest.param(Case(schema=_schema('categories = ["fixed", "freelance"]',
                                     'categories = "fixed"'), error=SchemaError,
                      names=("column 'job'", "categories")), id="categories-not-a-list"),
    pytest.param(Case(schema=_schema("missing_indicator = true", 'missing_indicator = "no"'),
                      error=SchemaError, names=("column 'income'", "missing_indicator")),
                 id="flag-not-a-boolean"),
    pytest.param(Case(schema=_schema('missing_values = ["", "NA"]', 'missing_values = "NA"'),
                      error=SchemaError, names=("[dataset]", "missing_values")),
                 id="missing-values-not-a-list"),
    pytest.param(Case(schema=_schema('name = "tiny"\n', 'name = "tiny"\n# café\n').encode(
                          "latin-1"), error=SchemaError, names=("line 3", "UTF-8")),
                 id="latin-1-schema"),
    pytest.param(Case(schema=_schema('name = "age"', 'name = "income"'), error=SchemaError,
                      names=("duplicate column names ['income']",)), id="duplicate-columns"),
]


def _write(tmp_path: Path, case: Case) -> tuple[Path, Path]:
    csv_path, schema_path = tmp_path / "partner.csv", tmp_path / "partner.toml"
    csv_path.write_bytes(case.csv)
    schema = case.schema if isinstance(case.schema, bytes) else case.schema.encode("utf-8")
    schema_path.write_bytes(schema)
    return csv_path, schema_path


@pytest.mark.parametrize("case", CASES)
def test_bad_input_names_file_and_place_without_a_traceback(tmp_path: Path, case: Case) -> None:
    csv_path, schema_path = _write(tmp_path, case)
    culprit = str(csv_path if case.culprit == "csv" else schema_path)
    with pytest.raises(case.error) as raised:
        encode_table(read_csv(csv_path), load_schema(schema_path))
    message = str(raised.value)
    assert culprit in message and all(name in message for name in case.names), message
    assert raised.value.__cause__ is None or isinstance(raised.value.__cause__, OSError)

    result = CliRunner().invoke(app, ["schema", "check", str(csv_path), str(schema_path)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert culprit in result.output and all(name in result.output for name in case.names)


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Spreadsheet software writes one: it used to make the first column 'missing'."""
    csv_path, schema_path = _write(tmp_path, Case(csv=b"\xef\xbb\xbf" + GOOD_CSV,
                                                  schema=b"\xef\xbb\xbf" + TINY_SCHEMA.encode()))
    table = read_csv(csv_path)
    assert table.header == TINY_HEADER
    features, labels = encode_table(table, load_schema(schema_path))
    assert features.shape[0] == len(TINY_ROWS) == len(labels)


def test_schema_check_prints_what_the_partner_would_train_on(tmp_path: Path) -> None:
    csv_path, schema_path = _write(tmp_path, Case())
    schema = load_schema(schema_path)
    result = CliRunner().invoke(app, ["schema", "check", str(csv_path), str(schema_path)])
    assert result.exit_code == 0, result.output
    for expected in ("rows:     8", "columns:  6 used of 6", "bad rate: 50.00%",
                     f"features: {schema.num_features} encoded",
                     f"layout:   sha256 {schema.layout_sha256}"):
        assert expected in result.output
    run_schema = tmp_path / "run.toml"
    run_schema.write_text(TINY_SCHEMA.replace('["rent", "owner"]', '["owner", "rent"]'))
    result = CliRunner().invoke(app, ["schema", "check", str(csv_path), str(schema_path),
                                      "--against", str(run_schema)])
    assert result.exit_code == 2
    assert "column 'home': categories ['rent', 'owner'] vs ['owner', 'rent']" in result.output
