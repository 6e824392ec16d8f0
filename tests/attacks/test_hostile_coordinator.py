"""A hostile coordinator against a real deployed horizontal partner (issue 21).

The coordinator chooses the global weights, the model's shape, the learning rate, the optimiser
and what it asks; it knows every record of the partner but one target (the DP adversary). Each
test plays one of its attacks through the partner's real ClientApp and checks that the reply
holds nothing beyond accounted DP releases and public values.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from clients.app import build_client_app
from common.data.layout import announcement
from common.data.schema import load_schema
from common.protocol import (
    EVALUATE_RECEIVED,
    EVALUATION_PREFIX,
    METRICS_NOT_RELEASED,
    TRAIN_LOSS,
    TRAIN_METRIC_KEYS,
)
from simulations.bench.membership import DetectorAttack, dp_ceiling_check, membership_trials
from tests.flower_helpers import evaluate_message, node_context, set_task_identity, train_message

TRIALS = 40
"""Enough for the released loss to break the ceiling at 95 % confidence (it did: TPR 0.90 at
FPR 0, lower bound 0.72 over a ceiling of 0.38); the 200-trial figures come from
`python -m simulations.bench.membership`."""


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> DetectorAttack:
    return DetectorAttack(tmp_path_factory.mktemp("detector"), epsilon=1.0, delta=1e-5)


def _layout(attack: DetectorAttack) -> dict[str, str]:
    return announcement(load_schema(attack.schema_path).layout())


def test_the_detector_learns_no_more_than_dp_allows_from_a_default_partner() -> None:
    """Through every train reply of a partner with default settings the best the detector can
    do is read the DP update: its membership test stays within e^ε·FPR + δ."""
    results = membership_trials(TRIALS, epsilon=1.0)
    assert {r.statistic for r in results} == {"update"}  # no loss left to read
    check = dp_ceiling_check(results, 1e-5)
    assert check.within, check


def test_the_detector_reads_membership_off_a_released_training_loss() -> None:
    """What `release-metrics=true` gives up, and the power of the check above: the training
    loss turns the detector into a membership test far above the DP ceiling."""
    results = membership_trials(TRIALS, epsilon=1.0, release_metrics=True)
    assert {r.statistic for r in results} == {"train-loss"}
    check = dp_ceiling_check(results, 1e-5)
    assert not check.within, check


def test_the_detector_gets_no_evaluation_of_the_test_rows(
    attack: DetectorAttack, tmp_path: Path
) -> None:
    """The same detector sent for evaluation, separately or folded into a train message,
    gets a refusal and no metric (AUC, KS, log-loss, test-set size) from a default partner."""
    node = attack.node(attack.member_csv, tmp_path, release_metrics=False)
    run = attack.run_config(release_metrics=False)
    request = evaluate_message(attack.detector)
    request.content["config"] = ConfigRecord({**_layout(attack), "server-round": 1})
    reply = build_client_app(run.to_flower())(request, node_context(node, run)).content
    assert dict(reply["metrics"]) == {}
    assert reply["info"]["refusal-reason"] == METRICS_NOT_RELEASED

    folded = train_message(
        attack.detector,
        {
            "server-round": 1,
            "local-epochs": 1.0,
            "learning-rate": 1.0,
            EVALUATE_RECEIVED: True,
            **_layout(attack),
        },
    )
    reply = build_client_app(run.to_flower())(folded, node_context(node, run)).content
    assert reply["info"]["refusal-reason"] == ""
    released = set(reply["metrics"].keys())
    assert not any(key.startswith(EVALUATION_PREFIX) for key in released)
    assert TRAIN_LOSS not in released and released <= set(TRAIN_METRIC_KEYS)


@pytest.mark.parametrize(
    ("asked", "bound"),
    [
        ({"learning-rate": 1e-20}, "'min-learning-rate'"),
        ({"learning-rate": 50.0}, "'max-learning-rate'"),
        ({"local-epochs": 1000.0}, "'max-local-epochs'"),
    ],
)
def test_the_partner_refuses_what_its_bounds_exclude_before_reading_its_data(
    attack: DetectorAttack, tmp_path: Path, asked: dict, bound: str
) -> None:
    """The review's detector ran at a learning rate of 1e-20; a partner refuses a request
    outside its own bounds, names the bound, and spends nothing (no ledger is even opened)."""
    node = attack.node(attack.member_csv, tmp_path, release_metrics=False)
    run = attack.run_config(release_metrics=False)
    message = train_message(
        attack.detector,
        {"server-round": 1, "local-epochs": 1.0, "learning-rate": 1.0, **_layout(attack), **asked},
    )
    reply = build_client_app(run.to_flower())(message, node_context(node, run)).content
    assert bound in reply["info"]["refusal-reason"]
    assert "arrays" not in reply
    assert not Path(node["ledger-path"]).exists() and not Path(node["odometer-path"]).exists()


def test_a_model_larger_than_the_partner_allows_is_refused(
    attack: DetectorAttack, tmp_path: Path
) -> None:
    node = {
        **attack.node(attack.member_csv, tmp_path, release_metrics=False),
        "max-model-parameters": 10,
    }
    run = attack.run_config(release_metrics=False)
    message = train_message(
        attack.detector,
        {"server-round": 1, "local-epochs": 1.0, "learning-rate": 1.0, **_layout(attack)},
    )
    reply = build_client_app(run.to_flower())(message, node_context(node, run)).content
    assert "'max-model-parameters'" in reply["info"]["refusal-reason"]
    assert not any(os.scandir(tmp_path))
