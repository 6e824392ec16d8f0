"""Partner data loading and splitting (common/data/tables.py); bundled scenarios
(common/data/scenarios.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.csv_table import RawTable, read_csv, read_csv_chunks
from common.data.scenarios import (
    SCENARIOS,
    ScenarioSpec,
    get_scenario,
    load_scenario,
    load_scenario_partner,
    partner_rows,
)
from common.data.schema import Schema, encode_table, load_schema
from common.data.tables import (
    BUNDLED_DATASETS,
    PartnerData,
    bundled_path,
    load_bundled,
    load_partner_csv,
    record_digest,
    record_digests,
    split_chunks,
    split_train_test,
    subset,
)
from common.errors import DataValidationError
from tests.conftest import WriteCase

ID_SCHEMA = """\
[dataset]
name = "ids"
label = "status"
label_values = ["good", "bad"]
bad_value = "bad"

[[columns]]
name = "id"
type = "numeric"
clip = [0, 1000]
"""


def _id_case(write_case: WriteCase, n: int = 40, bad_every: int = 4) -> tuple[Path, Path]:
    """n rows with a unique id feature; every `bad_every`-th row is bad."""
    rows = [("bad" if i % bad_every == 0 else "good", str(i)) for i in range(n)]
    return write_case(rows, schema=ID_SCHEMA, header=("status", "id"), name="ids")


class _IdLookup:
    """Maps encoded id features back to row ids, using the schema's own encoding of the table."""

    def __init__(self, table: RawTable, schema: Schema) -> None:
        features, _ = encode_table(table, schema)
        self.by_value = {float(v): i for i, v in enumerate(features[:, 0])}
        assert len(self.by_value) == len(table.rows)

    def __call__(self, features: np.ndarray) -> set[int]:
        return {self.by_value[float(v)] for v in features[:, 0]}


# --- data.py ----------------------------------------------------------------------------------


def test_split_is_disjoint_covering_and_near_the_fraction(write_case: WriteCase) -> None:
    csv_path, schema_path = _id_case(write_case, n=400, bad_every=4)  # 100 bad of 400
    table, schema = read_csv(csv_path), load_schema(schema_path)
    _ids = _IdLookup(table, schema)
    train, test = split_train_test(table, schema, test_fraction=0.25, key=b"partner secret")
    assert len(train) + len(test) == 400
    assert abs(len(test) - 100) < 30  # binomial(400, 0.25): sd 8.7
    train_ids, test_ids = _ids(train.features), _ids(test.features)
    assert train_ids.isdisjoint(test_ids)
    assert train_ids | test_ids == set(range(400))
    # labels travel with their rows
    for split, ids in ((train, train.features), (test, test.features)):
        recovered = sorted(_ids(ids[split.labels == 1]))
        assert all(i % 4 == 0 for i in recovered)


