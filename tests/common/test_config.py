"""Run config (kebab-case Flower keys -> frozen dataclass) and partner node config."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from common.config import PartnerConfig, RunConfig, parse_budgets
from common.data.scenarios import SCENARIOS
from common.limits import PartnerLimits

# --- RunConfig --------------------------------------------------------------------------------


def test_empty_config_gives_valid_defaults() -> None:
    config = RunConfig.from_flower({})
    assert config == RunConfig()
    assert config.scenario in SCENARIOS


def test_keys_are_kebab_case_for_every_field() -> None:
    keys = RunConfig.keys()
    assert len(keys) == len(dataclasses.fields(RunConfig))
    assert keys["num-server-rounds"] == "num_server_rounds"
    assert all("_" not in key for key in keys)


def test_round_trip_through_flower_dict() -> None:
    config = RunConfig.from_flower({"num-server-rounds": 3, "local-epochs": 0.5,
                                    "hidden-layers": "16,8", "sim-budgets": "bank=2.0",
                                    "sim-pooled-eval": True, "split": "iid"})
    assert RunConfig.from_flower(config.to_flower()) == config
    assert config.num_server_rounds == 3 and config.local_epochs == 0.5
    assert config.hidden == (16, 8)


def test_values_are_coerced_to_field_types() -> None:
    config = RunConfig.from_flower({"num-server-rounds": "4", "learning-rate": 1,
                                    "sim-dp": "false", "batch-size": 32.0})
    assert config.num_server_rounds == 4 and isinstance(config.num_server_rounds, int)
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.sim_dp is False
    assert config.batch_size == 32 and isinstance(config.batch_size, int)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().seed = 1  # type: ignore[misc]


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match=r"unknown run config key\(s\) \['num-rounds'\]"):
        RunConfig.from_flower({"num-rounds": 3})


def test_snake_case_key_is_unknown() -> None:
    with pytest.raises(ValueError, match="'num_server_rounds'"):
        RunConfig.from_flower({"num_server_rounds": 3})


@pytest.mark.parametrize(("key", "value"), [
    ("num-server-rounds", "many"), ("num-server-rounds", 2.5), ("sim-dp", "maybe"),
    ("learning-rate", "fast"),
])
def test_wrong_type_names_the_key(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"'{key}'")):
        RunConfig.from_flower({key: value})



BAD_VALUES = [
    ("num-server-rounds", 0),
    ("local-epochs", 0),
    ("batch-size", -1),
    ("learning-rate", -0.1),
    ("optimizer", "rmsprop"),
    ("clip-norm", 0),
    ("min-partners", 0),
    ("test-fraction", 1.0),
    ("scenario", "mortgages"),
    ("split", "vertical"),
    ("dirichlet-alpha", 0),
    ("out-dir", ""),
    ("hidden-layers", "32,x"),
    ("hidden-layers", "32,0"),
    ("sim-budgets", "lender"),
    ("sim-budgets", "lender=lots"),
    ("sim-epsilon", 0),
    ("sim-epsilon", -1.0),
    ("sim-delta", 1.5),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_value_names_the_key(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"'{key}'")):
        RunConfig.from_flower({key: value})


@pytest.mark.parametrize(("key", "value"), [("sim-epsilon", 0), ("sim-epsilon", -1.0),
                                            ("sim-delta", 1.5), ("sim-delta", 0.0)])
def test_bad_sim_budget_is_rejected(key: str, value: float) -> None:
    """The budget itself is validated (the message's key naming is covered above)."""
    with pytest.raises(ValueError, match=r"epsilon must be > 0|delta must be in"):
        RunConfig.from_flower({key: value})


def test_bad_per_partner_budget_names_the_partner() -> None:
    with pytest.raises(ValueError, match=r"epsilon must be > 0.*'sim-budgets\[bank\]'"):
        RunConfig.from_flower({"sim-budgets": "lender=1.0,bank=0"})


def test_parse_budgets() -> None:
    assert parse_budgets("", 1e-5) == {}
    assert parse_budgets(" lender=1.0 , bank=3:1e-6 ", 1e-5) == {
        "lender": (1.0, 1e-5), "bank": (3.0, 1e-6)}


def test_hidden_layers() -> None:
    assert RunConfig().hidden == ()
    assert RunConfig(hidden_layers=" 64, 32 ").hidden == (64, 32)


# --- PartnerConfig ----------------------------------------------------------------------------

DEPLOYMENT = {"partner": "bank", "epsilon": 2.0, "delta": 1e-6,
              "data-path": "/data/bank.csv", "schema-path": "/data/bank.toml",
              "ledger-path": "/data/bank.ledger.jsonl", "signing-key": "/keys/bank.key",
              "odometer-path": "/data/bank.odometer.jsonl", "lifetime-epsilon": 8.0}


def test_deployment_node_config() -> None:
    partner = PartnerConfig.from_node_config(DEPLOYMENT, RunConfig())
    assert partner == PartnerConfig(partner="bank", epsilon=2.0, delta=1e-6,
                                    data_path="/data/bank.csv", schema_path="/data/bank.toml",
                                    ledger_path="/data/bank.ledger.jsonl",
                                    signing_key="/keys/bank.key",
                                    odometer_path="/data/bank.odometer.jsonl",
                                    lifetime_epsilon=8.0, test_fraction=0.25,
                                    release_metrics=False, limits=PartnerLimits())
    assert partner.private
    # The test fraction is the partner's: a coordinator's run config cannot move it.
    assert PartnerConfig.from_node_config(DEPLOYMENT, RunConfig(test_fraction=0.9)) == partner


def test_a_deployed_partner_releases_no_metrics_unless_it_says_so() -> None:
    """Issue 21: metrics computed from a partner's records are not DP releases, so a deployed
    partner keeps them unless its own node config switches them on."""
    assert not PartnerConfig.from_node_config(DEPLOYMENT, RunConfig()).release_metrics
    on = PartnerConfig.from_node_config({**DEPLOYMENT, "release-metrics": "true"}, RunConfig())
    assert on.release_metrics
    assert PartnerConfig.from_node_config({"partition-id": 0}, RunConfig()).release_metrics
    with pytest.raises(ValueError, match="'allow-evaluate' was replaced by 'release-metrics'"):
        PartnerConfig.from_node_config({**DEPLOYMENT, "allow-evaluate": True}, RunConfig())
    with pytest.raises(ValueError, match="'release-metrics' must be true or false"):
        PartnerConfig.from_node_config({**DEPLOYMENT, "release-metrics": "yes"}, RunConfig())


@pytest.mark.parametrize("delta", [1e-11, 2e-14, 0.0, 1.0])
def test_a_delta_outside_the_validated_range_is_refused(delta: float) -> None:
    with pytest.raises(ValueError, match=r"delta must be in \[1e-10, 1\)"):
        PartnerConfig.from_node_config({**DEPLOYMENT, "delta": delta}, RunConfig())


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("lifetime-epsilon", 0.0, "'lifetime-epsilon'"), ("lifetime-epsilon", "inf", "finite"),
    ("lifetime-epsilon", "many", "'lifetime-epsilon' must be a number"),
    ("count-epsilon-share", 0.0, "'count-epsilon-share'"),
    ("count-epsilon-share", 0.9, "'count-epsilon-share'"),
    ("test-fraction", 1.0, "'test-fraction'"), ("ledger-path", "", "empty value"),
    ("signing-key", " ", "empty value"), ("odometer-path", "", "empty value"),
])
def test_deployment_rejects_bad_lifetime_and_count_settings(key: str, value: object,
                                                            pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        PartnerConfig.from_node_config({**DEPLOYMENT, key: value}, RunConfig())


def test_a_deployed_horizontal_partner_needs_an_odometer() -> None:
    node = {k: v for k, v in DEPLOYMENT.items() if k != "odometer-path"}
    with pytest.raises(ValueError, match=r"lacks \['odometer-path'\]"):
        PartnerConfig.from_node_config(node, RunConfig())


def test_deployment_budget_comes_from_node_not_run_config() -> None:
    run = RunConfig.from_flower({"sim-epsilon": 50.0, "sim-budgets": "bank=40"})
    partner = PartnerConfig.from_node_config(DEPLOYMENT, run)
    assert (partner.epsilon, partner.delta) == (2.0, 1e-6)


def test_deployment_string_values_are_parsed() -> None:
    node = {**DEPLOYMENT, "epsilon": "1.5", "delta": "1e-5"}
    partner = PartnerConfig.from_node_config(node, RunConfig())
    assert (partner.epsilon, partner.delta) == (1.5, 1e-5)


@pytest.mark.parametrize("key", ["epsilon", "delta", "data-path", "schema-path"])
def test_deployment_missing_key_is_named(key: str) -> None:
    node = {k: v for k, v in DEPLOYMENT.items() if k != key}
    with pytest.raises(ValueError, match=re.escape(f"lacks ['{key}']")):
        PartnerConfig.from_node_config(node, RunConfig())


@pytest.mark.parametrize(("key", "value"), [("epsilon", 0.0), ("epsilon", -2.0),
                                            ("delta", 0.0), ("delta", 1.0)])
def test_deployment_bad_budget_names_the_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"node config key '{key}'"):
        PartnerConfig.from_node_config({**DEPLOYMENT, key: value}, RunConfig())


