"""Replayable rounds, the partner's side: the hiding commitment a trained round's ledger entry
carries (`replay_commitment`, over the round's seed, a hash of the training rows and the optimiser
settings) and what the partner keeps so that an auditor can replay the round on its premises
(`common.privacy.audit.replay`): the opening and the global model the round started from, both
beside the partner's ledger. Nothing here is sent."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import PartnerConfig, RunConfig
from common.data.tables import PartnerData
from common.learning.training import TrainSettings, sampler_for
from common.privacy.ledger import canonical_bytes

REPLAY_COMMITMENT_TAG = b"fedcredit replay commitment v1\x00"
TRAINING_ROWS_TAG = b"fedcredit training rows v1\x00"
SALT_BYTES = 32


def training_rows_sha256(features: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 (hex) of a partner's training rows as DP-SGD sees them: `TRAINING_ROWS_TAG`, the
    row and column counts (8-byte big-endian each), the features as little-endian float32 in
    row-major order, then the labels as little-endian float32 (training casts both to float32)."""
    x = np.ascontiguousarray(np.asarray(features, dtype="<f4"))
    y = np.ascontiguousarray(np.asarray(labels, dtype="<f4")).reshape(-1)
    rows, columns = (x.shape[0], x.shape[1]) if x.ndim == 2 else (x.shape[0], 1)
    digest = hashlib.sha256(TRAINING_ROWS_TAG)
    digest.update(rows.to_bytes(8, "big") + columns.to_bytes(8, "big"))
    digest.update(x.tobytes())
    digest.update(y.tobytes())
    return digest.hexdigest()


def committed_message(*, seed: int, data_sha256: str, settings: dict[str, Any]) -> bytes:
    """What a replay commitment binds: the canonical JSON (sorted keys, no spaces, ASCII) of
    {"data_sha256": <training rows' SHA-256>, "seed": <the round's randomness seed>,
    "settings": <the optimiser settings the round trained with>}."""
    return canonical_bytes({"data_sha256": data_sha256, "seed": int(seed),
                            "settings": settings})


