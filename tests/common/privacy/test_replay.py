"""Replayable rounds: a partner's `train` ledger entry commits (hiding, binding) to its round's
seed, training rows and settings; `audit replay` re-runs the round from the opening with the
LOGGED mechanism and checks the update's hash. Honest rounds match; a σ other than the logged
one, or a changed training row, cannot."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import common.partner as partner_module
from common.config import PartnerConfig, RunConfig
from common.data.tables import Split
from common.learning.model import build_model, get_weights
from common.partner import PartnerState, load_data, train_round
from common.privacy.audit.replay import (
    DATA_MISMATCH,
    MATCH,
    OPENING_MISMATCH,
    UPDATE_MISMATCH,
    replay_round,
)
from common.privacy.audit.verification import verify
from common.privacy.crypto import generate_signing_key, load_private_key, write_key_pair
from common.privacy.ledger import read_lines
from common.protocol import REFUSED
from common.replay import (
    committed_message,
    openings_path,
    read_openings,
    received_models_dir,
    replay_commitment,
    training_rows_sha256,
)
from simulations.audit.cli import audit_app
from tests.audit_fixtures import dump, resign_and_rechain

ROWS = 240
RUN_ID = "run-replay"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A deployed partner (own CSV, own signing key, OS randomness) that trained 2 rounds."""
    return _train_partner(tmp_path_factory.mktemp("honest"))


def _train_partner(root: Path, *, sigma_factor: float = 1.0) -> dict:
    source = Path("common/data/credit_data.csv").read_text().splitlines()
    csv = root / "bank.csv"
    csv.write_text("\n".join(source[:ROWS + 1]) + "\n")
    keys = root / "keys"
    write_key_pair(generate_signing_key(), keys, "bank")
    partner = PartnerConfig(partner="bank", epsilon=3.0, delta=1e-5, data_path=str(csv),
                            schema_path="common/data/credit_data.toml",
                            ledger_path=str(root / "bank.ledger.jsonl"),
                            signing_key=str(keys / "bank.key"))
    run = RunConfig(num_server_rounds=2, local_epochs=1.0, seed=7)
    data = load_data(partner, run)
    weights = get_weights(build_model(data.train.features.shape[1], run.hidden, run.seed))
    state = PartnerState()
    for server_round in (1, 2):
        reply = train_round(partner, run, state, weights, {"learning-rate": 0.05 * server_round},
                            server_round, data, RUN_ID)
        assert reply.metrics[REFUSED] == 0.0, reply.refusal
        weights = reply.weights
    return {"root": root, "csv": csv, "keys": keys, "partner": partner, "data": data,
            "ledger": Path(partner.ledger_path), "openings": openings_path(partner.ledger_path)}


def test_entries_carry_a_commitment_and_the_ledger_still_verifies(federation: dict) -> None:
    lines, findings = read_lines(federation["ledger"])
    assert not findings
    trained = [e for _, e in lines if e["event"] == "train"]
    assert len(trained) == 2 and all(len(e["replay_commitment"]) == 64 for e in trained)
    assert all("replay_commitment" not in e for _, e in lines if e["event"] != "train")
    result = verify([federation["ledger"]], federation["keys"])
    assert result.ok, result.findings
    openings = read_openings(federation["openings"])
    assert [o.round for o in openings] == [1, 2]
    assert [o.commitment for o in openings] == [e["replay_commitment"] for e in trained]
    assert federation["openings"].stat().st_mode & 0o777 == 0o600  # the seeds: owner only
    models = received_models_dir(federation["ledger"])  # the models trained from: owner only
    assert models.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in models.iterdir()} == {0o600}


def test_ledger_without_commitments_still_verifies(federation: dict, tmp_path: Path) -> None:
    """An older ledger (no replay_commitment) verifies as before: strip the field, re-sign."""
    lines, _ = read_lines(federation["ledger"])
    entries = [{k: v for k, v in e.items() if k != "replay_commitment"} for _, e in lines]
    key = load_private_key(federation["keys"] / "bank.key")
    old = tmp_path / "old.jsonl"
    old.write_bytes(b"".join(line + b"\n" for line in
                             dump(resign_and_rechain(entries, [key] * len(entries), 0))))
    result = verify([old], federation["keys"])
    assert result.ok, result.findings


@pytest.mark.parametrize("server_round", [1, 2])
def test_honest_rounds_replay_to_the_logged_update(federation: dict, server_round: int) -> None:
    result = replay_round(federation["ledger"], server_round, federation["data"].train,
                          federation["openings"], keys_dir=federation["keys"])
    assert result.reason == MATCH, result.message
    assert result.update_replayed == result.update_logged


def test_cli_replay_matches_and_reports_bad_input(federation: dict) -> None:
    args = [str(federation["ledger"]), "--round", "2", "--data", str(federation["csv"]),
            "--schema", "common/data/credit_data.toml", "--opening", str(federation["openings"]),
            "--keys", str(federation["keys"]),
            "--split-key", str(federation["keys"] / "bank.key")]
    ok = CliRunner().invoke(audit_app, ["replay", *args])
    assert ok.exit_code == 0, ok.output
    assert "MATCH" in ok.output
    no_key = CliRunner().invoke(audit_app, ["replay", *args[:-2]])
    assert no_key.exit_code == 2 and "--split-key" in no_key.output
    missing = CliRunner().invoke(audit_app, ["replay", *args[:2], "9", *args[3:]])
    assert missing.exit_code == 2 and "no train entry for round 9" in missing.output
    assert missing.exception is None or isinstance(missing.exception, SystemExit)


