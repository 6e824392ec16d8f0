"""`replay`: re-run one round of a partner's ledger from its opening, on the partner's premises,
and check that the update hashes to what the ledger (and the coordinator's receipt) recorded.

A `train` entry's `replay_commitment` binds the round's randomness seed, the SHA-256 of the
training rows and the optimiser settings (`common.replay.replay_commitment`). Given
the opening (kept by the partner beside its ledger, never sent), the rows and the global model
the round started from (kept by the partner, bound by `model_received_sha256`), DP-SGD runs again
with the mechanism the ENTRY logs (q, σ, clipping norm, steps; the normaliser q·ñ from its
calibration): CPU training is bit-reproducible (`common.learning.training.reproducible_cpu`), so
an honest round replays to the very bytes it sent, and a round trained with another σ, other
rows or another seed cannot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.tables import Split
from common.errors import AuditInputError
from common.privacy.ledger import (
    LEDGER_KIND,
    RECEIPT_KIND,
    check_log,
    entry_hash,
    ledger_event,
    plan_from_calibration,
    read_lines,
)
from common.replay import (
    ReplayOpening,
    read_openings,
    received_models_dir,
    training_rows_sha256,
)

MATCH = "match"
LEDGER_INVALID = "ledger-invalid"
OPENING_MISMATCH = "opening-mismatch"
DATA_MISMATCH = "data-mismatch"
GLOBAL_MODEL_MISMATCH = "global-model-mismatch"
UPDATE_MISMATCH = "update-mismatch"
RECEIPT_MISMATCH = "receipt-mismatch"

REPLAY_KIND = "fedcredit-replay"
REPLAY_FORMAT = 1


@dataclass
class ReplayResult:
    """One round's replay: `reason` is MATCH or the first check that failed."""

    ledger: str
    round: int
    partner: str
    reason: str
    message: str
    update_logged: str = ""
    update_replayed: str = ""
    signatures_checked: bool = False
    receipt_checked: bool = False
    run_id: str = ""
    entry_sha256: str = ""
    """`entry_hash` of the replayed ledger entry: what ties a replay result to a ledger."""

    @property
    def ok(self) -> bool:
        return self.reason == MATCH

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def to_document(self) -> dict[str, Any]:
        """The `replay` field of a signed replay result (`sign_replay`)."""
        return {"ledger": self.ledger, "partner": self.partner, "run_id": self.run_id,
                "round": self.round, "entry_sha256": self.entry_sha256, "match": self.ok,
                "failed_check": None if self.ok else self.reason, "message": self.message,
                "update_logged": self.update_logged, "update_replayed": self.update_replayed,
                "receipt_matched": (self.reason != RECEIPT_MISMATCH) if self.receipt_checked
                else None, "signatures_checked": self.signatures_checked}


def replay_kind():
    """The signed replay result's kind (`empirical_result.SignedKind`): the replay's outcome,
    the command's parameters, fedcredit version, UTC time and signer, signed as one."""
    from common.privacy.audit.empirical_result import HEADER_FIELDS, SignedKind

    return SignedKind(REPLAY_KIND, REPLAY_FORMAT, (*HEADER_FIELDS, "parameters", "replay"),
                      "replay result")


