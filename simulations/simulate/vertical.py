"""Run credit_data_vertical through Flower in-process: a ServerApp and 3 SuperNodes (lender,
ecommerce, bank), each ClientApp holding only its own party's table (see `clients.vertical`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data.scenarios import PARTIES
from common.privacy.ledger import ledger_event
from common.vertical.in_memory import Transcript, VerticalResult, centralized_logistic
from common.vertical.parties import load_vertical_scenario
from common.vertical.releases import Release
from server.vertical import RESULT_FILE, Observer, Relayed
from simulations.simulate.horizontal import (
    KEYS_DIR,
    LEDGER_DIR,
    create_run_keys,
    run_in_simulation_engine,
)


def ledger_releases(path: Path) -> list[Release]:
    """A party's releases as its signed ledger records them."""
    releases = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            releases.append(Release(int(entry["round"]), ledger_event(entry),
                                    float(entry["mechanism"]["clipping_norm"]),
                                    entry["model_received_sha256"], entry["update_sent_sha256"]))
    return releases


def run_vertical_federation(run: RunConfig, *, centralized: bool = True,
                            observer: Observer | None = None) -> VerticalResult:
    """Run the vertical federation with `flwr.simulation.run_simulation` (3 supernodes).

    Modes follow the run config (`sim-dp`, `vertical-non-private`); without `sim-ledger-dir`
    each party's signed ledger goes to `<out-dir>/ledgers` with fresh keys in `<out-dir>/keys`.
    The result's transcript holds every array the coordinator relayed; `centralized` adds the
    pooled logistic regression reference (simulation only). Scores of `vertical-score-ids` are
    in `<out-dir>/vertical_scores.json`.
    """

    from clients.app import build_client_app
    from server.app import build_server_app

    out = Path(run.out_dir)
    run = replace(run, mode="vertical")
    if run.sim_dp and not run.sim_ledger_dir:
        create_run_keys(out / KEYS_DIR, list(PARTIES))
        run = replace(run, sim_ledger_dir=str(out / LEDGER_DIR), sim_keys_dir=str(out / KEYS_DIR))
    transcript = Transcript()

    def observe(message: Relayed) -> None:
        sender, recipient = (("coordinator", message.party) if message.direction == "to"
                             else (message.party, "coordinator"))
        for name, record in message.content.array_records.items():
            for key, array in record.items():
                transcript.send(message.message_type, sender, recipient, f"{name}/{key}",
                                np.asarray(array.numpy(), dtype=np.float64).reshape(-1))
        if observer is not None:
            observer(message)

    config = run.to_flower()
    run_in_simulation_engine(build_server_app(config, observer=observe),
                             build_client_app(config), len(PARTIES))
    summary = json.loads((out / RESULT_FILE).read_text())
    ledgers = {p: Path(run.sim_ledger_dir) / f"{p}.jsonl" for p in PARTIES} \
        if run.sim_dp else {}
    result = VerticalResult(
        seed=run.seed, metrics=summary["metrics"], centralized={},
        epsilon=summary.get("epsilon", {}),
        releases={p: ledger_releases(path) for p, path in ledgers.items()},
        mechanisms=summary.get("mechanisms", {}), transcript=transcript, ledgers=ledgers)
    if centralized:
        result.centralized = centralized_logistic(
            load_vertical_scenario(run.seed, test_fraction=run.test_fraction))
    return result
