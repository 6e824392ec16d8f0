"""Bad CLI options and audit inputs (issue 12 items 4-5), as one table: each case exits with status
2 (or the documented code), names the option, key or file at fault, prints no traceback, and
changes no file in a sandbox holding the user's own files (a plain file, a folder named like a
run output with the user's key in it, a read-only folder, an honest audit's ledgers and keys).

Before, `--epsilon inf`, `--epsilon 1e-9`, `--rounds 1000000000` and `--local-epochs 1e6` were
accepted and failed inside the partners (or ran for ever), `--seed -1` failed with numpy's
message, and `--out` naming a file or a read-only folder ended in a traceback."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulations.cli import app
from tests.audit_fixtures import build_federation, make_keys, make_plans

RUNNER = CliRunner(env={"COLUMNS": "240"})
ROOT_IGNORES_MODES = hasattr(os, "geteuid") and os.geteuid() == 0
SIM = ("simulate", "--rounds", "1", "--out", "{sb}/new-run")
VERTICAL = ("simulate", "--scenario", "credit_data_vertical", "--out", "{sb}/new-run")
LEDGER = "{sb}/audit/bank.jsonl"
AUDIT = ("audit", "verify", LEDGER, "--keys", "{sb}/audit/keys")
REPORT = ("audit", "report", LEDGER, "--keys", "{sb}/audit/keys")


@dataclass(frozen=True)
class Case:
    """A command line, and what its message must name (besides exit status and no traceback)."""

    argv: tuple[str, ...]
    names: tuple[str, ...]
    code: int = 2
    needs_modes: bool = False  # a read-only folder: root writes into it anyway


def case(case_id: str, argv: tuple[str, ...], *names: str, code: int = 2,
         needs_modes: bool = False):
    marks = [pytest.mark.skipif(ROOT_IGNORES_MODES, reason="root ignores file modes")] \
        if needs_modes else []
    return pytest.param(Case(argv, names, code, needs_modes), id=case_id, marks=marks)


CASES = [
    # --- simulate: the budget (calibration must be able to reach it, and it must be finite)
    case("epsilon-inf", (*SIM, "--epsilon", "inf"), "--epsilon", "'sim-epsilon'", "finite"),
    case("epsilon-nan", (*SIM, "--epsilon", "nan"), "--epsilon", "'sim-epsilon'"),
    case("epsilon-unreachable", (*SIM, "--epsilon", "1e-9"), "--epsilon", "'sim-epsilon'",
         "cannot calibrate"),
    case("budget-inf", (*SIM, "--budget", "lender=inf"), "--budget", "'sim-budgets'"),
    case("budget-unreachable", (*SIM, "--budget", "bank=1e-9"), "--budget", "partner bank",
         "cannot calibrate"),
    case("delta-zero", (*SIM, "--delta", "0"), "--delta", "'sim-delta'"),
    # --- simulate: what the plan implies (rounds x epochs x steps per epoch)
    case("rounds-absurd", (*SIM, "--rounds", "1000000000"), "--rounds", "'num-server-rounds'"),
    case("rounds-too-many-steps", (*SIM, "--rounds", "50000"), "--rounds", "DP-SGD steps"),
    case("local-epochs-absurd", (*SIM, "--local-epochs", "1e6"), "--local-epochs",
         "'local-epochs'"),
    case("local-epochs-too-many-steps", (*SIM, "--rounds", "20", "--local-epochs", "9000"),
         "--local-epochs", "DP-SGD steps"),
    case("rounds-not-a-number", (*SIM, "--rounds", "ten"), "--rounds"),
    # --- simulate: other options
    case("seed-negative", (*SIM, "--seed", "-1"), "--seed", "'seed'"),
    case("learning-rate-inf", (*SIM, "--learning-rate", "inf"), "--learning-rate"),
    case("batch-size-negative", (*SIM, "--batch-size", "-1"), "--batch-size"),
    case("hidden-layers-text", (*SIM, "--hidden-layers", "wide"), "--hidden-layers"),
    case("scenario-unknown", (*SIM, "--scenario", "mortgages"), "--scenario"),
    case("split-unknown", (*SIM, "--split", "random"), "--split"),
    case("vertical-epsilon-inf", (*VERTICAL, "--epsilon", "inf"), "--epsilon", "finite"),
    case("vertical-epsilon-unreachable", (*VERTICAL, "--epsilon", "1e-9"), "--epsilon",
         "cannot calibrate"),
    case("vertical-seed-negative", (*VERTICAL, "--seed", "-1"), "--seed"),
    case("vertical-unused-option", (*VERTICAL, "--rounds", "5"), "--scenario", "--rounds"),
    # --- simulate: --out
    case("out-is-a-file", ("simulate", "--rounds", "1", "--out", "{sb}/a-file"), "--out",
         "not a directory"),
    case("out-under-a-file", ("simulate", "--rounds", "1", "--out", "{sb}/a-file/run"),
         "--out", "a-file"),
    case("out-holds-user-files", ("simulate", "--rounds", "1", "--out", "{sb}/user"), "--out",
         "keys", "no fedcredit run wrote"),
    case("out-holds-user-files-overwrite",
         ("simulate", "--rounds", "1", "--out", "{sb}/user", "--overwrite"), "--out", "keys",
         "no fedcredit run wrote"),
    case("out-read-only", ("simulate", "--rounds", "1", "--out", "{sb}/read-only/run"), "--out",
         "read-only", needs_modes=True),
    # --- keys new
    case("keys-out-is-a-file", ("keys", "new", "--partner", "bank", "--out", "{sb}/a-file"),
         "--out", "not a directory"),
    case("keys-out-read-only", ("keys", "new", "--partner", "bank", "--out", "{sb}/read-only"),
         "--out", "read-only", needs_modes=True),
    case("keys-partner-path", ("keys", "new", "--partner", "../bank", "--out", "{sb}/new-keys"),
         "--partner"),
    # --- bench
    case("bench-vertical", ("bench", "--scenario", "credit_data_vertical"), "--scenario"),
    case("bench-epsilon-inf", ("bench", "--epsilon", "inf"), "--epsilon"),
    # --- audit inputs
    case("audit-ledger-missing", ("audit", "verify", "{sb}/audit/missing.jsonl", "--keys",
                                  "{sb}/audit/keys"), "missing.jsonl", "does not exist"),
    case("audit-keys-missing", (*AUDIT[:3], "--keys", "{sb}/audit/no-keys"), "--keys",
         "no-keys"),
    case("audit-keys-is-a-file", (*AUDIT[:3], "--keys", "{sb}/a-file"), "--keys", "a-file"),
    case("audit-keys-without-public-keys", (*AUDIT[:3], "--keys", "{sb}/user"),
         "no public keys", "user"),
    case("audit-receipts-missing", (*AUDIT, "--receipts", "{sb}/audit/gone.jsonl"),
         "--receipts", "gone.jsonl"),
    case("audit-odometer-missing", (*AUDIT, "--odometer", "{sb}/audit/gone.jsonl"),
         "--odometer", "gone.jsonl"),
    case("audit-ledger-not-json", ("audit", "verify", "{sb}/a-file", "--keys",
                                   "{sb}/audit/keys"), "a-file:1", "malformed", code=1),
    case("audit-report-out-is-a-folder", (*REPORT, "--out", "{sb}/audit"), "--out"),
    case("audit-report-out-under-a-file", (*REPORT, "--out", "{sb}/a-file/report.html"),
         "--out", "a-file"),
    case("audit-report-out-read-only", (*REPORT, "--out", "{sb}/read-only/report.html"),
         "--out", "read-only", needs_modes=True),
]


@pytest.fixture(scope="module")
def honest_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An honest federation's ledgers, receipts and public keys, built once."""
    fed = build_federation(tmp_path_factory.mktemp("audit") / "fed", keys=make_keys(),
                           plans=make_plans())
    for private in fed.keys_dir.glob("*.key"):
        private.unlink()  # an auditor holds public keys only
    return fed.root