def sign_replay(result: ReplayResult, key, parameters: dict[str, Any]) -> dict[str, Any]:
    """`result` as a replay result document signed with `key` (whoever ran the replay)."""
    from common.privacy.audit.empirical_result import sign_document

    return sign_document(replay_kind(), key, {"parameters": parameters,
                                              "replay": result.to_document()})


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """A model's arrays from an .npz file (no pickles); AuditInputError when unreadable."""
    try:
        with np.load(Path(path), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise AuditInputError(f"{path}: not a readable model (.npz) ({exc})") from exc


def find_opening(openings_file: Path, run_id: str, server_round: int,
                 commitment: str) -> ReplayOpening:
    """The opening of `run_id` round `server_round` (the one naming `commitment` if several)."""
    try:
        openings = read_openings(Path(openings_file))
    except OSError as exc:
        raise AuditInputError(f"{openings_file}: cannot read the openings ({exc})") from exc
    except ValueError as exc:
        raise AuditInputError(str(exc)) from exc
    candidates = [o for o in openings if o.run_id == run_id and o.round == server_round]
    if not candidates:
        raise AuditInputError(f"{openings_file} holds no opening of run {run_id!r} round "
                              f"{server_round}")
    return next((o for o in candidates if o.commitment == commitment), candidates[-1])


def load_replay_rows(csv_path: Path, schema_path: Path, opening: ReplayOpening,
                     signing_key: Path | None = None) -> Split:
    """The partner's training rows, split as the opening records (its own key or the run seed);
    AuditInputError when they cannot be loaded."""
    from common.data.tables import load_partner_csv
    from common.errors import FedcreditError
    from common.privacy.randomness import split_key

    split = opening.split
    if split.get("source") != "csv":
        raise AuditInputError(f"round {opening.round} trained on a simulated "
                              f"{split.get('source')!r} share, not a CSV: replay it with "
                              f"common.privacy.audit.replay.replay_round and its rows")
    if split.get("key") == "signing-key" and signing_key is None:
        raise AuditInputError("the partner's train/test split derives from its signing key: "
                              "pass --split-key (the partner's private key, on its premises)")
    try:
        key = split_key(partner=str(split.get("partner", "")),
                        signing_key=signing_key if split.get("key") == "signing-key" else "",
                        seed=int(split.get("seed", 0)))
        data = load_partner_csv(str(split.get("partner", "")), csv_path, schema_path,
                                test_fraction=float(split["test_fraction"]), split_key=key)
    except (FedcreditError, OSError, ValueError, KeyError) as exc:
        raise AuditInputError(f"cannot load the partner's rows: {exc}") from exc
    return data.train


def ledger_round(ledger_path: Path, server_round: int,
                 keys_dir: Path | None) -> tuple[dict[str, Any], list[str]]:
    """The `train` entry of `server_round` and integrity problems (checked with `keys_dir`)."""
    from common.privacy.audit.verification import load_audit_keys

    if not Path(ledger_path).is_file():
        raise AuditInputError(f"{ledger_path} does not exist or is not a file")
    lines, findings = read_lines(Path(ledger_path))
    if keys_dir is not None:
        findings += check_log(Path(ledger_path), lines, load_audit_keys(keys_dir),
                              kind=LEDGER_KIND)
    entries = [e for _, e in lines if e.get("round") == server_round and e.get("event") == "train"]
    if not entries:
        raise AuditInputError(f"{ledger_path} has no train entry for round {server_round}")
    entry = entries[-1]
    if "replay_commitment" not in entry:
        raise AuditInputError(f"{ledger_path} round {server_round} carries no replay_commitment "
                              f"(written before replayable rounds): it cannot be replayed")
    return entry, [str(f) for f in findings]


def replay_round(ledger_path: Path, server_round: int, rows: Split, openings_file: Path, *,
                 keys_dir: Path | None = None, global_model: Path | None = None,
                 receipts_path: Path | None = None) -> ReplayResult:
    """Replay round `server_round` of the ledger on `rows` (the partner's training rows) with
    its opening; AuditInputError for missing or unreadable inputs."""
    from common.learning.model import build_model, get_weights, set_weights
    from common.learning.training import SAMPLERS, TrainSettings, train
    from common.privacy.crypto import hash_weights

    entry, problems = ledger_round(Path(ledger_path), server_round, keys_dir)
    logged = str(entry.get("update_sent_sha256"))

    def result(reason: str, message: str, replayed: str = "", receipt: bool = False
               ) -> ReplayResult:
        return ReplayResult(str(ledger_path), server_round, str(entry.get("partner")), reason,
                            message, logged, replayed, keys_dir is not None, receipt,
                            str(entry.get("run_id")), entry_hash(entry))

    if problems:
        return result(LEDGER_INVALID, "the ledger does not verify: " + "; ".join(problems[:3]))
    commitment = str(entry["replay_commitment"])
    opening = find_opening(Path(openings_file), str(entry["run_id"]), server_round, commitment)
    try:
        recomputed = opening.recomputed()
    except ValueError as exc:
        raise AuditInputError(f"{openings_file}: round {server_round}'s salt is unusable "
                              f"({exc})") from exc
    if recomputed != commitment:
        return result(OPENING_MISMATCH, "the opening does not open the ledger's replay_commitment "
                                        "(salt, seed, data hash or settings differ from what "
                                        "was committed)")
    data_sha256 = training_rows_sha256(rows.features, rows.labels)
    if data_sha256 != opening.data_sha256:
        return result(DATA_MISMATCH, f"the training rows given hash to {data_sha256[:16]}..., "
                                     f"the committed rows to {opening.data_sha256[:16]}...: "
                                     f"not the rows the round trained on")
    model_path = (Path(global_model) if global_model is not None
                  else received_models_dir(ledger_path) / opening.global_model)
    if not model_path.is_file():
        raise AuditInputError(f"global model {model_path} not found: pass --global-model (the "
                              f"model the round started from)")
    weights = load_weights(model_path)
    if hash_weights(weights) != entry["model_received_sha256"]:
        return result(GLOBAL_MODEL_MISMATCH, f"{model_path} is not the model the round received "
                                             f"(model_received_sha256)")
    settings = opening.settings
    try:
        plan = plan_from_calibration(entry["calibration"], epsilon_budget=entry["epsilon_budget"],
                                     delta=entry["delta"])
        model = build_model(rows.features.shape[1], tuple(int(h) for h in
                                                          settings.get("hidden_layers", [])), 0)
        set_weights(model, weights)
        optimiser = TrainSettings(learning_rate=float(settings["learning_rate"]),
                                  optimizer=str(settings["optimizer"]),
                                  weight_decay=float(settings.get("weight_decay", 0.0)))
        sampler = str(settings.get("poisson_sampler", SAMPLERS[0]))
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown poisson_sampler {sampler!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditInputError(f"cannot rebuild round {server_round}'s training: {exc}") from exc
    train(model, rows, optimiser, seed=opening.seed, dp=ledger_event(entry),
          expected_batch_size=plan.expected_batch_size,
          sampler=sampler)
    replayed = hash_weights(get_weights(model))
    if replayed != logged:
        return result(UPDATE_MISMATCH, f"the replayed update hashes to {replayed[:16]}..., the "
                                       f"ledger's update_sent_sha256 is {logged[:16]}...: the "
                                       f"logged mechanism is not the one that ran", replayed)
    if receipts_path is not None:
        reason = _receipt_problem(Path(receipts_path), entry, replayed, keys_dir)
        if reason:
            return result(RECEIPT_MISMATCH, reason, replayed, True)
    return result(MATCH, "the replayed update hashes to the ledger's update_sent_sha256"
                         + (" and the coordinator's receipt" if receipts_path else ""),
                  replayed, receipts_path is not None)


def _receipt_problem(path: Path, entry: dict[str, Any], replayed: str,
                     keys_dir: Path | None) -> str:
    """Why the coordinator's receipt of this entry does not confirm `replayed` ('' if it does)."""
    from common.privacy.audit.verification import load_audit_keys

    if not path.is_file():
        raise AuditInputError(f"{path} does not exist or is not a file")
    lines, findings = read_lines(path)
    if keys_dir is not None:
        findings += check_log(path, lines, load_audit_keys(keys_dir), kind=RECEIPT_KIND,
                              expected_signer="coordinator")
    if findings:
        return "the receipts do not verify: " + "; ".join(str(f) for f in findings[:3])
    wanted = entry_hash(entry)
    receipt = next((r for _, r in lines if r.get("ledger_entry_sha256") == wanted), None)
    if receipt is None:
        return "no receipt names this ledger entry"
    if receipt.get("update_sha256") != replayed:
        return "the coordinator's receipt names another update than the replayed one"
    return ""
