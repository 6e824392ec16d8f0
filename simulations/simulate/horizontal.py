"""Simulation driver: the four settings of a scenario on the same splits, with the same code.

- `federated_dp`: Flower Simulation Engine, each partner training with DP-SGD under its budget;
- `federated`: the same federation without DP (a non-private reference);
- `local_only`: each partner trains alone on its own data (non-private);
- `centralized`: one model on all partners' training data pooled (non-private);
- `federated_dp_personalized`: each partner blends the global DP model with a model of its own
  (neither leaves the partner, so no privacy is spent; see `common.learning.personalize`).
Every setting is evaluated per partner on that partner's test split and pooled over all of them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import RunConfig
from common.data.spec import load_run_partners
from common.data.tables import PartnerData, Split
from common.errors import SimulationFailed
from common.learning.metrics import credit_metrics
from common.learning.model import build_model, set_weights
from common.learning.personalize import personalize
from common.learning.training import predict, train
from common.learning.verdict import BASELINE, verdict_report
from common.outputs import AUDIT_HTML, HISTORY_FILE, MODEL_FILE, RunLayout, ledger_file
from common.partner import train_settings
from common.privacy.audit import COORDINATOR, verify
from common.privacy.crypto import generate_signing_key, write_key_pair
from simulations.simulate.engine import run_in_simulation_engine

log = logging.getLogger(__name__)
SETTINGS = ("federated_dp", "federated", "local_only", "centralized", "federated_dp_personalized")
ProgressFn = Callable[[str, int, int], None]


@dataclass
class SettingResult:
    """Scores of one setting: each partner's own test split scored by that setting's model."""

    scores: dict[str, np.ndarray]
    history: dict[str, Any] | None = None
    model: Any = None

    def metrics(self, partners: list[PartnerData]) -> dict[str, Any]:
        """Per-partner and pooled credit metrics."""
        per_partner = {p.partner: credit_metrics(p.test.labels, self.scores[p.partner])
                       for p in partners}
        labels = np.concatenate([p.test.labels for p in partners])
        scores = np.concatenate([self.scores[p.partner] for p in partners])
        return {"pooled": credit_metrics(labels, scores), "partners": per_partner}


def run_local_only(run: RunConfig, partners: list[PartnerData]) -> SettingResult:
    """Each partner trains alone, non-private, for the same total epochs as the federation."""
    scores = {}
    for k, partner in enumerate(partners):
        model = build_model(partner.train.features.shape[1], run.hidden, run.seed)
        settings = replace(train_settings(run, {}),
                           epochs=run.local_epochs * run.num_server_rounds)
        train(model, partner.train, settings, seed=run.seed * 100 + k)
        scores[partner.partner] = predict(model, partner.test.features)
    return SettingResult(scores)


def run_centralized(run: RunConfig, partners: list[PartnerData]) -> SettingResult:
    """One non-private model on all training rows pooled (what no partner may legally do)."""
    pooled = Split(np.concatenate([p.train.features for p in partners]),
                   np.concatenate([p.train.labels for p in partners]))
    model = build_model(pooled.features.shape[1], run.hidden, run.seed)
    settings = replace(train_settings(run, {}), epochs=run.local_epochs * run.num_server_rounds)
    train(model, pooled, settings, seed=run.seed)
    return SettingResult({p.partner: predict(model, p.test.features) for p in partners})


def run_federation(run: RunConfig, partners: list[PartnerData],
                   progress: ProgressFn | None = None, label: str = "") -> SettingResult:
    """Run the Flower ServerApp and ClientApps in the Simulation Engine; score the final model."""
    from clients.app import build_client_app
    from server.app import build_server_app

    def on_round_end(record: Any) -> None:
        if progress is not None:
            progress(label, record.round, run.num_server_rounds)

    config = run.to_flower()
    run_in_simulation_engine(build_server_app(config, on_round_end=on_round_end),
                             build_client_app(config), len(partners))
    out_dir = Path(run.out_dir)
    history = json.loads((out_dir / HISTORY_FILE).read_text())
    if history["status"] != "completed":
        log.warning("federation %s ended early: %s", label, history["message"])
    model = build_model(partners[0].train.features.shape[1], run.hidden, run.seed)
    state = torch.load(out_dir / MODEL_FILE, weights_only=True)
    set_weights(model, {k: v.numpy() for k, v in state.items()})
    return SettingResult({p.partner: predict(model, p.test.features) for p in partners}, history,
                         model)


def run_personalized(run: RunConfig, partners: list[PartnerData],
                     federated: SettingResult) -> SettingResult:
    """Each partner blends the global DP model with its own local model (no privacy cost)."""
    scores, weights = {}, {}
    for k, partner in enumerate(partners):
        personal = personalize(federated.model, partner.train, hidden=run.hidden,
                               settings=replace(train_settings(run, {}),
                                                epochs=run.local_epochs * run.num_server_rounds),
                               seed=run.seed * 100 + k)
        scores[partner.partner] = personal.predict(partner.test.features)
        weights[partner.partner] = personal.global_weight
    return SettingResult(scores, {"global_weight": weights})


def create_run_keys(keys_dir: Path | str, partners: list[str]) -> None:
    """Fresh Ed25519 signing keys for every simulated partner and the coordinator."""
    for name in [*partners, COORDINATOR]:
        write_key_pair(generate_signing_key(), Path(keys_dir), name)


def federation_runs(run: RunConfig, layout: RunLayout) -> dict[str, RunConfig]:
    """The run config each federation of `run_all` runs under: the DP one with the partners'
    ledgers and keys and the coordinator's receipts in `layout`, both scoring the pooled test
    splits (`sim-pooled-eval`). What report.json records as `config` / `configs`."""
    return {
        "federated_dp": replace(run, sim_dp=True, sim_pooled_eval=True,
                                out_dir=str(layout.federated_dp),
                                sim_ledger_dir=str(layout.dp_ledgers),
                                sim_keys_dir=str(layout.keys),
                                receipts_path=str(layout.dp_receipts),
                                receipt_key=str(layout.keys / f"{COORDINATOR}.key")),
        "federated": replace(run, sim_dp=False, sim_pooled_eval=True,
                             out_dir=str(layout.federated)),
    }


def check_trained(label: str, history: dict[str, Any] | None) -> None:
    """Raise SimulationFailed when a federation ended without accepting a single update: there
    is nothing to compare, and its record says why (the partners' own errors in simulation)."""
    history = history or {}
    if history.get("status") == "completed" or any(
            record.get("accepted") for record in history.get("rounds", [])):
        return
    raise SimulationFailed(f"{label} trained nothing: {history.get('message') or 'no reason'}")


def run_all(run: RunConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Every setting on one scenario; returns metrics, privacy and timing (report.json body)."""
    started = time.perf_counter()
    partners = load_run_partners(run)
    layout = RunLayout(Path(run.out_dir))
    configs = federation_runs(run, layout)
    timings: dict[str, float] = {}
    results: dict[str, SettingResult] = {}

    t0 = time.perf_counter()
    create_run_keys(layout.keys, [p.partner for p in partners])
    for name, config in configs.items():
        results[name] = run_federation(config, partners, progress, name)
        check_trained(name, results[name].history)
        timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
    for name, fn in (("local_only", run_local_only), ("centralized", run_centralized)):
        t0 = time.perf_counter()
        results[name] = fn(run, partners)
        timings[name] = time.perf_counter() - t0
        if progress is not None:
            progress(name, 1, 1)
    t0 = time.perf_counter()
    results["federated_dp_personalized"] = run_personalized(run, partners,
                                                            results["federated_dp"])
    timings["federated_dp_personalized"] = time.perf_counter() - t0
    if progress is not None:
        progress("federated_dp_personalized", 1, 1)

    dp_history = results["federated_dp"].history or {}
    audit = audit_run(layout, [p.partner for p in partners])
    return {
        "config": configs["federated_dp"].to_flower(),
        "configs": {name: config.to_flower() for name, config in configs.items()},
        "audit": audit,
        "partners": {p.partner: {"train_rows": len(p.train), "test_rows": len(p.test),
                                 "train_bad_rate": p.train.bad_rate} for p in partners},
        "results": {name: results[name].metrics(partners) for name in SETTINGS},
        "verdict": partner_verdicts(run, partners, results),
        "privacy": privacy_summary(run, dp_history),
        "history": {name: results[name].history for name in ("federated_dp", "federated")},
        "personalization": results["federated_dp_personalized"].history,
        "timing": {"wall_seconds": time.perf_counter() - started,
                   **{f"{k}_seconds": v for k, v in timings.items()}},
    }


VERDICT_SETTINGS = (BASELINE, "federated_dp", "federated_dp_personalized")


def partner_verdicts(run: RunConfig, partners: list[PartnerData],
                     results: dict[str, SettingResult]) -> dict[str, Any]:
    """Did joining pay off? Per partner, a paired bootstrap over its own test rows of the AUC of
    the federated+DP and personalised models minus its local-only model's (report.json
    `verdict`)."""
    return verdict_report({p.partner: (p.test.labels, {name: results[name].scores[p.partner]
                                                       for name in VERDICT_SETTINGS})
                           for p in partners}, seed=run.seed)


def audit_run(layout: RunLayout, partners: list[str]) -> dict[str, Any]:
    """Verify the DP run's ledgers and receipts as an auditor would; write `audit.html`."""
    from simulations.audit.html import render_audit_html

    ledgers = [p for p in (ledger_file(layout.dp_ledgers, name) for name in partners)
               if p.exists()]
    if not ledgers:
        return {"ok": False, "findings": ["no partner wrote a privacy ledger: nothing to audit"],
                "report": None, "partners": {}}
    result = verify(ledgers, layout.keys, layout.dp_receipts)
    layout.audit_html.write_text(render_audit_html(result))
    return {"ok": result.ok, "findings": [str(f) for f in result.findings],
            "report": AUDIT_HTML,
            "partners": {p.partner: {"epsilon_claimed": p.epsilon_claimed,
                                     "epsilon_rdp_recomputed": p.epsilon_rdp,
                                     "epsilon_pld_recomputed": p.epsilon_pld}
                         for p in result.partners}}


def privacy_summary(run: RunConfig, history: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per partner: ε spent (composed over every round), budget, δ, σ, rounds trained, and ε
    after each round it trained (`epsilon_per_round`, at the rounds `trained_rounds`).

    Replies that carry no ε figures (a partner that refused before accounting) are skipped.
    """
    summary: dict[str, dict[str, Any]] = {}
    for record in history.get("rounds", []):
        for partner, figures in record["privacy"].items():
            if "epsilon-spent" not in figures:
                continue
            summary[partner] = {
                "epsilon_spent": figures["epsilon-spent"],
                "epsilon_budget": figures.get("epsilon-budget"),
                "delta": figures.get("delta"),
                "noise_multiplier": figures.get("noise-multiplier"),
                "sample_rate": figures.get("sample-rate"),
                "rounds_trained": int(figures.get("rounds-trained", 0)),
                "epsilon_per_round": summary.get(partner, {}).get("epsilon_per_round", [])
                + [figures["epsilon-spent"]],
                "trained_rounds": summary.get(partner, {}).get("trained_rounds", [])
                + [record["round"]],
            }
    return summary