def test_deployment_non_numeric_budget_names_the_key() -> None:
    with pytest.raises(ValueError, match="'epsilon'"):
        PartnerConfig.from_node_config({**DEPLOYMENT, "epsilon": "lots"}, RunConfig())


def test_node_config_without_partner_or_partition_id() -> None:
    with pytest.raises(ValueError, match=r"'partner'.*'partition-id'"):
        PartnerConfig.from_node_config({}, RunConfig())


@pytest.mark.parametrize(("scenario", "expected"), [
    ("credit_data", ["lender", "ecommerce", "bank"]),
    ("lending_club", SCENARIOS["lending_club"].partners),
])
def test_simulation_partition_ids_map_to_scenario_partners(scenario: str,
                                                           expected: list[str]) -> None:
    run = RunConfig.from_flower({"scenario": scenario, "sim-epsilon": 2.5, "sim-delta": 1e-6})
    for partition_id, name in enumerate(expected):
        partner = PartnerConfig.from_node_config({"partition-id": partition_id}, run)
        assert partner.partner == name
        assert partner.partition_id == partition_id
        assert (partner.epsilon, partner.delta) == (2.5, 1e-6)
        assert partner.private


@pytest.mark.parametrize("partition_id", [-1, 3])
def test_simulation_partition_id_out_of_range(partition_id: int) -> None:
    with pytest.raises(ValueError, match=rf"partition-id {partition_id} out of range"):
        PartnerConfig.from_node_config({"partition-id": partition_id}, RunConfig())


