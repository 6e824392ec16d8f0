"""A partner's evaluation of a global model on its own rows, free of Flower.

Two uses, both on the partner's machine: the metrics it releases when its node config says
`release-metrics=true` (exact, not DP; README "Privacy"), and its own "did joining pay off?"
verdict, written under its `local-report-path` and never sent.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.config import PartnerConfig, RunConfig
from common.data.tables import PartnerData
from common.learning.model import build_model, set_weights
from common.learning.training import evaluate, predict, train
from common.learning.verdict import partner_verdict, write_local_report
from common.partner import train_settings
from common.protocol import EVALUATE_METRIC_KEYS, NUM_EXAMPLES


def evaluate_round(
    run: RunConfig, global_weights: dict[str, np.ndarray], data: PartnerData
) -> dict[str, float]:
    """Metrics of the global model on the partner's own test split (exact: released only
    with `release-metrics`)."""
    model = build_model(data.test.features.shape[1], run.hidden, run.seed)
    set_weights(model, global_weights)
    result = evaluate(model, data.test)
    metrics = {NUM_EXAMPLES: float(len(data.test))}
    for name, value in result.items():
        key = name.replace("_", "-")
        if key in EVALUATE_METRIC_KEYS and math.isfinite(value):
            metrics[key] = value
    return metrics


def write_local_verdict(
    partner: PartnerConfig,
    run: RunConfig,
    global_weights: dict[str, np.ndarray],
    data: PartnerData,
    run_id: str,
) -> tuple[Path, Path]:
    """Did joining pay off, for this partner alone: the global model against a non-private
    model of the same family trained on its own training rows only, on its own test rows,
    written under its `local-report-path`. Nothing is released, so no privacy is spent."""
    local = build_model(data.train.features.shape[1], run.hidden, run.seed)
    train(
        local,
        data.train,
        replace(train_settings(run, {}), epochs=run.local_epochs * run.num_server_rounds),
        seed=run.seed,
    )
    federated = build_model(data.test.features.shape[1], run.hidden, run.seed)
    set_weights(federated, global_weights)
    verdict = partner_verdict(
        data.test.labels,
        {
            "local_only": predict(local, data.test.features),
            "federated_dp": predict(federated, data.test.features),
        },
        seed=run.seed,
    )
    return write_local_report(
        partner.local_report_path, partner.partner, verdict, partner.epsilon, run_id
    )
