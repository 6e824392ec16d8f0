"""`fedcredit schema draft`: a schema to review, with every value read from the data marked."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.data.csv_table import RawTable, read_csv
from common.data.draft import LEARNED_MARK, draft_schema
from common.data.schema import encode_table, load_schema
from common.errors import DataValidationError
from simulations.cli import app

HEADER = ("Status", "Amount", "Income", "Job", "Note")
ROWS = [("good", "1200", "80", "fixed", "a1"), ("bad", "5000", "", "freelance", "a2"),
        ("good", "300", "120", "fixed", "a3"), ("good", "800", "95", "", "a4")]


def _table(rows: list[tuple[str, ...]] = ROWS) -> RawTable:
    return RawTable(path="loans.csv", header=HEADER, rows=rows)


def test_every_value_read_from_the_data_is_marked_and_listed() -> None:
    drafted = draft_schema(_table(), label="Status")
    lines = drafted.toml.splitlines()
    marked = [line for line in lines if LEARNED_MARK in line]
    assert any(line.startswith("clip = [300, 5000]") for line in marked)  # Amount's min and max
    assert any(line.startswith("clip = [80, 120]") for line in marked)
    assert any(line.startswith('categories = ["fixed", "freelance"]') for line in marked)
    assert any(line.startswith("fill = 80") for line in marked)
    for line in lines:  # no clip, fill or category list escapes the mark
        if line.startswith(("clip =", "fill =", "label_values =")) or (
                line.startswith("categories =") and '"?"' not in line):
            assert LEARNED_MARK in line, line
    assert "Amount: clip [300, 5000]" in drafted.learned
    assert "Job: categories ['fixed', 'freelance']" in drafted.learned


def test_the_draft_is_a_valid_schema_for_its_own_file(tmp_path: Path) -> None:
    drafted = draft_schema(_table(), label="Status")
    path = tmp_path / "draft.toml"
    path.write_text(drafted.toml)
    schema = load_schema(path)
    assert schema.bad_value == "bad"  # the rarer outcome by default
    features, labels = encode_table(_table(), schema)
    assert features.shape[0] == 4 and labels.tolist() == [0, 1, 0, 0]


def test_an_id_like_text_column_is_left_out_not_listed(tmp_path: Path) -> None:
    rows = [("good" if i % 3 else "bad", str(100 + i), "50", "fixed", f"id-{i}")
            for i in range(40)]
    drafted = draft_schema(_table(rows), label="Status")
    note = drafted.toml.split('name = "Note"')[1]
    assert "feature = false" in note and "id-1" not in drafted.toml
    assert not any(item.startswith("Note") for item in drafted.learned)
    path = tmp_path / "draft.toml"
    path.write_text(drafted.toml)
    features, _ = encode_table(_table(rows), load_schema(path))  # validates, IDs and all
    assert features.shape[0] == 40


@pytest.mark.parametrize(("label", "bad", "pattern"), [
    ("Outcome", None, "no column 'Outcome'"), ("Amount", None, "exactly two values"),
    ("Status", "default", "not one of"),
])
def test_a_bad_label_is_refused_by_name(label: str, bad: str | None, pattern: str) -> None:
    with pytest.raises(DataValidationError, match=pattern):
        draft_schema(_table(), label=label, bad_value=bad)


def test_cli_writes_a_draft_that_checks_and_never_overwrites(tmp_path: Path) -> None:
    csv_path = tmp_path / "loans.csv"
    csv_path.write_text("\n".join(",".join(r) for r in [HEADER, *ROWS]) + "\n")
    out = tmp_path / "schema.toml"
    runner = CliRunner()
    first = runner.invoke(app, ["schema", "draft", str(csv_path), "--label", "Status",
                                "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "learned from the data" in first.output and "Amount: clip" in first.output
    encode_table(read_csv(csv_path), load_schema(out))
    again = runner.invoke(app, ["schema", "draft", str(csv_path), "--label", "Status",
                                "--out", str(out)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    missing = runner.invoke(app, ["schema", "draft", str(csv_path), "--label", "Nope"])
    assert missing.exit_code == 2 and "no column 'Nope'" in missing.output
    assert "Traceback" not in missing.output
