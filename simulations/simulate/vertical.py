"""`fedcredit simulate --scenario credit_data_vertical`: vertical credit_data through Flower.

`simulate_vertical` drives one run: keys, the Flower run, the audit, report.md/report.json.
`run_vertical_federation` is the Flower run itself, in-process: a ServerApp and 3 SuperNodes
(lender, ecommerce, bank), each ClientApp holding only its own party's table (see
`clients.vertical`); every party combination with and without DP, each party's signed ledger.
On the parties' own CSVs (`fedcredit simulate --spec` with a vertical data spec) the spec travels
to the ClientApps as `<out>/data-spec.toml` (run config key `data-spec`), as a horizontal one does.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.data.scenarios import LENDER, PARTIES, VERTICAL_SCENARIO
from common.data.spec import load_vertical_spec
from common.data.vertical_spec import VerticalSpec
from common.outputs import (
    AUDIT_HTML,
    DATA_SPEC_FILE,
    KEYS_DIR,
    LEDGER_DIR,
    RESULT_FILE,
    RunLayout,
    ledger_file,
)
from common.privacy.audit import verify
from common.privacy.crypto import generate_signing_key, write_key_pair
from common.privacy.ledger import ledger_event
from common.vertical.in_memory import Transcript, VerticalResult, centralized_logistic
from common.vertical.parties import SETTINGS, load_vertical_scenario, setting_name
from common.vertical.releases import Release
from common.vertical.settings import VerticalSettings
from server.vertical import Observer, Relayed
from simulations.simulate.engine import run_in_simulation_engine
from simulations.simulate.horizontal import create_run_keys
from simulations.simulate.reports import render_vertical_markdown

TRANSPORT = "Flower (in-process Simulation Engine, one ClientApp per party)"


def simulate_vertical(out: Path, *, seed: int, settings: VerticalSettings,
                      spec: VerticalSpec | None = None) -> dict[str, Any]:
    """Run the vertical scenario (or the parties' own CSVs of a vertical data `spec`) once,
    audit the ledgers, write the report; return it."""
    from simulations.audit.html import render_audit_html

    started = time.perf_counter()
    layout = RunLayout(out)
    layout.vertical_ledgers.mkdir(parents=True, exist_ok=True)
    for party in PARTIES:
        write_key_pair(generate_signing_key(), layout.keys, party)
    data_spec = ""
    if spec is not None:  # with absolute paths, for the ClientApps (and the record)
        data_spec = str((layout.root / DATA_SPEC_FILE).resolve())
        Path(data_spec).write_text(spec.to_toml(), encoding="utf-8")
    result = run_vertical_federation(simulation_run_config(layout, seed, settings, data_spec))
    audit = verify([ledger_file(layout.vertical_ledgers, p) for p in PARTIES], layout.keys)
    layout.audit_html.write_text(render_audit_html(audit))
    own = {"scenario": "own data", "data_spec": data_spec} if data_spec else {}
    report = {
        "scenario": VERTICAL_SCENARIO,
        **own,
        "mode": "vertical",
        "transport": TRANSPORT,
        "seed": seed,
        "epsilon": settings.epsilon,
        "delta": settings.delta,
        "label_epsilon": settings.lender_epsilon,
        "results": {
            setting_name(parties): {
                mode: result.metrics[mode][setting_name(parties)] for mode in result.metrics
            }
            for parties in SETTINGS
        },
        "centralized": {k: result.centralized[k] for k in ("auc", "ks")},
        "privacy": {
            p: {
                "epsilon_spent": result.epsilon[p],
                "epsilon_budget": (settings.lender_epsilon if p == LENDER else settings.epsilon),
                "covers": (
                    "labels (label DP)"
                    if p == LENDER
                    else "features (bottom training + embeddings)"
                ),
            }
            for p in PARTIES
        },
        "mechanisms": result.mechanisms,
        "audit": {
            "ok": audit.ok,
            "findings": [str(f) for f in audit.findings],
            "report": AUDIT_HTML,
        },
        "wall_seconds": time.perf_counter() - started,
    }
    layout.report_json.write_text(json.dumps(report, indent=2, sort_keys=True))
    layout.report_md.write_text(render_vertical_markdown(report))
    return report


def simulation_run_config(layout: RunLayout, seed: int, settings: VerticalSettings,
                          data_spec: str = "") -> RunConfig:
    """The run config of `simulate_vertical`: DP and non-private modes, the budgets of
    `settings`, ledgers and keys in the run directory, the parties' own CSVs of `data_spec`
    (a vertical data spec file; empty: the bundled scenario)."""
    return RunConfig(
        scenario=VERTICAL_SCENARIO,
        data_spec=data_spec,
        mode="vertical",
        seed=seed,
        sim_epsilon=settings.epsilon,
        sim_delta=settings.delta,
        sim_budgets=(
            "" if settings.label_epsilon is None else f"{LENDER}={settings.label_epsilon}"
        ),
        vertical_bottom_epsilon=settings.bottom_epsilon or 0.0,
        vertical_embedding_clip=settings.embedding_clip,
        clip_norm=settings.bottom_clip_norm,
        test_fraction=settings.test_fraction,
        vertical_non_private=True,
        out_dir=str(layout.flower_run),
        sim_ledger_dir=str(layout.vertical_ledgers),
        sim_keys_dir=str(layout.keys),
    )


def ledger_releases(path: Path) -> list[Release]:
    """A party's releases as its signed ledger records them."""
    releases = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            releases.append(
                Release(
                    int(entry["round"]),
                    ledger_event(entry),
                    entry["model_received_sha256"],
                    entry["update_sent_sha256"],
                )
            )
    return releases


def run_vertical_federation(
    run: RunConfig, *, centralized: bool = True, observer: Observer | None = None
) -> VerticalResult:
    """Run the vertical federation with `flwr.simulation.run_simulation` (3 supernodes).

    Modes follow the run config (`sim-dp`, `vertical-non-private`); without `sim-keys-dir`
    each party gets fresh keys in `<out-dir>/keys` (they sign its ledger, in `<out-dir>/ledgers`,
    and its end-to-end channel keys). The result's transcript holds every array the coordinator
    relayed in clear (none: party-to-party payloads travel sealed); `centralized` adds the
    pooled logistic regression reference (simulation only). Simulated parties run with their
    simulation defaults: the lender releases its evaluation and the scores of
    `vertical-score-ids` (in `<out-dir>/vertical_scores.json`) to the analyst.
    """

    from clients.app import build_client_app
    from server.app import build_server_app

    out = Path(run.out_dir)
    run = replace(run, mode="vertical")
    if not run.sim_keys_dir:
        create_run_keys(out / KEYS_DIR, list(PARTIES))
        run = replace(run, sim_ledger_dir=str(out / LEDGER_DIR), sim_keys_dir=str(out / KEYS_DIR))
    transcript = Transcript()

    def observe(message: Relayed) -> None:
        sender, recipient = (
            ("coordinator", message.party)
            if message.direction == "to"
            else (message.party, "coordinator")
        )
        for name, record in message.content.array_records.items():
            for key, array in record.items():
                transcript.send(
                    message.message_type,
                    sender,
                    recipient,
                    f"{name}/{key}",
                    np.asarray(array.numpy(), dtype=np.float64).reshape(-1),
                )
        if observer is not None:
            observer(message)

    config = run.to_flower()
    run_in_simulation_engine(
        build_server_app(config, observer=observe), build_client_app(config), len(PARTIES)
    )
    summary = json.loads((out / RESULT_FILE).read_text())
    ledgers = {p: ledger_file(run.sim_ledger_dir, p) for p in PARTIES} if run.sim_dp else {}
    result = VerticalResult(
        seed=run.seed,
        metrics=summary["metrics"],
        centralized={},
        epsilon=summary.get("epsilon", {}),
        releases={p: ledger_releases(path) for p, path in ledgers.items()},
        mechanisms=summary.get("mechanisms", {}),
        transcript=transcript,
        ledgers=ledgers,
    )
    if centralized:
        spec = load_vertical_spec(run.data_spec) if run.data_spec else None
        result.centralized = centralized_logistic(
            load_vertical_scenario(run.seed, test_fraction=run.test_fraction, spec=spec)
        )
    return result
