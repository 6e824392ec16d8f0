"""Partner data sets: load a CSV against its schema and split it into train/test by a keyed hash
of each record, under a secret the partner holds (a deployed partner's own CSV, or a bundled data
set that `scenarios` deals out)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from common.data.csv_table import RawTable, read_csv, read_csv_chunks
from common.data.schema import Schema, encode_table, load_schema
from common.errors import DataValidationError

BUNDLED_DATASETS = ("credit_data", "lending_club")
RECORD_DTYPE = np.dtype("<u8")
"""A record digest (`record_digest`): 8 bytes of the record's keyed hash, as an integer."""


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
    records: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=RECORD_DTYPE))
    """The `record_digest` of each row (train and test, file order) when loaded from the
    partner's own CSV (`load_partner_csv`): what its lifetime odometer identifies the data set by
    (`common.privacy.record_index`). Empty otherwise."""


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


def record_hmac(key: bytes, header: tuple[str, ...], row: tuple[str, ...]) -> bytes:
    """HMAC-SHA256 of one record under the partner's secret `key`: its values by column name
    (column order, row order and line endings do not matter), the same however the file is
    saved. Its first 8 bytes place the record in train or test (`record_in_test`), the next 8
    are its `record_digest`."""
    record = json.dumps(
        dict(zip(header, row, strict=True)), sort_keys=True, ensure_ascii=True
    ).encode("ascii")
    return hmac.new(key, record, hashlib.sha256).digest()


def _in_test(mac: bytes, test_fraction: float) -> bool:
    return int.from_bytes(mac[:8], "big") / 2.0**64 < test_fraction


def record_in_test(
    key: bytes, header: tuple[str, ...], row: tuple[str, ...], test_fraction: float
) -> bool:
    """Whether this record belongs to the test split: its `record_hmac`'s first 8 bytes read as
    a uniform number in [0, 1), below `test_fraction`. It depends on this record and the key
    alone: adding or removing a record moves no other record between train and test."""
    return _in_test(record_hmac(key, header, row), test_fraction)


def record_digest(key: bytes, header: tuple[str, ...], row: tuple[str, ...]) -> int:
    """The record's identity for the lifetime odometer: bytes 8-16 of its `record_hmac`, keyed
    by the partner's secret (so it tells no one else which records it holds) and independent of
    the bytes that choose its split."""
    return int.from_bytes(record_hmac(key, header, row)[8:16], "little")


def _digests(macs: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(mac[8:16] for mac in macs), dtype=RECORD_DTYPE).copy()


def record_digests(csv_path: str | Path, key: bytes) -> np.ndarray:
    """Every row's `record_digest` of a CSV, read chunk by chunk (for a caller that has not
    loaded it with `load_partner_csv`, which computes them on the way)."""
    parts = [
        _digests([record_hmac(key, table.header, row) for row in table.rows])
        for table in read_csv_chunks(csv_path)
    ]
    return np.concatenate(parts) if parts else np.empty(0, dtype=RECORD_DTYPE)


def split_train_test(table: RawTable, schema: Schema, *, test_fraction: float,
                     key: bytes, both_classes: bool = True) -> tuple[Split, Split]:
    """Encode `table` and split it into train/test by `record_in_test` under `key` (the
    partner's secret split key, see `common.privacy.randomness.split_key`). Each split must hold
    good and bad rows (`both_classes`), or, for a small simulated partner, at least one row
    (its own rank metrics are then undefined; pooled ones are not)."""
    return split_chunks([table], schema, test_fraction=test_fraction, key=key,
                        both_classes=both_classes)


def split_chunks(
    tables: Iterable[RawTable],
    schema: Schema,
    *,
    test_fraction: float,
    key: bytes,
    both_classes: bool = True,
) -> tuple[Split, Split]:
    """`split_train_test` of a table given in chunks (`read_csv_chunks`): each chunk is encoded
    and split on its own, so a big file's strings are never all held at once; the same splits
    as one table, since each record's side depends on that record alone."""
    train, test, _ = _split_and_digest(
        tables, schema, test_fraction=test_fraction, key=key, both_classes=both_classes
    )
    return train, test


def _split_and_digest(
    tables: Iterable[RawTable],
    schema: Schema,
    *,
    test_fraction: float,
    key: bytes,
    both_classes: bool = True,
) -> tuple[Split, Split, np.ndarray]:
    """`split_chunks`, and every row's `record_digest` from the same keyed hash (one pass)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    parts: dict[str, list[Split]] = {"training": [], "test": []}
    digests: list[np.ndarray] = []
    path = ""
    for table in tables:
        path = table.path
        features, labels = encode_table(table, schema)
        macs = [record_hmac(key, table.header, row) for row in table.rows]
        in_test = np.array([_in_test(mac, test_fraction) for mac in macs], dtype=bool)
        digests.append(_digests(macs))
        parts["training"].append(Split(features[~in_test], labels[~in_test]))
        parts["test"].append(Split(features[in_test], labels[in_test]))
    train, test = (
        Split(
            np.concatenate([p.features for p in parts[name]]),
            np.concatenate([p.labels for p in parts[name]]),
        )
        for name in ("training", "test")
    )
    for name, part in (("training", train), ("test", test)):
        counts = np.bincount(part.labels.astype(int), minlength=2)
        if (counts.min() if both_classes else counts.sum()) < 1:
            raise DataValidationError(
                f"{path}: the {name} split has {int(counts[0])} good and "
                f"{int(counts[1])} bad rows; it needs {'both' if both_classes else 'a row'} "
                f"(more rows, or another test fraction)"
            )
    return train, test, np.concatenate(digests)


def load_partner_csv(partner: str, csv_path: str | Path, schema_path: str | Path, *,
                     test_fraction: float, split_key: bytes) -> PartnerData:
    """Load a partner's own CSV with its own schema (deployment: bring your own data), chunk by
    chunk: a CSV of millions of rows is never held as strings at once. Each row's
    `record_digest` comes from the keyed hash that splits it (no second pass)."""
    schema = load_schema(schema_path)
    train, test, records = _split_and_digest(read_csv_chunks(csv_path), schema,
                                             test_fraction=test_fraction, key=split_key)
    return PartnerData(partner=partner, train=train, test=test, records=records)


def subset(table: RawTable, rows: np.ndarray, label: str) -> RawTable:
    """The rows of `table` at positions `rows`, labelled for error messages."""
    return RawTable(path=f"{table.path} [{label}]", header=table.header,
                    rows=[table.rows[i] for i in rows],
                    lines=[table.line(int(i)) for i in rows])