def test_a_partner_that_trained_with_half_the_logged_sigma_cannot_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    honest_train = partner_module.train

    def cheat(*args, dp=None, **kwargs):
        if dp is not None:  # trains with σ/2; the ledger logs the calibrated σ
            dp = dataclasses.replace(dp, noise_multiplier=dp.noise_multiplier / 2)
        return honest_train(*args, dp=dp, **kwargs)

    monkeypatch.setattr(partner_module, "train", cheat)
    cheater = _train_partner(tmp_path)
    monkeypatch.setattr(partner_module, "train", honest_train)
    assert verify([cheater["ledger"]], cheater["keys"]).ok  # the ledger itself looks fine
    result = replay_round(cheater["ledger"], 1, cheater["data"].train, cheater["openings"],
                          keys_dir=cheater["keys"])
    assert result.reason == UPDATE_MISMATCH
    assert result.update_replayed != result.update_logged


def test_a_round_replays_with_the_poisson_sampler_it_ran_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.learning import training

    monkeypatch.setattr(training, "POISSON_MASK_MAX_ROWS", 100)  # this partner: by gaps
    trained = _train_partner(tmp_path)
    monkeypatch.undo()  # the replaying code would pick `mask` for this size by itself
    (opening, *_) = read_openings(trained["openings"])
    assert opening.settings["poisson_sampler"] == "gaps-v1"
    result = replay_round(trained["ledger"], 1, trained["data"].train, trained["openings"],
                          keys_dir=trained["keys"])
    assert result.reason == MATCH, result.message


def test_a_changed_training_row_cannot_replay(federation: dict, tmp_path: Path) -> None:
    train = federation["data"].train
    features = train.features.copy()
    features[3, 0] += 0.5
    changed = Split(features, train.labels.copy())
    result = replay_round(federation["ledger"], 1, changed, federation["openings"])
    assert result.reason == DATA_MISMATCH
    # An opening forged to name the changed rows' hash no longer opens the commitment.
    raw = [json.loads(line) for line in federation["openings"].read_text().splitlines()]
    raw[0]["data_sha256"] = training_rows_sha256(changed.features, changed.labels)
    forged = tmp_path / "forged.openings"
    forged.write_text("".join(json.dumps(r) + "\n" for r in raw))
    result = replay_round(federation["ledger"], 1, changed, forged,
                          global_model=federation["ledger"].with_name(
                              federation["ledger"].name + ".replay") / raw[0]["global_model"])
    assert result.reason == OPENING_MISMATCH


def test_the_commitment_hides_the_seed_and_the_data(federation: dict) -> None:
    train = federation["data"].train
    data_sha256 = training_rows_sha256(train.features, train.labels)
    message = committed_message(seed=123, data_sha256=data_sha256, settings={"lr": 0.1})
    salts = [bytes([i]) * 32 for i in range(2)]
    first, second = (replay_commitment(s, message) for s in salts)
    assert first != second  # fresh salts: equal seeds and rows give unlinkable commitments
    plain = {hashlib.sha256(m).hexdigest() for m in (message, b"123", data_sha256.encode(),
                                                     bytes.fromhex(data_sha256))}
    assert first not in plain and second not in plain and data_sha256 not in (first, second)
    openings = read_openings(federation["openings"])
    assert len({o.salt for o in openings}) == len(openings)
    for opening in openings:  # nothing of the opening appears in the ledger
        text = federation["ledger"].read_text()
        assert opening.salt not in text and str(opening.seed) not in text
        assert opening.data_sha256 not in text


REPLAY_SCRIPT = """
import sys, torch
import numpy as np
torch.set_num_threads(int(sys.argv[1]))
from common.data.tables import Split
from common.learning.model import build_model, get_weights
from common.learning.training import TrainSettings, train
from common.privacy.accounting import SubsampledGaussianEvent
from common.privacy.crypto import hash_weights
rng = np.random.default_rng(0)
x = rng.normal(size=(400, 24)).astype(np.float32)
y = (rng.random(400) < 0.3).astype(np.float32)
model = build_model(24, (16,), 0)
train(model, Split(x, y), TrainSettings(learning_rate=0.05), seed=2**62 + 12345,
      dp=SubsampledGaussianEvent(0.1, 1.1, 20, 1.0))
print(hash_weights(get_weights(model)))
"""


def test_dp_training_is_bit_reproducible_across_processes() -> None:
    """Two fresh interpreters (one asking for 1 thread, one for 2: training pins its own) give
    the same update bytes from the same seed."""
    runs = [subprocess.Popen([sys.executable, "-c", REPLAY_SCRIPT, threads], cwd=Path.cwd(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for threads in ("1", "2")]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    hashes = [out.strip() for out, _ in outputs]
    assert len(hashes[0]) == 64 and hashes[0] == hashes[1]
