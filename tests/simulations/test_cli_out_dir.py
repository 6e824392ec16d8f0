"""`fedcredit simulate --out`: a directory holding an earlier run is refused unless --overwrite,
which removes exactly that run's outputs (the names in `common.outputs`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from common.outputs import RUN_MARKERS, RunLayout
from simulations.cli import prepare_out_dir


def _earlier_run(out: Path) -> None:
    """What a horizontal and a vertical run leave behind, plus a file of the user's."""
    layout = RunLayout(out)
    for folder in (layout.keys, layout.dp_ledgers, layout.federated, layout.vertical_ledgers):
        folder.mkdir(parents=True)
    for path in (layout.report_json, layout.report_md, layout.audit_html, out / "notes.txt"):
        path.write_text("earlier")


def test_an_earlier_run_is_refused_and_named(tmp_path: Path) -> None:
    _earlier_run(tmp_path)
    with pytest.raises(typer.BadParameter) as refused:
        prepare_out_dir(tmp_path, overwrite=False)
    assert "report.json, keys, federated_dp, federated, vertical_ledgers, audit.html" in str(
        refused.value)
    assert all((tmp_path / name).exists() for name in RUN_MARKERS)


def test_overwrite_removes_the_earlier_run_only(tmp_path: Path) -> None:
    _earlier_run(tmp_path)
    prepare_out_dir(tmp_path, overwrite=True)
    assert RunLayout(tmp_path).earlier_run() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.md"]


def test_an_empty_or_missing_directory_is_fine(tmp_path: Path) -> None:
    prepare_out_dir(tmp_path / "new", overwrite=False)
    prepare_out_dir(tmp_path, overwrite=False)
