"""The synthetic scale-test population (common/data/synthetic.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from common.data import synthetic
from common.data.csv_table import read_csv
from common.data.schema import encode_table
from common.data.synthetic import (
    BLOCK_ROWS,
    HEADER,
    MISSING,
    POPULATION,
    credit_data_schema,
    export_csv,
    generate_chunks,
    held_out_rows,
    write_partner_arrays,
)
from common.data.tables import bundled_path, load_partner_csv


def _rows(rows: int, **kwargs: int) -> list[tuple[str, ...]]:
    return [row for chunk in generate_chunks(rows, **kwargs) for row in chunk.rows]


def _encoded(rows: int, seed: int, partner: int = 0) -> tuple[np.ndarray, np.ndarray]:
    schema = credit_data_schema()
    parts = [encode_table(chunk, schema)
             for chunk in generate_chunks(rows, seed=seed, partner=partner, chunk_rows=4_000)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_seeded_and_independent_of_chunk_size() -> None:
    rows = 2 * BLOCK_ROWS + 123
    reference = _rows(rows, seed=4, partner=1)
    chunks = list(generate_chunks(rows, seed=4, partner=1, chunk_rows=5_000))
    assert [len(c.rows) for c in chunks] == [5_000, 5_000, 5_000, rows - 15_000]
    assert chunks[-1].line(0) == 15_002  # line numbers run on across chunks (header = 1)
    assert [r for c in chunks for r in c.rows] == reference
    assert _rows(rows, seed=4, partner=1, chunk_rows=rows) == reference
    assert _rows(1_000, seed=4, partner=1) == reference[:1_000]  # prefixes are stable
    assert _rows(1_000, seed=5, partner=1) != reference[:1_000]
    assert _rows(1_000, seed=4, partner=2) != reference[:1_000]


def test_bad_rate_within_the_documented_range() -> None:
    _, labels = _encoded(20_000, seed=0)
    low, high = POPULATION.bad_rate_range
    assert low <= labels.mean() <= high


def test_follows_credit_data_schema() -> None:
    schema = credit_data_schema()
    with bundled_path("credit_data")[0].open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == HEADER
    table = next(generate_chunks(5_000, seed=3))
    features, labels = encode_table(table, schema)
    assert features.shape == (5_000, schema.num_features) and features.dtype == np.float32
    assert set(np.unique(labels)) == {0.0, 1.0}
    for spec in schema.columns:
        if spec.derived:
            continue
        values = [v for v in table.column(spec.name) if v != MISSING]
        if spec.type == "numeric":
            numbers = np.array(values, dtype=float)
            assert spec.clip[0] <= numbers.min() and numbers.max() <= spec.clip[1], spec.name
        else:
            assert set(values) <= set(spec.categories), spec.name


def test_label_has_signal() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    features, labels = _encoded(12_000, seed=1)
    model = LogisticRegression(max_iter=500).fit(features[:8_000], labels[:8_000])
    auc = roc_auc_score(labels[8_000:], model.predict_proba(features[8_000:])[:, 1])
    assert 0.68 <= auc <= 0.85


def test_arrays_are_read_only_memory_maps_of_the_encoding(tmp_path: Path) -> None:
    rows = 3_000
    data = write_partner_arrays(tmp_path, rows, seed=2, partner=1, chunk_rows=700)
    features, labels = _encoded(rows, seed=2, partner=1)
    in_test = held_out_rows(rows, seed=2, partner=1, test_fraction=0.25)
    for split, rows_here in ((data.train, ~in_test), (data.test, in_test)):
        for array in (split.features, split.labels):
            assert isinstance(array, np.memmap) and not array.flags.writeable
            assert array.dtype == np.float32
        np.testing.assert_array_equal(split.features, features[rows_here])
        np.testing.assert_array_equal(split.labels, labels[rows_here])
    assert len(data.train) + len(data.test) == rows
    assert 0.2 < len(data.test) / rows < 0.3
    assert json.loads((tmp_path / synthetic.SIDECAR).read_text())["synthetic"] is True


def test_arrays_are_reused_for_the_same_parameters(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_partner_arrays(tmp_path, 1_500, seed=0)
    monkeypatch.setattr(synthetic, "generate_chunks",
                        lambda *a, **k: pytest.fail("regenerated cached arrays"))
    again = write_partner_arrays(tmp_path, 1_500, seed=0)
    np.testing.assert_array_equal(again.train.features, first.train.features)
    monkeypatch.undo()
    other = write_partner_arrays(tmp_path, 1_500, seed=9)
    assert not np.array_equal(other.train.labels[:200], first.train.labels[:200])


def test_exported_csv_reads_back_with_the_schema(tmp_path: Path) -> None:
    path = export_csv(tmp_path / "synthetic.csv", 2_500, seed=6, chunk_rows=1_000)
    features, labels = encode_table(read_csv(path), credit_data_schema())
    expected_features, expected_labels = _encoded(2_500, seed=6)
    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(labels, expected_labels)
    partner = load_partner_csv("synthetic", path, bundled_path("credit_data")[1],
                               test_fraction=0.25, split_key=b"k" * 32)
    assert len(partner.train) + len(partner.test) == 2_500
