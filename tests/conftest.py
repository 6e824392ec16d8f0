"""Shared fixtures: tiny, hand-written CSV + schema files for unit tests of the data layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

# The unit tests train tiny models on a few hundred rows: intra-op threads only add overhead
# (and are very slow on a busy machine), so keep torch single-threaded for a fast, stable suite.
torch.set_num_threads(1)

TINY_SCHEMA = """\
[dataset]
name = "tiny"
label = "status"
label_values = ["good", "bad"]
bad_value = "bad"
missing_values = ["", "NA"]

[[columns]]
name = "income"
type = "numeric"
clip = [0, 1000]
transform = "log1p"
fill = 100
missing_indicator = true

[[columns]]
name = "age"
type = "numeric"
clip = [18, 80]

[[columns]]
name = "home"
type = "categorical"
categories = ["rent", "owner"]
unknown = "bucket"
missing = "category"

[[columns]]
name = "job"
type = "categorical"
categories = ["fixed", "freelance"]

[[columns]]
name = "grade"
type = "ordinal"
categories = ["A", "B", "C"]
"""

TINY_HEADER = ("status", "income", "age", "home", "job", "grade")

# Eight valid rows, 4 good and 4 bad (enough for a stratified split).
TINY_ROWS: list[tuple[str, ...]] = [
    ("good", "120", "30", "rent", "fixed", "A"),
    ("bad", "40", "22", "owner", "freelance", "C"),
    ("good", "900", "61", "owner", "fixed", "B"),
    ("bad", "10", "19", "rent", "freelance", "C"),
    ("good", "300", "45", "rent", "fixed", "A"),
    ("bad", "55", "25", "owner", "fixed", "B"),
    ("good", "700", "50", "owner", "freelance", "A"),
    ("bad", "0", "80", "rent", "freelance", "C"),
]

WriteCase = Callable[..., tuple[Path, Path]]


@pytest.fixture
def tiny_rows() -> list[tuple[str, ...]]:
    """Eight valid rows of the tiny schema (a fresh copy per test)."""
    return list(TINY_ROWS)


def csv_text(rows: Sequence[Sequence[str]], header: Sequence[str] = TINY_HEADER) -> str:
    """CSV text with `header` on line 1 and `rows` on lines 2, 3, ..."""
    return "\n".join(",".join(r) for r in [tuple(header), *rows]) + "\n"


@pytest.fixture
def write_case(tmp_path: Path) -> WriteCase:
    """Write a CSV (rows or raw text) and a schema (default: TINY_SCHEMA) into tmp_path."""

    def _write(rows: Sequence[Sequence[str]] | None = None, *, text: str | None = None,
               schema: str = TINY_SCHEMA, header: Sequence[str] = TINY_HEADER,
               name: str = "partner") -> tuple[Path, Path]:
        csv_path = tmp_path / f"{name}.csv"
        schema_path = tmp_path / f"{name}.toml"
        if text is None:
            text = csv_text(TINY_ROWS if rows is None else rows, header)
        csv_path.write_text(text, encoding="utf-8")
        schema_path.write_text(schema, encoding="utf-8")
        return csv_path, schema_path

    return _write


@pytest.fixture(scope="module")
def accountant():
    """One dp_accounting recomputer per test module: it remembers ledgers already recomputed."""
    from common.privacy.audit import IndependentAccountant

    return IndependentAccountant()


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, accountant) -> Callable[..., object]:
    """The audit CLI in-process, sharing the module's recomputer (keeps audit tests fast)."""
    from functools import partial

    from typer.testing import CliRunner

    import common.privacy.audit as audit_package
    from common.privacy.audit import verify
    from simulations.audit.cli import audit_app

    monkeypatch.setattr(audit_package, "verify", partial(verify, accountant=accountant))
    runner = CliRunner(env={"COLUMNS": "400"})  # long temporary paths must not wrap

    def run(*args: object):
        return runner.invoke(audit_app, [str(a) for a in args])

    return run
