"""Partner scenarios: which rows of a bundled data set each simulated partner holds.

`natural` splits give each partner a different population, as in the real market: credit_data by
`Home` (bank = owners, lender = renters and private, e-commerce = parents, other, ignore and
missing), lending_club by US census region of `addr_state`, lending_club_states by the state itself
(50 partners of 16 to 1,324 rows). `iid` and `dirichlet` are controls that deal the same rows out
at random / label-skewed, to the scenario's own partners or to `num_partners` partners named
`p001`, `p002`, ... The vertical scenario (`credit_data_vertical`)
splits credit_data's columns by party instead (`PARTY_COLUMNS`). Partner sizes and bad rates:
docs/architecture.md ("Bundled data and scenarios").
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.csv_table import RawTable
from common.data.tables import PartnerData, bundled_path, load_bundled, split_train_test, subset
from common.errors import DataValidationError
from common.privacy.randomness import split_key

SPLITS = ("natural", "iid", "dirichlet")

# The vertical scenario: the same customers of credit_data, columns split by party. The lender
# holds the label; the passive parties hold other columns of the same customers.
VERTICAL_SCENARIO = "credit_data_vertical"
VERTICAL_DATASET = "credit_data"
LENDER = "lender"
PASSIVE = ("ecommerce", "bank")
PARTIES = (LENDER, *PASSIVE)
PARTY_COLUMNS: dict[str, tuple[str, ...]] = {
    LENDER: ("Amount", "Time", "Records"),
    "ecommerce": ("Price", "Expenses", "Age", "Marital", "Home"),
    "bank": ("Income", "Assets", "Debt", "Seniority", "Job"),
}

_CREDIT_DATA_HOME = {
    "lender": {"rent", "priv"},
    "ecommerce": {"parents", "other", "ignore", ""},
    "bank": {"owner"},
}
_REGIONS = {
    "west": {"AK", "AZ", "CA", "CO", "HI", "ID", "MT", "NM", "NV", "OR", "UT", "WA", "WY"},
    "south": {"AL", "AR", "DC", "DE", "FL", "GA", "KY", "LA", "MD", "MS", "NC", "OK", "SC", "TN",
              "TX", "VA", "WV"},
    "northeast_midwest": {"CT", "IA", "IL", "IN", "KS", "MA", "ME", "MI", "MN", "MO", "ND", "NE",
                          "NH", "NJ", "NY", "OH", "PA", "RI", "SD", "VT", "WI"},
}


@dataclass(frozen=True)
class ScenarioSpec:
    """A bundled data set and how its rows are dealt to partners."""

    name: str
    dataset: str
    partition_column: str
    groups: dict[str, set[str]]

    @property
    def partners(self) -> list[str]:
        """Partner names, in partition-id order."""
        return list(self.groups)


_STATES = sorted(set().union(*_REGIONS.values()) - {"IA"})  # lending_club has no Iowa loans
SCENARIOS: dict[str, ScenarioSpec] = {
    "credit_data": ScenarioSpec("credit_data", "credit_data", "Home", _CREDIT_DATA_HOME),
    "lending_club": ScenarioSpec("lending_club", "lending_club", "addr_state", _REGIONS),
    "lending_club_states": ScenarioSpec("lending_club_states", "lending_club", "addr_state",
                                        {state.lower(): {state} for state in _STATES}),
}
SCENARIO_PARTNERS = 3
"""Partners of the bundled natural splits; splits into more partners may hold one class."""
MIN_TRAIN_ROWS = 3
"""Fewest training rows a simulated partner may hold (its personalisation cross-validates in 3
folds)."""
MAX_PARTNERS = 10_000
"""Most partners an iid or dirichlet split deals rows to (`num-partners`)."""


def get_scenario(name: str) -> ScenarioSpec:
    """Look up a scenario by name, with an error listing the valid names."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r} (config key 'scenario'); "
                         f"choose from {sorted(SCENARIOS)}")
    return SCENARIOS[name]


def scenario_partners(name: str, split: str = "natural", num_partners: int = 0) -> list[str]:
    """Partner names of a scenario under `split`, in partition-id order: the scenario's own, or
    `p001` ... for `num_partners` > 0 (iid and dirichlet splits only)."""
    return _partner_names(get_scenario(name), split, num_partners)


def _partner_names(spec: ScenarioSpec, split: str, num_partners: int) -> list[str]:
    """`scenario_partners` of a scenario spec."""
    name = spec.name
    if not num_partners:
        return spec.partners
    if split == "natural":
        raise ValueError(f"num-partners needs split 'iid' or 'dirichlet': the natural split of "
                         f"{name!r} has its own {len(spec.partners)} partners (config key "
                         f"'num-partners')")
    if not 2 <= num_partners <= MAX_PARTNERS:
        raise ValueError(f"num-partners must be 0 (the scenario's own partners) or 2 to "
                         f"{MAX_PARTNERS:,}, got {num_partners} (config key 'num-partners')")
    width = max(3, len(str(num_partners)))
    return [f"p{k:0{width}d}" for k in range(1, num_partners + 1)]


