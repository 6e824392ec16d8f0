"""The coordinator's Flower ServerApp: validated weighted FedAvg over the partners' DP updates
(or, with `secure-aggregation`, over their SecAgg+ masked sum: see `server.secure`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.data.scenarios import get_scenario
from common.data.schema import load_schema
from common.data.spec import load_run_partners, load_spec
from common.data.tables import Split, bundled_path
from common.errors import TooFewPartners
from common.learning.model import build_model, set_weights
from common.learning.training import evaluate
from common.outputs import HISTORY_FILE, MODEL_META_CONFIG, save_model, write_json
from common.privacy.crypto import load_private_key
from common.privacy.ledger import ReceiptLog
from common.protocol import EPSILON_SPENT
from server.grid import PromptGrid
from server.secure import run_secure_rounds
from server.strategy import (
    RoundRecord,
    ValidatingFedAvg,
    never_contributed,
    partner_outcomes,
    train_config,
)
from server.vertical import Observer, run_vertical

log = logging.getLogger(__name__)


def pooled_test_split(run: RunConfig) -> Split:
    """All partners' test splits pooled (simulation only: a real coordinator has no data)."""
    partners = load_run_partners(run)
    return Split(np.concatenate([p.test.features for p in partners]),
                 np.concatenate([p.test.labels for p in partners]))


def run_federation(grid: Grid, run: RunConfig, run_id: str = "",
                   on_round_end: Callable[[RoundRecord], None] | None = None) -> None:
    """Run `num-server-rounds` rounds, then save the model, its metadata and the history."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    schema = load_schema(run.schema_path or (
        load_spec(run.data_spec).schema if run.data_spec
        else bundled_path(get_scenario(run.scenario).dataset)[1]))
    model = build_model(schema.num_features, run.hidden, run.seed)
    out_dir = Path(run.out_dir)

    pooled = pooled_test_split(run) if run.sim_pooled_eval else None
    probe = build_model(schema.num_features, run.hidden, run.seed)
    receipts = None
    if run.receipts_path:
        receipts = ReceiptLog(Path(run.receipts_path), load_private_key(Path(run.receipt_key)),
                              run_id=run_id)
    strategy = ValidatingFedAvg(min_partners=run.min_partners, on_round_end=on_round_end,
                                evaluate_every=run.evaluate_every,
                                fraction_train=run.fraction_train, seed=run.seed,
                                learning_rate_at=run.learning_rate_at, receipts=receipts,
                                wait_seconds=run.wait_for_partners,
                                fold_evaluation=not run.secure_aggregation,
                                feature_layout=schema.layout())
    strategy.num_rounds = run.num_server_rounds

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics: dict[str, float] = {}
        if pooled is not None:
            set_weights(probe, {k: a.numpy() for k, a in arrays.items()})
            metrics = {k: v for k, v in evaluate(probe, pooled).items() if np.isfinite(v)}
        strategy.finish_round(server_round, metrics)
        return MetricRecord(metrics) if metrics else None

    status, message, final = "completed", "", ArrayRecord(model.state_dict())
    try:
        if run.secure_aggregation:
            final = run_secure_rounds(grid, run, strategy, ArrayRecord(model.state_dict()),
                                      end_of_round)
        else:
            result = strategy.start(
                grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                num_rounds=run.num_server_rounds,
                train_config=train_config(run),
                evaluate_fn=end_of_round)
            final = result.arrays
    except TooFewPartners as exc:
        status, message = "stopped", str(exc)
        final = strategy.latest_arrays or final
        log.error("run stopped: %s", exc)
    except Exception as exc:
        # Nothing is lost: the model so far and the history are still written, then re-raised.
        status, message = "failed", f"{type(exc).__name__}: {exc}"
        final = strategy.latest_arrays or final
        log.exception("run failed")
        _save(out_dir, model, final, schema, run, strategy, status, message, run_id, started)
        raise
    missing = never_contributed(partner_outcomes(strategy.history))
    if status == "completed" and missing:
        status, message = "incomplete", missing
        log.error("run incomplete: %s", missing)
    _save(out_dir, model, final, schema, run, strategy, status, message, run_id, started)


def _save(out_dir: Path, model, final: ArrayRecord, schema, run: RunConfig,
          strategy: ValidatingFedAvg, status: str, message: str, run_id: str,
          started: float) -> None:
    """Write the final model, its metadata and the per-round history."""
    set_weights(model, {k: a.numpy() for k, a in final.items()})
    privacy = _last_privacy(strategy)
    save_model(out_dir, model, {
        "status": status, "message": message, "schema": schema.name,
        "schema_sha256": schema.source_hash, "feature_layout_sha256": schema.layout_sha256,
        "feature_names": schema.feature_names,
        "hidden_layers": list(run.hidden), MODEL_META_CONFIG: run.to_flower(),
        "rounds_completed": sum(1 for r in strategy.history if r.accepted),
        "privacy": privacy,
    })
    write_json(out_dir / HISTORY_FILE, {
        "status": status, "message": message, "run_id": run_id,
        "wall_seconds": time.perf_counter() - started,
        "partners": partner_outcomes(strategy.history),
        "rounds": [dataclasses.asdict(r) for r in strategy.history],
    })
    log.info("run %s; outputs in %s", status, out_dir)


def _last_privacy(strategy: ValidatingFedAvg) -> dict[str, dict[str, float]]:
    """Each partner's latest reported privacy figures (replies without ε figures skipped)."""
    latest: dict[str, dict[str, float]] = {}
    for record in strategy.history:
        latest.update({p: f for p, f in record.privacy.items() if EPSILON_SPENT in f})
    return latest


def build_server_app(run_config: dict | None = None,
                     on_round_end: Callable[[RoundRecord], None] | None = None,
                     observer: Observer | None = None) -> ServerApp:
    """A ServerApp; `run_config` (simulation only) overrides the run config Flower passes,
    `on_round_end` is called with each finished round's record (progress display), `observer`
    with each message a vertical run relays."""
    overrides = dict(run_config or {})
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run = RunConfig.from_flower({**dict(context.run_config), **overrides})
        grid = PromptGrid(grid)  # replies as they arrive, not on Flower's 3 s pull clock
        if run.vertical:
            run_vertical(grid, run, str(context.run_id), observer)
        else:
            run_federation(grid, run, str(context.run_id), on_round_end)

    return server_app


app = build_server_app()
