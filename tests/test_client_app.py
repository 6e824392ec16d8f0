"""The partner's ClientApp: what leaves it, how its privacy composes, what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.app import STATE_KEY, build_client_app
from common.accounting import SubsampledGaussianEvent, rdp_epsilon
from common.config import RunConfig
from common.data import bundled_path
from common.partner import EVALUATE_METRIC_KEYS, TRAIN_METRIC_KEYS
from tests.flower_helpers import (
    evaluate_message,
    initial_weights,
    node_context,
    set_task_identity,
    train_message,
)

SIM_NODE = {"partition-id": 0, "num-partitions": 3}


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


def _train(run: RunConfig, context, server_round: int, **config):
    """One round through a freshly built ClientApp, as Flower rebuilds it every round."""
    client_app = build_client_app(run.to_flower())
    weights = initial_weights(run)
    msg = train_message(weights, {"server-round": server_round,
                                  "local-epochs": run.local_epochs, **config})
    return client_app(msg, context)


def test_reply_carries_only_arrays_metrics_and_info() -> None:
    run = RunConfig(num_server_rounds=3)
    context = node_context(SIM_NODE, run)
    reply = _train(run, context, 1)
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics", "info"}
    assert set(content["metrics"].keys()) <= set(TRAIN_METRIC_KEYS)
    assert set(content["info"].keys()) == {"partner", "refusal-reason"}
    assert content["info"]["partner"] == "lender"
    assert set(content["arrays"].keys()) == set(initial_weights(run))
    for key, array in content["arrays"].items():
        assert array.numpy().shape == initial_weights(run)[key].shape
    evaluation = build_client_app(run.to_flower())(
        evaluate_message(initial_weights(run)), context)
    assert set(evaluation.content.keys()) == {"metrics", "info"}
    assert set(evaluation.content["metrics"].keys()) <= set(EVALUATE_METRIC_KEYS)


def test_epsilon_composes_over_rounds_across_rebuilt_client_apps() -> None:
    run = RunConfig(num_server_rounds=4)
    context = node_context(SIM_NODE, run)
    spent, steps = [], []
    for server_round in range(1, 5):
        metrics = _train(run, context, server_round).content["metrics"]
        spent.append(metrics["epsilon-spent"])
        steps.append(int(metrics["steps"]))
        sample_rate, sigma = metrics["sample-rate"], metrics["noise-multiplier"]
    assert all(b > a for a, b in zip(spent, spent[1:], strict=False)), spent
    single_run = rdp_epsilon([SubsampledGaussianEvent(sample_rate, sigma, sum(steps))],
                             delta=run.sim_delta)
    assert spent[-1] == pytest.approx(single_run, rel=1e-9)
    assert spent[-1] <= run.sim_epsilon
    assert len(context.state[STATE_KEY]["events-steps"]) == 4


def test_round_beyond_the_plan_is_refused_without_an_update() -> None:
    run = RunConfig(num_server_rounds=2)
    context = node_context(SIM_NODE, run)
    for server_round in (1, 2):
        assert _train(run, context, server_round).content["info"]["refusal-reason"] == ""
    reply = _train(run, context, 3)
    assert "arrays" not in reply.content
    assert "budget" in reply.content["info"]["refusal-reason"]
    assert reply.content["metrics"]["refused"] == 1.0
    assert reply.content["metrics"]["epsilon-spent"] <= run.sim_epsilon


def test_greedy_coordinator_cannot_make_the_partner_overspend() -> None:
    run = RunConfig(num_server_rounds=3)
    context = node_context(SIM_NODE, run)
    honest = _train(run, context, 1).content["metrics"]
    greedy = {"local-epochs": 50.0, "noise-multiplier": 0.0, "sample-rate": 1.0,
              "batch-size": 100000, "clip-norm": 1e6}
    for server_round in range(2, 6):
        metrics = _train(run, context, server_round, **greedy).content["metrics"]
        assert metrics["noise-multiplier"] == honest["noise-multiplier"]
        assert metrics["sample-rate"] == honest["sample-rate"]
        assert metrics["epsilon-spent"] <= run.sim_epsilon
    # The greedy rounds were refused: they would each have blown the budget.
    assert metrics["refused"] == 1.0
    assert metrics["rounds-trained"] == 1.0


def test_deployed_partner_budget_comes_from_node_config_not_run_config(tmp_path: Path) -> None:
    csv_path, schema_path = bundled_path("credit_data")
    node = {"partner": "bank", "epsilon": 0.5, "delta": 1e-6, "data-path": str(csv_path),
            "schema-path": str(schema_path)}
    run = RunConfig(num_server_rounds=2, sim_epsilon=100.0, sim_delta=0.1)
    context = node_context(node, run)
    metrics = _train(run, context, 1).content["metrics"]
    assert metrics["epsilon-budget"] == 0.5
    assert metrics["delta"] == 1e-6
    assert metrics["epsilon-spent"] <= 0.5
