"""Where a partner's Poisson sampling, DP noise and train/test split get their randomness: one
policy for every mode."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_KEY_INFO = b"fedcredit train/test split key v1"


def noise_seed(*, deployed: bool, simulated: int) -> int:
    """The seed of a partner's sampling and noise.

    A deployed partner draws it from the operating system: the coordinator sets the run seed, and
    whoever knows the seed can recompute the noise and subtract it from a release. A simulated
    partner uses `simulated` (derived from the run seed), so a simulation is reproducible; the
    analyst holds all the data there anyway.
    """
    return secrets.randbits(63) if deployed else simulated


def split_key(*, partner: str, signing_key: str | Path = "", seed: int = 0,
              deployed: bool = False) -> bytes:
    """The secret key of a partner's train/test split (`common.data.tables.record_in_test`).

    A partner with a signing key derives it from that key with HKDF, so only the partner can
    compute which of its records are test rows, and the split is stable across runs and restarts
    whatever seed the coordinator sets. A simulated partner without one derives it from the run
    seed and its name, so a simulation is reproducible and seeds vary the split. A deployed
    partner must have a signing key: the coordinator sets the seed.
    """
    if deployed and not signing_key:
        raise ValueError("a deployed partner's split key derives from its signing key, and none "
                         "is configured (node config key 'signing-key')")
    if signing_key:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        from common.privacy.crypto import load_private_key

        secret = load_private_key(Path(signing_key)).private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=SPLIT_KEY_INFO).derive(secret)
    return hashlib.sha256(SPLIT_KEY_INFO + f"|{seed}|{partner}".encode()).digest()


# --- Replayable rounds: a hiding commitment to what a round's update derives from ---------------

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
    return json.dumps({"data_sha256": data_sha256, "seed": int(seed), "settings": settings},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


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
    line = json.dumps(opening.to_dict(), sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("ascii") + b"\n"
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