def test_a_csv_read_in_chunks_gives_the_same_rows_lines_and_splits(
        write_case: WriteCase) -> None:
    csv_path, schema_path = _id_case(write_case, n=400, bad_every=4)
    whole, schema = read_csv(csv_path), load_schema(schema_path)
    chunks = list(read_csv_chunks(csv_path, chunk_rows=7))
    assert [len(c.rows) for c in chunks] == [7] * 57 + [1]
    assert [row for c in chunks for row in c.rows] == whole.rows
    assert [line for c in chunks for line in c.lines] == whole.lines
    one = split_train_test(whole, schema, test_fraction=0.25, key=b"k")
    chunked = split_chunks(read_csv_chunks(csv_path, chunk_rows=7), schema, test_fraction=0.25,
                           key=b"k")
    for a, b in zip(one, chunked, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_split_is_deterministic_per_key(write_case: WriteCase) -> None:
    csv_path, schema_path = _id_case(write_case)
    table, schema = read_csv(csv_path), load_schema(schema_path)
    _ids = _IdLookup(table, schema)
    a, _ = split_train_test(table, schema, test_fraction=0.3, key=b"one")
    b, _ = split_train_test(table, schema, test_fraction=0.3, key=b"one")
    c, _ = split_train_test(table, schema, test_fraction=0.3, key=b"two")
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert _ids(a.features) != _ids(c.features)


def _test_ids(table: RawTable, schema: Schema) -> set[int]:
    """The `id` values of the rows that land in the test split."""
    features, _ = encode_table(table, schema)
    id_of = {float(v): int(i) for v, i in zip(features[:, 0], table.column("id"), strict=True)}
    _, test = split_train_test(table, schema, test_fraction=0.25, key=b"k")
    return {id_of[float(v)] for v in test.features[:, 0]}


def test_adding_or_removing_a_record_moves_no_other_record(write_case: WriteCase) -> None:
    """The unit of privacy is a record of the partner's whole data set: which side (train or
    test) a record falls on depends on that record alone. A seeded permutation of the table
    (the split before) moved hundreds of other rows when one row was added or removed."""
    csv_path, schema_path = _id_case(write_case, n=300)
    table, schema = read_csv(csv_path), load_schema(schema_path)
    base = _test_ids(table, schema)
    for removed in (0, 1, 150, 299):
        rows = [r for i, r in enumerate(table.rows) if i != removed]
        smaller = RawTable(path=table.path, header=table.header, rows=rows)
        assert _test_ids(smaller, schema) == base - {removed}
    added = RawTable(path=table.path, header=table.header, rows=[("good", "999"), *table.rows])
    assert _test_ids(added, schema) - {999} == base
    reordered = RawTable(path=table.path, header=tuple(reversed(table.header)),
                         rows=[tuple(reversed(r)) for r in reversed(table.rows)])
    assert _test_ids(reordered, schema) == base


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_test_fraction(write_case: WriteCase, fraction: float) -> None:
    csv_path, schema_path = _id_case(write_case)
    with pytest.raises(ValueError, match="test fraction"):
        split_train_test(read_csv(csv_path), load_schema(schema_path), test_fraction=fraction,
                         key=b"k")


def test_split_needs_both_labels_on_each_side(write_case: WriteCase) -> None:
    csv_path, schema_path = _id_case(write_case, n=10, bad_every=100)  # only row 0 is bad
    with pytest.raises(DataValidationError, match=r"good and 0 bad rows; it needs both") as info:
        split_train_test(read_csv(csv_path), load_schema(schema_path), test_fraction=0.25,
                         key=b"k")
    assert str(csv_path) in str(info.value)


def test_load_partner_csv_brings_own_data(write_case: WriteCase) -> None:
    csv_path, schema_path = _id_case(write_case)
    data = load_partner_csv("lender", csv_path, schema_path, test_fraction=0.25,
                            split_key=b"k")
    assert isinstance(data, PartnerData) and data.partner == "lender"
    assert len(data.train) + len(data.test) == 40
    assert data.train.features.shape[1] == load_schema(schema_path).num_features


def test_loading_computes_each_records_digest_in_the_same_pass(write_case: WriteCase) -> None:
    """The lifetime odometer identifies a data set by these digests: a partner's file is
    hashed once, as it is split, and a caller without the loaded data gets the same digests by
    streaming the file."""
    csv_path, schema_path = _id_case(write_case, n=400)
    data = load_partner_csv("lender", csv_path, schema_path, test_fraction=0.25, split_key=b"k")
    table = read_csv(csv_path)
    expected = [record_digest(b"k", table.header, row) for row in table.rows]
    assert data.records.dtype == np.dtype("<u8") and data.records.tolist() == expected
    assert len(set(expected)) == 400  # one digest per distinct record
    assert record_digests(csv_path, b"k").tolist() == expected
    assert record_digests(csv_path, b"other").tolist() != expected  # keyed by the partner
    assert PartnerData("sim", data.train, data.test).records.size == 0


def test_a_records_digest_ignores_line_endings_row_and_column_order(tmp_path: Path) -> None:
    lines = ["status,id", "good,1", "bad,2", "good,3"]
    variants = {
        "lf": "\n".join(lines) + "\n",
        "crlf": "\r\n".join(lines) + "\r\n",
        "bom": "\ufeff" + "\n".join(lines),
        "reordered": "id,status\n3,good\n1,good\n2,bad\n",
    }
    digests = {}
    for name, text in variants.items():
        (tmp_path / f"{name}.csv").write_text(text, encoding="utf-8", newline="")
        digests[name] = sorted(record_digests(tmp_path / f"{name}.csv", b"k").tolist())
    assert len({tuple(d) for d in digests.values()}) == 1
    (tmp_path / "changed.csv").write_text("status,id\ngood,1\nbad,2\ngood,4\n")
    changed = record_digests(tmp_path / "changed.csv", b"k").tolist()
    assert len(set(changed) & set(digests["lf"])) == 2  # the changed record is another record


def test_load_partner_csv_surfaces_validation_errors(write_case: WriteCase,
                                                     tiny_rows: list[tuple[str, ...]]) -> None:
    tiny_rows[0] = ("maybe", *tiny_rows[0][1:])
    csv_path, schema_path = write_case(tiny_rows)
    with pytest.raises(DataValidationError, match=r"column 'status', row 2"):
        load_partner_csv("bank", csv_path, schema_path, test_fraction=0.25, split_key=b"k")


def test_subset_keeps_rows_and_labels_path() -> None:
    table = RawTable(path="x.csv", header=("a",), rows=[("0",), ("1",), ("2",), ("3",)])
    part = subset(table, np.array([3, 1]), "bank")
    assert part.rows == [("3",), ("1",)]
    assert part.header == ("a",)
    assert part.path == "x.csv [bank]"


def test_empty_partition_error_names_partner() -> None:
    table = RawTable(path="x.csv", header=("status", "id"), rows=[("good", "1")])
    schema = Schema(name="s", label="status", label_values=("good", "bad"), bad_value="bad",
                    columns=())
    with pytest.raises(DataValidationError, match=r"x\.csv \[lender\]: no data rows"):
        encode_table(subset(table, np.array([], dtype=int), "lender"), schema)


def test_bundled_path_rejects_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        bundled_path("nope")


@pytest.mark.parametrize("dataset", BUNDLED_DATASETS)
def test_bundled_data_sets_validate_against_their_schemas(dataset: str) -> None:
    csv_path, schema_path = bundled_path(dataset)
    assert csv_path.is_file() and schema_path.is_file()
    table, schema = load_bundled(dataset)
    features, labels = encode_table(table, schema)
    assert features.shape == (len(table.rows), schema.num_features)
    assert np.all(np.isfinite(features))
    assert set(np.unique(labels)) == {0.0, 1.0}


# --- scenarios.py -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credit() -> tuple[RawTable, Schema, ScenarioSpec]:
    table, schema = load_bundled("credit_data")
    return table, schema, get_scenario("credit_data")


def _rows(credit: tuple[RawTable, Schema, ScenarioSpec], split: str, seed: int = 0,
          alpha: float = 0.5) -> dict[str, np.ndarray]:
    table, schema, spec = credit
    return partner_rows(table, spec, split=split, seed=seed, alpha=alpha,
                        label_column=schema.label, bad_value=schema.bad_value)


def _assert_partition(rows: dict[str, np.ndarray], n: int) -> None:
    together = np.concatenate(list(rows.values()))
    assert len(together) == n, "partners must hold every row exactly once"
    assert len(np.unique(together)) == n, "partners must be disjoint"
    assert set(together.tolist()) == set(range(n))


def test_credit_data_natural_split_sizes(credit: tuple[RawTable, Schema, ScenarioSpec]) -> None:
    table = credit[0]
    assert len(table.rows) == 4454
    rows = _rows(credit, "natural")
    assert list(rows) == ["lender", "ecommerce", "bank"]
    assert {p: len(r) for p, r in rows.items()} == {"lender": 1219, "ecommerce": 1128,
                                                     "bank": 2107}
    _assert_partition(rows, 4454)
    home = table.column("Home")
    assert {home[i] for i in rows["bank"]} == {"owner"}
    assert {home[i] for i in rows["lender"]} == {"rent", "priv"}


def test_natural_split_ignores_seed(credit: tuple[RawTable, Schema, ScenarioSpec]) -> None:
    a, b = _rows(credit, "natural", seed=0), _rows(credit, "natural", seed=99)
    for partner in a:
        np.testing.assert_array_equal(a[partner], b[partner])


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_random_splits_are_seeded_partitions(credit: tuple[RawTable, Schema, ScenarioSpec],
                                             split: str) -> None:
    a, b, c = (_rows(credit, split, seed=s) for s in (5, 5, 6))
    _assert_partition(a, 4454)
    _assert_partition(c, 4454)
    assert list(a) == ["lender", "ecommerce", "bank"]
    for partner in a:
        np.testing.assert_array_equal(a[partner], b[partner])
    assert any(not np.array_equal(a[p], c[p]) for p in a)


def test_iid_split_is_balanced(credit: tuple[RawTable, Schema, ScenarioSpec]) -> None:
    sizes = [len(r) for r in _rows(credit, "iid", seed=1).values()]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_split_skews_labels(credit: tuple[RawTable, Schema, ScenarioSpec]) -> None:
    table, schema, _ = credit
    bad = np.array([v == schema.bad_value for v in table.column(schema.label)])
    skewed = _rows(credit, "dirichlet", seed=0, alpha=0.1)
    rates = [bad[r].mean() for r in skewed.values() if len(r)]
    iid = [bad[r].mean() for r in _rows(credit, "iid", seed=0).values()]
    assert np.ptp(rates) > 3 * np.ptp(iid)


TOY_TABLE = RawTable(path="t.csv", header=("status", "g"),
                     rows=[("good", "a"), ("bad", "b"), ("good", "b"), ("bad", "a")])
TOY_SPEC = ScenarioSpec("toy", "toy", "g", {"p": {"a"}, "q": {"b"}})


def _toy_rows(split: str, alpha: float = 1.0) -> dict[str, np.ndarray]:
    return partner_rows(TOY_TABLE, TOY_SPEC, split=split, seed=0, alpha=alpha,
                        label_column="status", bad_value="bad")


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="'alpha'"):
        _toy_rows("dirichlet", alpha=alpha)