def partner_rows(table: RawTable, spec: ScenarioSpec, *, split: str, seed: int,
                 alpha: float, label_column: str, bad_value: str,
                 num_partners: int = 0) -> dict[str, np.ndarray]:
    """Row indices held by each partner under `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (config key 'split'); choose from {SPLITS}")
    names = _partner_names(spec, split, num_partners)
    n_partners = len(names)
    rng = np.random.default_rng(seed)
    if split == "natural":
        values = table.column(spec.partition_column)
        rows = {p: np.array([i for i, v in enumerate(values) if v in group], dtype=int)
                for p, group in spec.groups.items()}
        claimed = sum(len(r) for r in rows.values())
        if claimed != len(values):
            raise ValueError(f"scenario {spec.name!r}: {len(values) - claimed} rows match no "
                             f"partner group of column {spec.partition_column!r}")
        return rows
    if split == "iid":
        assignment = rng.permutation(len(table.rows)) % n_partners
        return {p: np.flatnonzero(assignment == k) for k, p in enumerate(names)}
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 for the dirichlet split, got {alpha} (key 'alpha')")
    labels = np.array([v == bad_value for v in table.column(label_column)])
    assignment = np.empty(len(labels), dtype=int)
    for label in (False, True):
        idx = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet([alpha] * n_partners)
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for k, part in enumerate(np.split(idx, cuts)):
            assignment[part] = k
    return {p: np.flatnonzero(assignment == k) for k, p in enumerate(names)}


def load_scenario(name: str, *, split: str = "natural", seed: int = 0, alpha: float = 0.5,
                  test_fraction: float = 0.25, only: str | None = None,
                  num_partners: int = 0) -> list[PartnerData]:
    """Every partner's encoded train/test data for a bundled scenario, in partition-id order.

    `only` restricts encoding to one partner (what a simulated ClientApp needs).
    """
    spec = get_scenario(name)
    table, schema = load_bundled(spec.dataset)
    rows = partner_rows(table, spec, split=split, seed=seed, alpha=alpha,
                        label_column=schema.label, bad_value=schema.bad_value,
                        num_partners=num_partners)
    # Beyond the bundled three-partner splits (a state, one of N partners) a partner may be small
    # and hold few or no bad rows, as in the market: it needs rows on each side, not both classes.
    small_partners = len(rows) > SCENARIO_PARTNERS
    partners = []
    for partner, idx in rows.items():
        if only is not None and partner != only:
            continue
        remedy = ("deal the rows to fewer partners (config key 'num-partners')"
                  + (" or raise dirichlet-alpha" if split == "dirichlet" else "")
                  if num_partners else "use another split (config key 'split')")
        too_few = (f"partner {partner} holds {len(idx)} row(s) under the {split} split of "
                   f"{name!r} with seed {seed}, too few to train and test on: {remedy}")
        if len(idx) < MIN_TRAIN_ROWS + 1:
            raise ValueError(too_few)
        try:
            train, test = split_train_test(subset(table, idx, partner), schema,
                                           test_fraction=test_fraction,
                                           key=split_key(partner=partner, seed=seed),
                                           both_classes=not small_partners)
        except DataValidationError as exc:
            if not small_partners:
                raise
            raise ValueError(f"{too_few} ({exc})") from None
        if len(train) < MIN_TRAIN_ROWS:
            raise ValueError(too_few)
        partners.append(PartnerData(partner=partner, train=train, test=test))
    return partners


def load_scenario_partner(name: str, partition_id: int, *, split: str = "natural",
                          seed: int = 0, alpha: float = 0.5, test_fraction: float = 0.25,
                          num_partners: int = 0) -> PartnerData:
    """One partner's data by partition id (what a simulated ClientApp loads)."""
    partners = scenario_partners(name, split, num_partners)
    if not 0 <= partition_id < len(partners):
        raise ValueError(f"partition id {partition_id} out of range for scenario {name!r} "
                         f"with {len(partners)} partners")
    return load_scenario(name, split=split, seed=seed, alpha=alpha, test_fraction=test_fraction,
                         only=partners[partition_id], num_partners=num_partners)[0]


def export_partner_files(name: str, out_dir: Path, *, split: str = "natural", seed: int = 0,
                         alpha: float = 0.5) -> dict[str, tuple[Path, Path]]:
    """Write each partner's raw rows as `<partner>.csv` plus the schema `<partner>.toml`.

    What a real partner would hold on its own machine (local federation demo, onboarding).
    """
    spec = get_scenario(name)
    table, schema = load_bundled(spec.dataset)
    schema_source = bundled_path(spec.dataset)[1]
    rows = partner_rows(table, spec, split=split, seed=seed, alpha=alpha,
                        label_column=schema.label, bad_value=schema.bad_value)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for partner, idx in rows.items():
        csv_path, schema_path = out_dir / f"{partner}.csv", out_dir / f"{partner}.toml"
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(table.header)
            writer.writerows(table.rows[int(i)] for i in idx)
        shutil.copyfile(schema_source, schema_path)
        files[partner] = (csv_path, schema_path)
    return files
