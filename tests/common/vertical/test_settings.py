"""A vertical party's node config: channel keys, the lender's scoring limit and its opt-in
releases (off for a deployed lender, on in simulation); bad values name the key."""

from __future__ import annotations

import pytest

from common.config import PartnerConfig, RunConfig
from common.vertical.settings import MAX_SCORED_CUSTOMERS, VerticalNodeConfig

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
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _parse({**DEPLOYED, key: value})


def test_a_deployed_party_needs_the_federation_keys() -> None:
    node = {k: v for k, v in DEPLOYED.items() if k != "federation-keys"}
    with pytest.raises(ValueError, match="lacks 'federation-keys'"):
        _parse(node)