def test_unknown_split_names_the_split() -> None:
    with pytest.raises(ValueError, match=r"unknown split 'vertical'.*'split'"):
        _toy_rows("vertical")


def test_toy_natural_split_follows_groups() -> None:
    rows = _toy_rows("natural")
    assert {p: r.tolist() for p, r in rows.items()} == {"p": [0, 3], "q": [1, 2]}


def test_unknown_scenario_names_the_scenario() -> None:
    with pytest.raises(ValueError, match=r"unknown scenario 'mortgage'.*'scenario'"):
        get_scenario("mortgage")
    with pytest.raises(ValueError, match="'mortgage'"):
        load_scenario("mortgage")


def test_natural_split_rejects_unclaimed_rows() -> None:
    table = RawTable(path="t.csv", header=("g",), rows=[("a",), ("b",), ("zzz",)])
    spec = ScenarioSpec("toy", "toy", "g", {"p": {"a"}, "q": {"b"}})
    with pytest.raises(ValueError, match=r"1 rows match no partner group of column 'g'"):
        partner_rows(table, spec, split="natural", seed=0, alpha=1.0, label_column="g",
                     bad_value="a")


def test_scenarios_declare_three_partners() -> None:
    assert SCENARIOS["credit_data"].partners == ["lender", "ecommerce", "bank"]
    assert len(SCENARIOS["lending_club"].partners) == 3


