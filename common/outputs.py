"""Run outputs: the name of every file and folder of a run directory, and their writers.

Every name lives here so that the coordinator that writes a file, the simulation that reads it
and the `--overwrite` guard that removes it cannot drift apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch


# What the coordinator's ServerApp writes into its out-dir.
MODEL_FILE = "model.pt"
MODEL_META_FILE = "model.json"
HISTORY_FILE = "history.json"
RECEIPTS_FILE = "receipts.jsonl"
RESULT_FILE = "vertical.json"  # vertical mode: metrics, ε spent, mechanisms
SCORES_FILE = "vertical_scores.json"  # vertical mode: scores of `vertical-score-ids`
# Keys inside those files that other code reads back.
MODEL_META_CONFIG = "config"  # model.json: the run config
RESULT_METRICS = "metrics"  # vertical.json: metrics by mode and setting
CUSTOMER_SCORE = "score"  # vertical_scores.json: a customer's score

# Reports and the audit of a run (`fedcredit simulate`, `fedcredit federation demo`).
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
AUDIT_HTML = "audit.html"
AUC_PLOT = "pooled_auc_per_round.png"
EPSILON_PLOT = "epsilon_per_round.png"
PARTNERS_CSV = "partners.csv"  # every partner's figures (report.md summarises many partners)
DATA_SPEC_FILE = "data-spec.toml"  # the partners' data of a run on one's own CSVs

# Folders of a `fedcredit simulate` run directory.
KEYS_DIR = "keys"  # every party's Ed25519 key pair; the auditor reads the .pub files
LEDGER_DIR = "ledgers"  # signed privacy ledgers, one `<party>.jsonl` each
FEDERATED_DP_DIR = "federated_dp"  # the coordinator's out-dir of the DP federation
FEDERATED_DIR = "federated"  # ... of the non-private federation
VERTICAL_LEDGER_DIR = "vertical_ledgers"
FLOWER_RUN_DIR = "flower_run"  # the coordinator's out-dir of the vertical federation

# The workspace of `fedcredit federation demo`.
PKI_DIR = "pki"  # what `fedcredit federation init` writes
DATA_DIR = "data"  # each partner's `<partner>.csv` and `.toml`
LOGS_DIR = "logs"  # one `<process>.log` per process started
COORDINATOR_RUN_DIR = "run"  # the coordinator's out-dir
FLWR_HOME_DIR = "flwr-home"  # $FLWR_HOME of the `flwr` CLI
SUPERLINK_DB = "superlink.db"

RUN_MANIFEST = "fedcredit-run.json"
"""Written by `fedcredit simulate` into its --out before anything else: what the run is, its
status (`running`, `completed`, `failed`, `interrupted`) and, once it ended, every file it wrote.
Only a directory holding one is recognised as an earlier run that `--overwrite` may replace."""
RUN_OUTPUTS = (REPORT_JSON, REPORT_MD, AUDIT_HTML, AUC_PLOT, EPSILON_PLOT, PARTNERS_CSV, KEYS_DIR,
               DATA_SPEC_FILE, FEDERATED_DP_DIR, FEDERATED_DIR, VERTICAL_LEDGER_DIR, FLOWER_RUN_DIR)
"""Every name a `fedcredit simulate` run writes at the top of its --out (besides the manifest):
a run starts only where none of them exists, or where they belong to an earlier run's manifest."""
MANIFEST_WRITER = "fedcredit simulate"
RUN_STATUSES = ("running", "completed", "failed", "interrupted")


def ledger_file(directory: Path | str, party: str) -> Path:
    """A simulated party's signed privacy ledger in `directory`."""
    return Path(directory) / f"{party}.jsonl"


PARTNER_OUTCOMES = ("accepted", "refused", "rejected", "failed")
"""How a partner's reply in a round can end (history.json: each round's lists, and the run's
per-partner counts)."""


def deployed_ledger_name(partner: str) -> str:
    """File name of a deployed partner's signed ledger in its own folder."""
    return f"{partner}.ledger.jsonl"