@pytest.fixture
def sandbox(tmp_path: Path, honest_audit: Path, monkeypatch: pytest.MonkeyPatch):
    """The user's files, and the working directory (default outputs would land here)."""
    root = tmp_path / "sandbox"
    root.mkdir()
    (root / "a-file").write_text("the user's notes\n")
    (root / "user" / "keys").mkdir(parents=True)
    (root / "user" / "keys" / "important.key").write_text("the user's own key\n")
    shutil.copytree(honest_audit, root / "audit")
    (root / "read-only").mkdir()
    (root / "read-only" / "kept.txt").write_text("kept\n")
    (root / "read-only").chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.chdir(root)
    yield root
    (root / "read-only").chmod(stat.S_IRWXU)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root` with its mode and, for files, its bytes."""
    return {p.relative_to(root).as_posix(): (p.stat().st_mode,
                                             p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_exits_naming_the_culprit_without_traceback_or_side_effects(
        bad: Case, sandbox: Path) -> None:
    before = snapshot(sandbox)
    argv = [arg.format(sb=sandbox) for arg in bad.argv]
    result = RUNNER.invoke(app, argv)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == bad.code, said
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception)
    assert "Traceback" not in result.output
    for name in bad.names:
        assert name in said, f"{name!r} not in: {said}"
    assert snapshot(sandbox) == before