def test_load_scenario_natural_partners_sizes_and_bad_rates() -> None:
    partners = load_scenario("credit_data", split="natural", seed=0, test_fraction=0.25)
    sizes = {p.partner: len(p.train) + len(p.test) for p in partners}
    assert sizes == {"lender": 1219, "ecommerce": 1128, "bank": 2107}
    # The bad rates docs/architecture.md states ("Bundled data and scenarios"). The keyed split
    # is not stratified: each side is a random sample of records (binomial spread).
    expected_bad = {"bank": 0.185, "lender": 0.387, "ecommerce": 0.348}
    for p in partners:
        assert len(p.test) / sizes[p.partner] == pytest.approx(0.25, abs=0.04)
        assert abs(p.train.bad_rate - p.test.bad_rate) < 0.06
        assert p.train.bad_rate == pytest.approx(expected_bad[p.partner], abs=0.015)


def test_load_scenario_is_deterministic_and_seed_dependent() -> None:
    a = load_scenario("credit_data", split="iid", seed=2)
    b = load_scenario("credit_data", split="iid", seed=2)
    c = load_scenario("credit_data", split="iid", seed=3)
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa.train.features, pb.train.features)
        np.testing.assert_array_equal(pa.test.labels, pb.test.labels)
    assert not np.array_equal(a[0].train.features, c[0].train.features)


def test_load_scenario_partner_by_partition_id() -> None:
    bank = load_scenario_partner("credit_data", 2, split="natural", seed=0)
    assert bank.partner == "bank"
    assert len(bank.train) + len(bank.test) == 2107
    with pytest.raises(ValueError, match="partition id 3 out of range"):
        load_scenario_partner("credit_data", 3)
