"""A partner's bounds on what the coordinator may ask (`common/limits.py`)."""

from __future__ import annotations

import pytest

from common.limits import PartnerLimits

ASKED = {
    "learning_rate": 0.05,
    "local_epochs": 3.0,
    "planned_rounds": 20,
    "server_round": 1,
    "model_parameters": 40,
}


def test_the_defaults_admit_the_default_run() -> None:
    assert PartnerLimits().refusal(**ASKED) == ""


@pytest.mark.parametrize(
    ("asked", "key"),
    [
        ({"learning_rate": 1e-20}, "'min-learning-rate'"),
        ({"learning_rate": 5.0}, "'max-learning-rate'"),
        ({"local_epochs": 50.0}, "'max-local-epochs'"),
        ({"planned_rounds": 10_000}, "'max-rounds'"),
        ({"server_round": 501}, "'max-rounds'"),
        ({"model_parameters": 10**6}, "'max-model-parameters'"),
    ],
)
def test_each_bound_refuses_with_its_key(asked: dict, key: str) -> None:
    assert key in PartnerLimits().refusal(**{**ASKED, **asked})


def test_a_partner_sets_its_own_bounds() -> None:
    limits = PartnerLimits.from_node_config(
        {"max-learning-rate": "0.01", "max-rounds": 30, "partner": "bank"}
    )
    assert limits == PartnerLimits(max_learning_rate=0.01, max_rounds=30)
    assert "'max-learning-rate'" in limits.refusal(**ASKED)
    assert (
        PartnerLimits.none().refusal(**{**ASKED, "learning_rate": 1e-20, "model_parameters": 10**9})
        == ""
    )


@pytest.mark.parametrize(
    ("node", "pattern"),
    [
        ({"max-rounds": "many"}, "'max-rounds' must be a number"),
        ({"max-rounds": 2.5}, "'max-rounds' must be a whole number"),
        ({"max-local-epochs": 0}, "'max-local-epochs' must be > 0"),
        ({"max-learning-rate": True}, "'max-learning-rate' must be a number"),
        ({"min-learning-rate": 0.5, "max-learning-rate": 0.1}, "leave no learning rate"),
    ],
)
def test_bad_bounds_are_named(node: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        PartnerLimits.from_node_config(node)
