"""The vertical parties: who holds which columns, their own tables, the aligned split.

A party's table is either its own CSV with its own schema and customer-ID column
(`load_party_csv`: a deployed party's node config `data-path`, `schema-path`, `id-column`, or a
party of a vertical data spec, `common.data.vertical_spec`), or, in the bundled scenario
`credit_data_vertical`, its columns of credit_data with customer IDs made up from the row index.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.csv_table import RawTable, read_csv
from common.data.scenarios import LENDER, PARTIES, PARTY_COLUMNS, PASSIVE, VERTICAL_DATASET
from common.data.schema import Schema, encode_features, encode_table, load_schema
from common.data.tables import load_bundled, subset
from common.data.vertical_spec import VerticalSpec, check_party_schema
from common.errors import DataValidationError, PsiError
from common.vertical.psi import (
    customer_id,
    run_psi_in_memory,
    sample_known_ids,
    validate_ids,
)

SETTINGS: tuple[tuple[str, ...], ...] = (
    (LENDER,), (LENDER, "ecommerce"), (LENDER, "bank"), (LENDER, "ecommerce", "bank"))


def setting_name(parties: Sequence[str]) -> str:
    """'lender', 'lender+bank', ..."""
    return "+".join(parties)


def passives_of(parties: Sequence[str]) -> list[str]:
    """The passive parties of a setting, in order."""
    return [p for p in parties if p != LENDER]


def party_feature_indices(schema: Schema,
                          columns: Mapping[str, Sequence[str]] = PARTY_COLUMNS
                          ) -> dict[str, list[int]]:
    """Each party's encoded feature positions (every encoded feature of its schema columns)."""
    names = {spec.name for spec in schema.columns if spec.feature}
    claimed = [c for cols in columns.values() for c in cols]
    unknown = sorted(set(claimed) - names)
    if unknown:
        raise ValueError(f"schema {schema.name!r} has no feature columns {unknown}")
    if len(set(claimed)) != len(claimed):
        raise ValueError("a column is given to more than one party")
    positions: dict[str, list[int]] = {party: [] for party in columns}
    owner = {c: party for party, cols in columns.items() for c in cols}
    start = 0
    for spec in schema.columns:
        width = len(spec.feature_names())
        if spec.name in owner:
            positions[owner[spec.name]].extend(range(start, start + width))
        start += width
    return positions


@dataclass(frozen=True)
class PartyView:
    """One party's aligned columns, training and test rows (never leave the party)."""

    party: str
    feature_names: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class VerticalScenario:
    """Aligned vertical data: each party's view, the lender's labels, and PSI bookkeeping."""

    seed: int
    views: dict[str, PartyView]
    train_labels: np.ndarray
    test_labels: np.ndarray
    known_customers: dict[str, int]
    psi_run_id: str

    @property
    def num_aligned(self) -> int:
        """Customers every party knows."""
        return len(self.train_labels) + len(self.test_labels)


def split_aligned(num_rows: int, *, test_fraction: float, seed: int,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train/test positions of the aligned rows (seeded); stratified only when `labels` given."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(num_rows)
        cut = round(num_rows * test_fraction)
        return np.sort(order[cut:]), np.sort(order[:cut])
    test = []
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        test.append(rows[:round(len(rows) * test_fraction)])
    test_rows = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(num_rows), test_rows), test_rows


VERTICAL_SPLIT_INFO = b"fedcredit vertical split v1|"


def keyed_test_positions(customers: Sequence[str], *, test_fraction: float,
                         key: bytes) -> np.ndarray:
    """Test positions among the aligned `customers` (their IDs, in aligned order): the
    round(n * fraction) whose keyed hash HMAC-SHA256(key, ID) is smallest. Only the key's holder
    (a deployed lender: a key derived from its signing key) can compute it, no run seed moves it,
    and a customer's side changes across runs only when the aligned set does near the cut."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    digests = [hmac.new(key, VERTICAL_SPLIT_INFO + c.encode(), hashlib.sha256).digest()
               for c in customers]
    order = sorted(range(len(customers)), key=digests.__getitem__)
    return np.sort(np.asarray(order[:round(len(customers) * test_fraction)], dtype=int))


def _scenario_seeds(seed: int) -> list[int]:
    """[split seed, one known-ID seed per passive party] of the scenario (seeded)."""
    return [int(x) for x in
            np.random.SeedSequence([seed, 0x5e71]).generate_state(len(PASSIVE) + 1)]


def split_seed(seed: int) -> int:
    """Seed of the lender's train/test split of the aligned rows."""
    return _scenario_seeds(seed)[0]