def replay_commitment(salt: bytes, message: bytes) -> str:
    """SHA-256 (hex) of `REPLAY_COMMITMENT_TAG` || salt (32 random bytes) || message. Hiding as
    long as the salt stays secret and SHA-256 behaves as a random oracle; binding by SHA-256's
    collision resistance."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a commitment salt has {SALT_BYTES} bytes, got {len(salt)}")
    return hashlib.sha256(REPLAY_COMMITMENT_TAG + salt + message).hexdigest()


@dataclass(frozen=True)
class ReplayOpening:
    """What opens one round's `replay_commitment` (kept by the partner, never sent): the salt,
    the seed, the training rows' hash and the settings; plus, outside the commitment, how the
    partner's data was split (to find the rows again) and the file of the global model it
    received (bound by the ledger's `model_received_sha256`)."""

    run_id: str
    round: int
    salt: str
    seed: int
    data_sha256: str
    settings: dict[str, Any]
    commitment: str
    split: dict[str, Any] = field(default_factory=dict)
    global_model: str = ""

    @property
    def message(self) -> bytes:
        return committed_message(seed=self.seed, data_sha256=self.data_sha256,
                                 settings=self.settings)

    def recomputed(self) -> str:
        """The commitment this opening opens (ValueError if the salt is not 32 hex bytes)."""
        return replay_commitment(bytes.fromhex(self.salt), self.message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_opening(*, run_id: str, server_round: int, seed: int, data_sha256: str,
                settings: dict[str, Any], split: dict[str, Any] | None = None,
                global_model: str = "") -> ReplayOpening:
    """A fresh opening: a new 32-byte salt from the OS, and the commitment it opens."""
    salt = secrets.token_bytes(SALT_BYTES)
    message = committed_message(seed=seed, data_sha256=data_sha256, settings=settings)
    return ReplayOpening(run_id=run_id, round=int(server_round), salt=salt.hex(), seed=int(seed),
                         data_sha256=data_sha256, settings=dict(settings),
                         commitment=replay_commitment(salt, message), split=dict(split or {}),
                         global_model=global_model)


def openings_path(ledger_path: str | Path) -> Path:
    """The partner's local file of openings (JSON Lines), beside its ledger: `<ledger>.openings`
    (not `*.jsonl`, so a folder of ledgers globbed for `*.jsonl` holds ledgers only)."""
    path = Path(ledger_path)
    return path.with_name(path.name + ".openings")


def received_models_dir(ledger_path: str | Path) -> Path:
    """Where a partner keeps the global models it trained from: `<ledger>.replay/`."""
    path = Path(ledger_path)
    return path.with_name(path.name + ".replay")


def append_opening(path: Path, opening: ReplayOpening) -> None:
    """Durably append one opening (one JSON line) to the partner's local openings file, readable
    by its owner only (mode 0600, like a private key: a round's seed lets whoever also holds the
    round's update recompute and remove its noise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = canonical_bytes(opening.to_dict()) + b"\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "ab") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_openings(path: Path) -> list[ReplayOpening]:
    """Every opening in a partner's openings file (ValueError naming the line if one is bad)."""
    openings = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            openings.append(ReplayOpening(
                run_id=str(raw["run_id"]), round=int(raw["round"]), salt=str(raw["salt"]),
                seed=int(raw["seed"]), data_sha256=str(raw["data_sha256"]),
                settings=dict(raw["settings"]), commitment=str(raw["commitment"]),
                split=dict(raw.get("split", {})), global_model=str(raw.get("global_model", ""))))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not an opening ({exc})") from exc
    return openings


def replay_settings(run: RunConfig, settings: TrainSettings, train_rows: int) -> dict[str, Any]:
    """The settings a DP round's update depends on beyond its logged mechanism and seed: the
    optimiser's, the model's and how the Poisson sample was drawn (committed with them;
    `common.privacy.audit.replay` trains with them; an opening without `poisson_sampler` was
    written when every sample was drawn by `mask`)."""
    return {"learning_rate": settings.learning_rate, "optimizer": settings.optimizer,
            "weight_decay": settings.weight_decay, "hidden_layers": list(run.hidden),
            "poisson_sampler": sampler_for(train_rows)}


def replay_opening(partner: PartnerConfig, run: RunConfig, ledger_path: Path, run_id: str,
                   server_round: int, seed: int, settings: TrainSettings, data: PartnerData,
                   received: str) -> ReplayOpening:
    """A fresh opening of this round's replay commitment (nothing is written yet: `keep` writes
    it, with the global model the round trains from, once the round's update is accepted)."""
    model_file = _model_file(ledger_path, server_round, received)
    if partner.data_path:
        fraction = (partner.test_fraction if partner.test_fraction is not None
                    else run.test_fraction)
        split: dict[str, Any] = {"source": "csv", "test_fraction": fraction,
                                 "key": "signing-key" if partner.signing_key else "run-seed",
                                 "seed": run.seed, "partner": partner.partner}
    else:
        split = {"source": "spec" if run.data_spec else "scenario", "seed": run.seed}
    return new_opening(run_id=run_id, server_round=server_round, seed=seed,
                       data_sha256=training_rows_sha256(data.train.features, data.train.labels),
                       settings=replay_settings(run, settings, len(data.train)), split=split,
                       global_model=model_file.name)


def _model_file(ledger_path: Path, server_round: int, received: str) -> Path:
    return received_models_dir(ledger_path) / f"round-{int(server_round)}-{received[:16]}.npz"


def keep(ledger_path: Path, opening: ReplayOpening, global_weights: dict[str, np.ndarray],
         received: str) -> None:
    """Durably keep what a replay of this round needs, before the ledger entry that commits to
    it is signed: the global model the round trained from (`<ledger>.replay/`, written to a
    temporary file, fsync'd, then renamed) and the opening (`<ledger>.openings`, 0600)."""
    model_file = _model_file(ledger_path, opening.round, received)
    model_file.parent.parent.mkdir(parents=True, exist_ok=True)
    model_file.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(model_file.parent, 0o700)  # the models a round started from are the partner's own
    partial = model_file.with_suffix(".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        np.savez(handle, **{k: np.asarray(v) for k, v in global_weights.items()})
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, model_file)
    append_opening(openings_path(ledger_path), opening)
