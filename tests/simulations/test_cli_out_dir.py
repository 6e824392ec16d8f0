"""`fedcredit simulate --out` (issue 12 item 1): a run claims its directory with a manifest;
`--overwrite` removes exactly the files an earlier run's manifest lists and nothing fedcredit did
not write, and refuses otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.errors import OutputDirError
from common.outputs import RUN_MANIFEST, RunLayout
from simulations.cli import app
from simulations.simulate.rundir import finish_run_dir, prepare_run_dir

RUNNER = CliRunner(env={"COLUMNS": "240"})


def _earlier_run(out: Path, status: str = "completed") -> list[str]:
    """What a run leaves behind (claimed, written, marked ended); returns its files."""
    prepare_run_dir(out, overwrite=False, command="simulate")
    layout = RunLayout(out)
    for folder in (layout.keys, layout.dp_ledgers, layout.federated):
        folder.mkdir(parents=True)
    for path in (layout.report_json, layout.report_md, layout.audit_html,
                 layout.keys / "bank.key", layout.dp_ledgers / "bank.jsonl",
                 layout.federated / "model.pt"):
        path.write_text("earlier")
    if status != "running":
        finish_run_dir(out, status)
    return layout.output_files()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_user_file_where_a_run_would_write_is_refused_and_never_deleted(tmp_path: Path) -> None:
    """Before: 'already holds a run (keys)', and --overwrite deleted keys/ with the user's key."""
    out = tmp_path / "OUT"
    (out / "keys").mkdir(parents=True)
    (out / "keys" / "important.key").write_text("the user's own key")
    for extra in ([], ["--overwrite"]):
        result = RUNNER.invoke(app, ["simulate", "--rounds", "1", "--out", str(out), *extra])
        assert result.exit_code == 2, result.output
        assert "no fedcredit run wrote" in result.output and "keys" in result.output
        assert "already holds a run" not in result.output
        assert _tree(out) == {"keys/important.key": b"the user's own key"}


def test_an_earlier_run_is_refused_without_overwrite(tmp_path: Path) -> None:
    files = _earlier_run(tmp_path)
    with pytest.raises(OutputDirError, match="already holds a fedcredit run.*--overwrite"):
        prepare_run_dir(tmp_path, overwrite=False, command="simulate")
    assert RunLayout(tmp_path).output_files() == files


def test_overwrite_removes_exactly_the_earlier_runs_files(tmp_path: Path) -> None:
    _earlier_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")  # not an output name: left alone
    prepare_run_dir(tmp_path, overwrite=True, command="simulate")
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_MANIFEST, "notes.txt"]
    manifest = json.loads((tmp_path / RUN_MANIFEST).read_text())
    assert manifest["status"] == "running" and manifest["files"] == []


def test_a_file_put_beside_an_earlier_run_makes_overwrite_refuse_and_remove_nothing(
        tmp_path: Path) -> None:
    _earlier_run(tmp_path)
    (tmp_path / "keys" / "important.key").write_text("the user's own key")
    before = _tree(tmp_path)
    with pytest.raises(OutputDirError, match="keys/important.key.*did not write"):
        prepare_run_dir(tmp_path, overwrite=True, command="simulate")
    assert _tree(tmp_path) == before


def test_a_run_killed_outright_is_replaced_whole(tmp_path: Path) -> None:
    """A manifest still `running` (SIGKILL, power cut): the run began where no output name
    existed, so everything under them is its own."""
    _earlier_run(tmp_path, status="running")
    prepare_run_dir(tmp_path, overwrite=True, command="simulate")
    assert RunLayout(tmp_path).outputs_present() == []


def test_a_manifest_fedcredit_did_not_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / RUN_MANIFEST).write_text('{"status": "completed"}')
    (tmp_path / "report.md").write_text("mine")
    with pytest.raises(OutputDirError, match="not a fedcredit run manifest"):
        prepare_run_dir(tmp_path, overwrite=True, command="simulate")
    assert (tmp_path / "report.md").read_text() == "mine"


def test_an_empty_or_missing_directory_is_claimed(tmp_path: Path) -> None:
    prepare_run_dir(tmp_path / "new", overwrite=False, command="simulate")
    assert (tmp_path / "new" / RUN_MANIFEST).is_file()
    (tmp_path / "other").mkdir()
    prepare_run_dir(tmp_path / "other", overwrite=False, command="simulate")


def test_a_run_that_fails_is_marked_failed_with_its_reason(tmp_path: Path) -> None:
    import typer

    from common.errors import SimulationFailed
    from simulations.simulate.terminal import guard_run

    prepare_run_dir(tmp_path, overwrite=False, command="simulate")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "bank.key").write_text("written before the failure")

    def work() -> None:
        raise SimulationFailed("federated_dp trained nothing: partner 'bank' failed")

    with pytest.raises(typer.Exit) as ended:
        guard_run(tmp_path, work)
    assert ended.value.exit_code == 1
    manifest = json.loads((tmp_path / RUN_MANIFEST).read_text())
    assert manifest["status"] == "failed" and "partner 'bank' failed" in manifest["message"]
    assert manifest["files"] == ["keys/bank.key"]