@dataclass(frozen=True)
class PartyData:
    """One party's own table: the customer IDs it knows, its encoded columns, (lender) labels."""

    party: str
    ids: tuple[str, ...]
    feature_names: tuple[str, ...]
    features: np.ndarray
    labels: np.ndarray | None = None

    def row_of(self, customer: str) -> int:
        """Position of `customer` in this party's table; KeyError if the party does not know it."""
        try:
            return self.ids.index(customer)
        except ValueError:
            raise KeyError(f"{self.party} does not know customer {customer!r}") from None


def known_ids(party: str, seed: int, num_customers: int) -> list[str]:
    """The customer IDs `party` knows: the lender all, a passive party a seeded 85-95%."""
    if party == LENDER:
        return [customer_id(i) for i in range(num_customers)]
    if party not in PASSIVE:
        raise ValueError(f"unknown party {party!r}; parties are {PARTIES}")
    return sample_known_ids(num_customers, seed=_scenario_seeds(seed)[1 + PASSIVE.index(party)])


def party_ids(table: RawTable, id_column: str, *, missing: Sequence[str] = ()) -> list[str]:
    """The customer IDs of `table`, one per row, from its column `id_column`; DataValidationError
    naming the file, the column and the CSV line for a missing column, an empty or missing ID
    (`missing`: the schema's missing-value tokens) or an ID given twice."""
    if id_column not in table.header:
        raise DataValidationError(f"{table.path}: no customer-ID column {id_column!r} (columns: "
                                  f"{list(table.header)})")
    ids = table.column(id_column)
    seen: dict[str, int] = {}
    for i, value in enumerate(ids):
        if not value or value in missing:
            raise DataValidationError(f"{table.path}: column {id_column!r}, row "
                                      f"{table.line(i)}: missing customer ID {value!r}")
        if value in seen:
            raise DataValidationError(
                f"{table.path}: column {id_column!r}, rows {table.line(seen[value])} and "
                f"{table.line(i)}: customer ID {value!r} given twice; each customer must appear "
                f"once")
        seen[value] = i
    try:
        return validate_ids(ids, party=f"{table.path}: column {id_column!r}")
    except PsiError as exc:
        raise DataValidationError(str(exc)) from None


def load_party_csv(party: str, data: str | Path, schema: str | Path, id_column: str, *,
                   where: str = "") -> PartyData:
    """ONE party's own table from its own CSV, its own schema and its customer-ID column.

    The lender's schema declares the label (its rows' labels are kept), a passive party's
    declares none; the ID column is not in the schema. Every row is validated and encoded as
    `common.data.schema.encode_table` does; errors name the file, column and line (`where`, e.g.
    the node config or spec entry, for the schema's fit to the party's role).
    """
    spec = load_schema(schema)
    check_party_schema(party, spec, id_column, where or f"{party}'s schema {schema}")
    table = read_csv(data)
    ids = party_ids(table, id_column, missing=spec.missing_values)
    if party == LENDER:
        features, labels = encode_table(table, spec)
    else:
        features, labels = encode_features(table, spec), None
    return PartyData(party, tuple(ids), tuple(spec.feature_names),
                     features.astype(np.float64),
                     None if labels is None else labels.astype(np.float64))


