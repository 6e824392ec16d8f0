"""What a partner keeps so that an auditor can replay one of its DP rounds on its premises
(`common.privacy.audit.replay`): a fresh opening of the round's replay commitment (salt, seed,
hash of the training rows, optimiser settings) and the global model the round started from, both
beside the partner's ledger. Nothing here is sent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from common.config import PartnerConfig, RunConfig
from common.data.tables import PartnerData
from common.learning.training import TrainSettings
from common.privacy.randomness import (
    ReplayOpening,
    append_opening,
    new_opening,
    openings_path,
    received_models_dir,
    training_rows_sha256,
)


def replay_settings(run: RunConfig, settings: TrainSettings) -> dict[str, Any]:
    """The optimiser settings a DP round's update depends on beyond its logged mechanism and
    seed (committed with them; `common.privacy.audit.replay` trains with them)."""
    return {"learning_rate": settings.learning_rate, "optimizer": settings.optimizer,
            "weight_decay": settings.weight_decay, "hidden_layers": list(run.hidden)}


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
                       settings=replay_settings(run, settings), split=split,
                       global_model=model_file.name)


def _model_file(ledger_path: Path, server_round: int, received: str) -> Path:
    return received_models_dir(ledger_path) / f"round-{int(server_round)}-{received[:16]}.npz"


def keep(ledger_path: Path, opening: ReplayOpening, global_weights: dict[str, np.ndarray],
         received: str) -> None:
    """Durably keep what a replay of this round needs, before the ledger entry that commits to
    it is signed: the global model the round trained from (`<ledger>.replay/`, written to a
    temporary file, fsync'd, then renamed) and the opening (`<ledger>.openings`, 0600)."""
    model_file = _model_file(ledger_path, opening.round, received)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    partial = model_file.with_suffix(".partial")
    with partial.open("wb") as handle:
        np.savez(handle, **{k: np.asarray(v) for k, v in global_weights.items()})
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, model_file)
    append_opening(openings_path(ledger_path), opening)