def test_sim_budgets_override_per_partner() -> None:
    run = RunConfig.from_flower({"sim-epsilon": 3.0, "sim-delta": 1e-5,
                                 "sim-budgets": "lender=0.5,bank=8:1e-7"})
    budgets = {name: PartnerConfig.from_node_config({"partition-id": i}, run)
               for i, name in enumerate(SCENARIOS["credit_data"].partners)}
    assert (budgets["lender"].epsilon, budgets["lender"].delta) == (0.5, 1e-5)
    assert (budgets["ecommerce"].epsilon, budgets["ecommerce"].delta) == (3.0, 1e-5)
    assert (budgets["bank"].epsilon, budgets["bank"].delta) == (8.0, 1e-7)


def test_simulation_without_dp_is_not_private() -> None:
    run = RunConfig.from_flower({"sim-dp": False})
    partner = PartnerConfig.from_node_config({"partition-id": 1}, run)
    assert partner.partner == "ecommerce"
    assert partner.epsilon is None and partner.delta is None
    assert not partner.private


def test_sim_budgets_reject_unknown_partner() -> None:
    with pytest.raises(ValueError, match=r"'sim-budgets'.*lendr|lendr.*'sim-budgets'"):
        RunConfig.from_flower({"sim-budgets": "lendr=0.5"})


def test_flower_app_defaults_match_run_config_defaults() -> None:
    """`flwr run .` and `fedcredit simulate` must start from the same settings."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    assert app_config == RunConfig().to_flower()
    assert pyproject["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "server.app:app", "clientapp": "clients.app:app"}