def load_party(party: str, seed: int, spec: VerticalSpec | None = None) -> PartyData:
    """ONE party's table: its own known customers and its own columns, nothing of the others'.

    With a vertical data `spec`, the party's own CSV (`load_party_csv`). Without, the simulated
    party reads the bundled CSV and keeps only its rows and columns (encoding is row by row, so
    this equals slicing the encoded whole); only the lender keeps the label.
    """
    if party not in PARTIES:
        raise ValueError(f"unknown party {party!r}; parties are {PARTIES}")
    if spec is not None:
        source = spec.party(party)
        return load_party_csv(party, source.data, source.schema, source.id_column,
                              where=f"{spec.source}: parties.{party}")
    table, schema = load_bundled(VERTICAL_DATASET)
    ids = known_ids(party, seed, len(table.rows))
    rows = np.array([int(c.split("-")[1]) for c in ids])
    features, labels = encode_table(subset(table, rows, party), schema)
    cols = party_feature_indices(schema)[party]
    return PartyData(party, tuple(ids), tuple(schema.feature_names[i] for i in cols),
                     features[:, cols].astype(np.float64),
                     labels.astype(np.float64) if party == LENDER else None)


def lender_row_order(lender_rows: Sequence[int]) -> np.ndarray:
    """The lender's choice of aligned order: by its own row (PSI's order is random)."""
    return np.argsort(np.asarray(lender_rows), kind="stable")


def party_view(data: PartyData, aligned: Sequence[int], train_pos: np.ndarray,
               test_pos: np.ndarray) -> PartyView:
    """A party's aligned training and test rows from its own table and its PSI alignment."""
    block = data.features[np.asarray(aligned, dtype=int)]
    return PartyView(data.party, data.feature_names, block[train_pos], block[test_pos])


def check_aligned_split(labels: np.ndarray, train_pos: np.ndarray, test_pos: np.ndarray,
                        known: Mapping[str, int], where: str) -> None:
    """DataValidationError unless the aligned training and test rows both hold good and bad
    labels (what the stages and the evaluation need); names the sizes (simulation only)."""
    for name, rows in (("training", train_pos), ("test", test_pos)):
        counts = np.bincount(labels[rows].astype(int), minlength=2)
        if counts.min() < 1:
            raise DataValidationError(
                f"{where}: the parties share {len(labels)} customers (known: "
                + ", ".join(f"{p} {n}" for p, n in known.items())
                + f"); their {name} rows hold {int(counts[0])} good and {int(counts[1])} bad; "
                f"each part needs both (more common customers, or check the ID columns match)")


def load_vertical_scenario(seed: int, *, test_fraction: float = 0.25, stratify: bool = False,
                           spec: VerticalSpec | None = None) -> VerticalScenario:
    """PSI-aligned party views and a seeded train/test split: credit_data_vertical, or the
    parties' own CSVs of a vertical data `spec`.

    Each party's table comes from `load_party` (bundled: the lender knows every customer, each
    passive party a seeded random 85-95%; a spec: each party's own IDs). Rows are aligned by
    `common.vertical.psi.run_psi_in_memory` on the customer IDs, ordered by the lender's row and
    split uniformly at random (`stratify=True` stratifies on the label: simulation only).
    """
    data = {p: load_party(p, seed, spec) for p in PARTIES}
    psi = run_psi_in_memory({p: list(data[p].ids) for p in PARTIES}, lender=LENDER)
    # The lender fixes the aligned order (here: by its own row) and tells each partner.
    order = lender_row_order(psi.aligned_rows[LENDER])
    aligned = {p: np.asarray(psi.aligned_rows[p], dtype=int)[order] for p in PARTIES}
    lender_ids = [data[LENDER].ids[i] for i in aligned[LENDER]]
    assert data[LENDER].labels is not None
    y = data[LENDER].labels[aligned[LENDER]]
    train_pos, test_pos = split_aligned(len(y), test_fraction=test_fraction,
                                        seed=split_seed(seed), labels=y if stratify else None)
    if spec is not None:
        check_aligned_split(y, train_pos, test_pos, {p: len(data[p].ids) for p in PARTIES},
                            spec.source)
    views = {}
    for party in PARTIES:
        if [data[party].ids[i] for i in aligned[party]] != lender_ids:
            raise RuntimeError(f"PSI misaligned {party}'s rows")  # guards the in-memory driver
        views[party] = party_view(data[party], aligned[party], train_pos, test_pos)
    return VerticalScenario(seed=seed, views=views, train_labels=y[train_pos],
                            test_labels=y[test_pos],
                            known_customers={p: len(data[p].ids) for p in PARTIES},
                            psi_run_id=psi.run_id)
