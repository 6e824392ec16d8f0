"""Partner data sets: load a CSV against its schema and split it into train/test, stratified and
seeded (a deployed partner's own CSV, or a bundled data set that `scenarios` deals out)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from common.data.schema import RawTable, Schema, encode_table, load_schema, read_csv
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


def split_train_test(table: RawTable, schema: Schema, *, test_fraction: float,
                     seed: int) -> tuple[Split, Split]:
    """Encode `table` and split it into stratified train/test parts."""
    features, labels = encode_table(table, schema)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    counts = np.bincount(labels.astype(int), minlength=2)
    if counts.min() < 2:
        raise DataValidationError(
            f"{table.path}: needs at least 2 rows of each label for a stratified split, got "
            f"{int(counts[0])} good and {int(counts[1])} bad")
    from sklearn.model_selection import train_test_split  # on first use: a slow import

    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)
    return (Split(features[idx_train], labels[idx_train]),
            Split(features[idx_test], labels[idx_test]))


def load_partner_csv(partner: str, csv_path: str | Path, schema_path: str | Path, *,
                     test_fraction: float, seed: int) -> PartnerData:
    """Load a partner's own CSV with its own schema (deployment: bring your own data)."""
    schema = load_schema(schema_path)
    train, test = split_train_test(read_csv(csv_path), schema,
                                   test_fraction=test_fraction, seed=seed)
    return PartnerData(partner=partner, train=train, test=test)


def subset(table: RawTable, rows: np.ndarray, label: str) -> RawTable:
    """The rows of `table` at positions `rows`, labelled for error messages."""
    return RawTable(path=f"{table.path} [{label}]", header=table.header,
                    rows=[table.rows[i] for i in rows],
                    lines=[table.line(int(i)) for i in rows])