def deployed_odometer_name(partner: str) -> str:
    """File name of a deployed partner's lifetime privacy odometer in its own folder."""
    return f"{partner}.odometer.jsonl"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one `fedcredit simulate --out` directory (horizontal or vertical scenario)."""

    root: Path

    @property
    def keys(self) -> Path:
        """Every simulated party's key pair and the coordinator's."""
        return self.root / KEYS_DIR

    @property
    def federated_dp(self) -> Path:
        """The DP federation's coordinator outputs (horizontal)."""
        return self.root / FEDERATED_DP_DIR

    @property
    def dp_ledgers(self) -> Path:
        """The partners' ledgers of the DP federation (horizontal)."""
        return self.federated_dp / LEDGER_DIR

    @property
    def dp_receipts(self) -> Path:
        """The coordinator's receipts of the DP federation (horizontal)."""
        return self.federated_dp / RECEIPTS_FILE

    @property
    def federated(self) -> Path:
        """The non-private federation's coordinator outputs (horizontal)."""
        return self.root / FEDERATED_DIR

    @property
    def vertical_ledgers(self) -> Path:
        """Each party's ledger of the vertical federation."""
        return self.root / VERTICAL_LEDGER_DIR

    @property
    def flower_run(self) -> Path:
        """The vertical federation's coordinator outputs."""
        return self.root / FLOWER_RUN_DIR

    @property
    def report_json(self) -> Path:
        """The report as data: a contract for later tools."""
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        """The report for people."""
        return self.root / REPORT_MD

    @property
    def audit_html(self) -> Path:
        """The auditor's report on the ledgers (and receipts)."""
        return self.root / AUDIT_HTML

    @property
    def manifest(self) -> Path:
        """The run's manifest (`RUN_MANIFEST`): status and the files the run wrote."""
        return self.root / RUN_MANIFEST

    def outputs_present(self) -> list[str]:
        """The `RUN_OUTPUTS` names that exist in the directory."""
        return [name for name in RUN_OUTPUTS
                if (self.root / name).exists() or (self.root / name).is_symlink()]

    def output_files(self) -> list[str]:
        """Every file (or link) under the `RUN_OUTPUTS` names, relative to the root, sorted."""
        files = []
        for name in self.outputs_present():
            top = self.root / name
            if top.is_dir() and not top.is_symlink():
                files += [p.relative_to(self.root).as_posix() for p in top.rglob("*")
                          if not p.is_dir() or p.is_symlink()]
            else:
                files.append(name)
        return sorted(files)


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The run manifest in `root`, or None when there is none; ValueError when the file is not
    one fedcredit wrote (not JSON, another writer, an unknown status)."""
    path = Path(root) / RUN_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a fedcredit run manifest ({exc})") from None
    if (not isinstance(manifest, dict) or manifest.get("written_by") != MANIFEST_WRITER
            or manifest.get("status") not in RUN_STATUSES
            or not isinstance(manifest.get("files", []), list)):
        raise ValueError(f"{path} is not a fedcredit run manifest")
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write the run manifest of `root` atomically (`write_json`)."""
    write_json(Path(root) / RUN_MANIFEST, {"written_by": MANIFEST_WRITER, **manifest})


def format_number(value: float | None, digits: int = 4, *, style: Literal["f", "g"] = "f",
                  infinity: str | None = None) -> str:
    """`value` with `digits` decimals ("f") or significant digits ("g"); "n/a" for None, and
    `infinity` for ±inf when given (else Python's "inf")."""
    if value is None:
        return "n/a"
    if infinity is not None and math.isinf(value):
        return infinity
    return f"{value:.{digits}{style}}"


def json_safe(value: Any) -> Any:
    """Replace NaN/Inf by None recursively so the result is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write strict, indented JSON atomically (temp file then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def save_model(out_dir: Path, model: torch.nn.Module, metadata: dict[str, Any]) -> None:
    """Save the state_dict (`model.pt`) and JSON metadata (`model.json`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch  # only the coordinator saves a model: keep torch out of config-only imports

    torch.save(model.state_dict(), out_dir / MODEL_FILE)
    write_json(out_dir / MODEL_META_FILE, metadata)
