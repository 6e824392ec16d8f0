"""A vertical party's node config: channel keys, the lender's scoring limit and its opt-in
releases (off for a deployed lender, on in simulation); bad values name the key."""

from __future__ import annotations

import pytest

from common.config import PartnerConfig, RunConfig
from common.vertical.settings import (
    MAX_SCORED_CUSTOMERS,
    MAX_TEST_FRACTION,
    MAX_VOUCHERS,
    VerticalNodeConfig,
)

DEPLOYED = {
    "partner": "lender",
    "epsilon": 3.0,
    "delta": 1e-5,
    "data-path": "d.csv",
    "schema-path": "s.toml",
    "ledger-path": "l.jsonl",
    "signing-key": "lender.key",
    "federation-keys": "keys",
}


def _parse(node: dict, run: RunConfig | None = None) -> VerticalNodeConfig:
    run = run or RunConfig(mode="vertical")
    return VerticalNodeConfig.from_node_config(node, run, PartnerConfig.from_node_config(node, run))


def test_a_deployed_lender_releases_nothing_label_dependent_by_default() -> None:
    node = _parse(DEPLOYED)
    assert (node.release_evaluation, node.release_scores) == (False, False)
    assert node.max_scored_customers == MAX_SCORED_CUSTOMERS
    assert (node.signing_key, node.federation_keys) == ("lender.key", "keys")


def test_a_simulated_lender_releases_to_the_analyst_by_default() -> None:
    run = RunConfig(mode="vertical", sim_keys_dir="k", sim_ledger_dir="l")
    node = _parse({"partition-id": 0}, run)
    assert (node.release_evaluation, node.release_scores) == (True, True)
    assert node.signing_key.endswith("lender.key") and node.federation_keys == "k"
    assert not _parse({"partition-id": 0, "release-scores": "false"}, run).release_scores


def test_the_opt_ins_and_the_limit_are_read_from_the_node_config() -> None:
    node = _parse(
        {
            **DEPLOYED,
            "release-evaluation": True,
            "release-scores": "TRUE",
            "max-scored-customers": 7,
        }
    )
    assert (node.release_evaluation, node.release_scores, node.max_scored_customers) == (
        True,
        True,
        7,
    )
    assert _parse({**DEPLOYED, "max-scored-customers": 0}).max_scored_customers == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max-scored-customers", -1, "'max-scored-customers' must be a whole number >= 0"),
        ("max-scored-customers", 2.5, "'max-scored-customers' must be a whole number >= 0"),
        ("max-scored-customers", "many", "'max-scored-customers' must be a whole number >= 0"),
        ("max-scored-customers", True, "'max-scored-customers' must be a whole number >= 0"),
        ("release-evaluation", "yes", "'release-evaluation' must be true or false"),
        ("release-scores", 1, "'release-scores' must be true or false"),
        ("max-test-fraction", 1.0, "'max-test-fraction' must be a number in \\(0, 1\\)"),
        ("max-test-fraction", "half", "'max-test-fraction' must be a number in \\(0, 1\\)"),
        ("max-vouchers", -3, "'max-vouchers' must be a whole number >= 0"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _parse({**DEPLOYED, key: value})


def test_the_split_is_the_lenders_own_and_the_passive_caps_are_read() -> None:
    """A deployed lender's test fraction is its node config's (default 0.25), whatever the run
    config says; a simulated one takes the run config's unless its node config sets one."""
    coordinator = RunConfig(mode="vertical", test_fraction=0.9)
    assert _parse(DEPLOYED, coordinator).test_fraction == 0.25
    assert _parse({**DEPLOYED, "test-fraction": 0.2}, coordinator).test_fraction == 0.2
    assert _parse({"partition-id": 0}, coordinator).test_fraction == 0.9
    assert _parse({"partition-id": 0, "test-fraction": 0.3}, coordinator).test_fraction == 0.3
    node = _parse(DEPLOYED)
    assert (node.max_test_fraction, node.max_vouchers) == (MAX_TEST_FRACTION, MAX_VOUCHERS)
    node = _parse({**DEPLOYED, "max-test-fraction": "0.3", "max-vouchers": 5})
    assert (node.max_test_fraction, node.max_vouchers) == (0.3, 5)


def test_a_deployed_party_needs_the_federation_keys() -> None:
    node = {k: v for k, v in DEPLOYED.items() if k != "federation-keys"}
    with pytest.raises(ValueError, match="lacks 'federation-keys'"):
        _parse(node)
