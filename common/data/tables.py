"""Partner data sets: load a CSV against its schema and split it into train/test by a keyed hash
of each record, under a secret the partner holds (a deployed partner's own CSV, or a bundled data
set that `scenarios` deals out)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from common.data.csv_table import RawTable, read_csv, read_csv_chunks
from common.data.schema import Schema, encode_table, load_schema
from common.errors import DataValidationError

BUNDLED_DATASETS = ("credit_data", "lending_club")


@dataclass(frozen=True)
class Split:
    """Encoded features and 0/1 labels (1 = bad)."""

    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def bad_rate(self) -> float:
        """Share of bad outcomes."""
        return float(self.labels.mean()) if len(self) else float("nan")


@dataclass(frozen=True)
class PartnerData:
    """One partner's private train and test splits (never leave the partner)."""

    partner: str
    train: Split
    test: Split


def bundled_data_dir() -> Path:
    """The folder of the bundled CSVs and schemas.

    `flwr run` executes apps from an extracted Flower App bundle, which carries code and TOML but
    no CSV files; the installed fedcredit distribution (regular or editable) has them.
    """
    here = Path(__file__).parent
    if (here / f"{BUNDLED_DATASETS[0]}.csv").exists():
        return here
    try:
        dist = metadata.distribution("fedcredit")
    except metadata.PackageNotFoundError:
        return here
    candidates = [Path(str(dist.locate_file("common/data")))]
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if direct_url.startswith("file://"):
        candidates.append(Path(unquote(urlparse(direct_url).path)) / "common" / "data")
    for folder in candidates:
        if (folder / f"{BUNDLED_DATASETS[0]}.csv").exists():
            return folder
    return here


def bundled_path(dataset: str) -> tuple[Path, Path]:
    """Paths of a bundled data set's CSV and schema."""
    if dataset not in BUNDLED_DATASETS:
        raise ValueError(f"unknown bundled data set {dataset!r}; choose from {BUNDLED_DATASETS}")
    folder = bundled_data_dir()
    return folder / f"{dataset}.csv", folder / f"{dataset}.toml"


def load_bundled(dataset: str) -> tuple[RawTable, Schema]:
    """Read a bundled CSV and its schema."""
    csv_path, schema_path = bundled_path(dataset)
    return read_csv(csv_path), load_schema(schema_path)


def record_in_test(key: bytes, header: tuple[str, ...], row: tuple[str, ...],
                   test_fraction: float) -> bool:
    """Whether this record belongs to the test split: HMAC-SHA256 of the record (its values by
    column name, so column order does not matter) under the partner's secret `key`, read as a
    uniform number in [0, 1), below `test_fraction`. It depends on this record and the key alone:
    adding or removing a record moves no other record between train and test."""
    record = json.dumps(dict(zip(header, row, strict=True)), sort_keys=True,
                        ensure_ascii=True).encode("ascii")
    digest = hmac.new(key, record, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def split_train_test(table: RawTable, schema: Schema, *, test_fraction: float,
                     key: bytes, both_classes: bool = True) -> tuple[Split, Split]:
    """Encode `table` and split it into train/test by `record_in_test` under `key` (the
    partner's secret split key, see `common.privacy.randomness.split_key`). Each split must hold
    good and bad rows (`both_classes`), or, for a small simulated partner, at least one row
    (its own rank metrics are then undefined; pooled ones are not)."""
    return split_chunks([table], schema, test_fraction=test_fraction, key=key,
                        both_classes=both_classes)


def split_chunks(tables: Iterable[RawTable], schema: Schema, *, test_fraction: float,
                 key: bytes, both_classes: bool = True) -> tuple[Split, Split]:
    """`split_train_test` of a table given in chunks (`read_csv_chunks`): each chunk is encoded
    and split on its own, so a big file's strings are never all held at once; the same splits
    as one table, since each record's side depends on that record alone."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    parts: dict[str, list[Split]] = {"training": [], "test": []}
    path = ""
    for table in tables:
        path = table.path
        features, labels = encode_table(table, schema)
        in_test = np.array([record_in_test(key, table.header, row, test_fraction)
                            for row in table.rows], dtype=bool)
        parts["training"].append(Split(features[~in_test], labels[~in_test]))
        parts["test"].append(Split(features[in_test], labels[in_test]))
    train, test = (Split(np.concatenate([p.features for p in parts[name]]),
                         np.concatenate([p.labels for p in parts[name]]))
                   for name in ("training", "test"))
    for name, part in (("training", train), ("test", test)):
        counts = np.bincount(part.labels.astype(int), minlength=2)
        if (counts.min() if both_classes else counts.sum()) < 1:
            raise DataValidationError(
                f"{path}: the {name} split has {int(counts[0])} good and "
                f"{int(counts[1])} bad rows; it needs {'both' if both_classes else 'a row'} "
                f"(more rows, or another test fraction)")
    return train, test


def load_partner_csv(partner: str, csv_path: str | Path, schema_path: str | Path, *,
                     test_fraction: float, split_key: bytes) -> PartnerData:
    """Load a partner's own CSV with its own schema (deployment: bring your own data), chunk by
    chunk: a CSV of millions of rows is never held as strings at once."""
    schema = load_schema(schema_path)
    train, test = split_chunks(read_csv_chunks(csv_path), schema,
                               test_fraction=test_fraction, key=split_key)
    return PartnerData(partner=partner, train=train, test=test)


def subset(table: RawTable, rows: np.ndarray, label: str) -> RawTable:
    """The rows of `table` at positions `rows`, labelled for error messages."""
    return RawTable(path=f"{table.path} [{label}]", header=table.header,
                    rows=[table.rows[i] for i in rows],
                    lines=[table.line(int(i)) for i in rows])
