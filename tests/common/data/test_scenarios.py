"""Partner scenarios: how bundled rows are dealt to many partners."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import RunConfig
from common.data.scenarios import (
    SCENARIOS,
    load_scenario,
    partner_rows,
    scenario_partners,
)
from common.data.tables import load_bundled


def _rows(name: str, **kwargs) -> dict[str, np.ndarray]:
    spec = SCENARIOS[name]
    table, schema = load_bundled(spec.dataset)
    return partner_rows(table, spec, label_column=schema.label, bad_value=schema.bad_value,
                        **{"split": "natural", "seed": 0, "alpha": 0.5, **kwargs})


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_num_partners_deals_every_row_to_exactly_one_of_n_partners(split) -> None:
    rows = _rows("lending_club", split=split, num_partners=40, alpha=5.0)
    assert list(rows) == [f"p{k:03d}" for k in range(1, 41)]
    dealt = np.concatenate(list(rows.values()))
    assert len(dealt) == len(set(dealt.tolist())) == 9857


def test_the_scenarios_own_partners_are_kept_without_num_partners() -> None:
    assert scenario_partners("credit_data", "iid") == ["lender", "ecommerce", "bank"]
    assert list(_rows("credit_data", split="iid")) == ["lender", "ecommerce", "bank"]


def test_lending_club_states_gives_each_state_its_own_partner() -> None:
    rows = _rows("lending_club_states")
    assert len(rows) == 50
    table, _ = load_bundled("lending_club")
    states = table.column("addr_state")
    for partner, idx in rows.items():
        assert {states[i] for i in idx} == {partner.upper()}
    sizes = sorted(len(idx) for idx in rows.values())
    assert (sizes[0], sizes[-1], sum(sizes)) == (16, 1324, 9857)


def test_small_partners_may_hold_one_class_but_not_nothing() -> None:
    partners = load_scenario("lending_club_states", only="wy")
    assert len(partners[0].train) > 0 and len(partners[0].test) > 0
    with pytest.raises(ValueError, match="holds 0 row.*'num-partners'"):
        load_scenario("credit_data", split="dirichlet", alpha=0.01, num_partners=200)


@pytest.mark.parametrize(("changes", "key"), [
    ({"num_partners": 10}, "num-partners"),  # the natural split has its own partners
    ({"split": "iid", "num_partners": 1}, "num-partners"),
    ({"fraction_train": 0.0}, "fraction-train"),
    ({"fraction_train": 1.5}, "fraction-train"),
    ({"fraction_train": 0.5, "secure_aggregation": True}, "fraction-train"),
])
def test_bad_partner_settings_name_their_key(changes, key) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        RunConfig(**changes)
