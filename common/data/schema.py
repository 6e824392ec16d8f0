"""Data schemas: declared, data-independent encoding of a partner's CSV into tensors.

A schema (TOML) declares every column, its type, categories, clip bounds, transforms and fill
values, the label column and its bad value. Encoding uses only the schema, never statistics of
private data, so preprocessing leaks nothing about any partner's records.

Numeric columns are clipped, transformed and scaled by their transformed clip bounds onto
[-1, 1]; ordinal columns map their declared order evenly onto [-1, 1]; one-hot and
missing-indicator features are 0 or 1. Centred numeric inputs make (DP-)SGD converge in fewer
steps, and 0/1 indicators keep per-example gradient norms small, so clipping loses little:
both matter when every step costs privacy.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.csv_table import RawTable, decode_text
from common.data.layout import FeatureLayout
from common.errors import DataValidationError, SchemaError

COLUMN_TYPES = ("numeric", "categorical", "ordinal", "ratio")
TRANSFORMS = ("none", "log1p")
MISSING_POLICIES = ("error", "fill", "category")
UNKNOWN_POLICIES = ("error", "bucket")
COLUMN_KEYS = ("name", "type", "clip", "transform", "fill", "missing_indicator", "categories",
               "missing", "unknown", "feature", "numerator", "denominator")
DATASET_KEYS = ("name", "label", "label_values", "bad_value", "missing_values")
LABEL_KEYS = ("label", "label_values", "bad_value")  # all or none (none: no label column)
TOP_LEVEL_KEYS = ("dataset", "columns")


@dataclass(frozen=True)
class ColumnSpec:
    """One declared column and how to encode it."""

    name: str
    type: str
    clip: tuple[float, float] | None = None
    transform: str = "none"
    fill: float | None = None
    missing_indicator: bool = False
    categories: tuple[str, ...] = ()
    missing: str = "error"
    unknown: str = "error"
    feature: bool = True
    numerator: str = ""
    denominator: str = ""

    @property
    def derived(self) -> bool:
        """Whether the column is computed from other columns (a ratio), not read from the CSV."""
        return self.type == "ratio"

    @property
    def sources(self) -> tuple[str, ...]:
        """The CSV columns this column reads."""
        return (self.numerator, self.denominator) if self.derived else (self.name,)

    def feature_names(self) -> list[str]:
        """Names of the encoded features this column produces (empty if not a feature)."""
        if not self.feature:
            return []
        if self.type in ("numeric", "ratio"):
            names = [self.name]
            if self.missing_indicator:
                names.append(f"{self.name}__missing")
            return names
        if self.type == "ordinal":
            return [self.name] + ([f"{self.name}__missing"] if self.missing == "category" else [])
        names = [f"{self.name}={c}" for c in self.categories]
        if self.unknown == "bucket":
            names.append(f"{self.name}=__other__")
        if self.missing == "category":
            names.append(f"{self.name}=__missing__")
        return names


@dataclass(frozen=True)
class Schema:
    """A data set schema: label definition plus ordered column specs. A schema without a label
    (`label` empty: no `label`, `label_values` or `bad_value` in its `[dataset]`) describes a
    table of features only, a vertical passive party's (`encode_features`)."""

    name: str
    label: str
    label_values: tuple[str, ...]
    bad_value: str
    columns: tuple[ColumnSpec, ...]
    missing_values: tuple[str, ...] = ("", "NA")
    source_hash: str = field(default="", compare=False)

    @property
    def has_label(self) -> bool:
        """Whether the schema declares a label column."""
        return bool(self.label)

    @property
    def feature_names(self) -> list[str]:
        """Encoded feature names, in model input order."""
        return [n for c in self.columns for n in c.feature_names()]

    @property
    def feature_columns(self) -> list[ColumnSpec]:
        """The column each encoded feature comes from, in model input order."""
        return [c for c in self.columns for _ in c.feature_names()]

    @property
    def num_features(self) -> int:
        """Width of the encoded feature matrix."""
        return len(self.feature_names)

    def column(self, name: str) -> ColumnSpec:
        """The spec of column `name`."""
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(f"schema {self.name!r} has no column {name!r}")

    def layout(self) -> FeatureLayout:
        """The encoded feature layout: what each model input unit means (schema metadata)."""
        return FeatureLayout.of(self.columns)

    @property
    def layout_sha256(self) -> str:
        """SHA-256 of `layout()`: equal for two schemas exactly when their layouts are."""
        return self.layout().sha256


def _require(table: dict, key: str, where: str) -> Any:
    if key not in table:
        raise SchemaError(f"{where}: missing required key {key!r}")
    return table[key]


def _table(value: object, key: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: {key!r} must be a table")
    return value


def _no_unknown_keys(table: dict, known: tuple[str, ...], where: str) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise SchemaError(f"{where}: unknown keys {extra} (known keys: {', '.join(known)})")


def _number(value: object, key: str, where: str) -> float:
    """A finite TOML number (not a boolean), else SchemaError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _strings(value: object, key: str, where: str) -> tuple[str, ...]:
    """A TOML list of strings or numbers, as strings, else SchemaError naming the key."""
    if not isinstance(value, list) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        raise SchemaError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def _flag(raw: dict, key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SchemaError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _parse_column(raw: dict, where: str) -> ColumnSpec:
    name = str(_require(raw, "name", where))
    where = f"{where} (column {name!r})"
    col_type = str(_require(raw, "type", where))
    if col_type not in COLUMN_TYPES:
        raise SchemaError(f"{where}: type must be one of {COLUMN_TYPES}, got {col_type!r}")
    _no_unknown_keys(raw, COLUMN_KEYS, where)
    transform = str(raw.get("transform", "none"))
    if transform not in TRANSFORMS:
        raise SchemaError(f"{where}: transform must be one of {TRANSFORMS}, got {transform!r}")
    clip = None
    categories: tuple[str, ...] = ()
    numerator = denominator = ""
    if col_type == "ratio":
        numerator = str(_require(raw, "numerator", where))
        denominator = str(_require(raw, "denominator", where))
        if "fill" not in raw:
            raise SchemaError(f"{where}: a ratio needs a fill value (used where either column "
                              f"is missing or the denominator is not positive)")
    elif "numerator" in raw or "denominator" in raw:
        raise SchemaError(f"{where}: numerator and denominator are for type = 'ratio' only")
    if col_type in ("numeric", "ratio"):
        raw_clip = _require(raw, "clip", where)
        if not (isinstance(raw_clip, list) and len(raw_clip) == 2):
            raise SchemaError(f"{where}: clip must be [low, high], got {raw_clip!r}")
        clip = (_number(raw_clip[0], "clip low", where), _number(raw_clip[1], "clip high", where))
        if not (clip[0] < clip[1] and math.isfinite(clip[1] - clip[0])):
            raise SchemaError(f"{where}: clip low must be < high, got {list(clip)}")
        if transform == "log1p" and clip[0] <= -1:
            raise SchemaError(f"{where}: log1p needs clip low > -1")
    else:
        categories = _strings(_require(raw, "categories", where), "categories", where)
        if not categories or len(set(categories)) != len(categories):
            raise SchemaError(f"{where}: categories must be a non-empty list without repeats")
    fill = None if raw.get("fill") is None else _number(raw["fill"], "fill", where)
    if fill is not None and clip is not None and not clip[0] <= fill <= clip[1]:
        raise SchemaError(f"{where}: fill {fill:g} lies outside clip {list(clip)}: a filled "
                          f"value would not be the declared one")
    missing = str(raw.get("missing", "fill" if fill is not None else "error"))
    if col_type == "ratio" and missing != "fill":
        raise SchemaError(f"{where}: a ratio's missing policy is 'fill'")
    if missing not in MISSING_POLICIES:
        raise SchemaError(f"{where}: missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if missing == "fill" and (fill is None or col_type not in ("numeric", "ratio")):
        raise SchemaError(f"{where}: missing = 'fill' needs a numeric column with a fill value")
    if missing == "category" and col_type in ("numeric", "ratio"):
        raise SchemaError(f"{where}: missing = 'category' is for categorical/ordinal columns; "
                          f"numeric columns use missing = 'fill' with a fill value")
    unknown = str(raw.get("unknown", "error"))
    if unknown not in UNKNOWN_POLICIES:
        raise SchemaError(f"{where}: unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    if col_type == "ordinal" and unknown == "bucket":
        raise SchemaError(f"{where}: an ordinal column cannot bucket unknown values")
    return ColumnSpec(
        name=name, type=col_type, clip=clip, transform=transform, fill=fill,
        missing_indicator=_flag(raw, "missing_indicator", False, where),
        categories=categories, missing=missing, unknown=unknown,
        feature=_flag(raw, "feature", True, where),
        numerator=numerator, denominator=denominator,
    )


def load_schema(path: str | Path) -> Schema:
    """Parse and validate a schema TOML file."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SchemaError(f"cannot read schema file {path}: {exc}") from exc
    try:
        raw = tomllib.loads(decode_text(text, str(path), SchemaError))
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{path}: invalid TOML: {exc}") from exc
    where = str(path)
    _no_unknown_keys(raw, TOP_LEVEL_KEYS, where)
    dataset = _table(_require(raw, "dataset", where), "dataset", where)
    in_dataset = f"{where} [dataset]"
    _no_unknown_keys(dataset, DATASET_KEYS, in_dataset)
    labelled = any(key in dataset for key in LABEL_KEYS)  # none: a vertical passive party's
    label_values: tuple[str, ...] = ()
    bad_value = ""
    if labelled:
        label_values = _strings(_require(dataset, "label_values", in_dataset), "label_values",
                                in_dataset)
        bad_value = str(_require(dataset, "bad_value", in_dataset))
        if len(label_values) != 2 or bad_value not in label_values:
            raise SchemaError(f"{where} [dataset]: label_values must be two values including "
                              f"bad_value")
    raw_columns = _require(raw, "columns", where)
    if not isinstance(raw_columns, list) or not all(isinstance(c, dict) for c in raw_columns):
        raise SchemaError(f"{where}: 'columns' must be an array of tables ([[columns]] entries)")
    columns = tuple(_parse_column(c, f"{where} [[columns]] #{i + 1}")
                    for i, c in enumerate(raw_columns))
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SchemaError(f"{where}: duplicate column names {repeated}")
    for spec in columns:
        for source in spec.sources if spec.derived else ():
            if source not in names or columns[names.index(source)].type != "numeric":
                raise SchemaError(f"{where}: ratio {spec.name!r} reads {source!r}, which is not "
                                  f"a numeric column of the schema")
    label = str(_require(dataset, "label", in_dataset)) if labelled else ""
    if label and label in names:
        raise SchemaError(f"{where}: label column {label!r} must not also be a feature column")
    missing_values = _strings(dataset.get("missing_values", ["", "NA"]), "missing_values",
                              in_dataset)
    return Schema(
        name=str(dataset.get("name", path.stem)), label=label, label_values=label_values,
        bad_value=bad_value, columns=columns, missing_values=missing_values,
        source_hash=hashlib.sha256(text).hexdigest(),
    )


def _transform(values: np.ndarray, spec: ColumnSpec) -> np.ndarray:
    low, high = spec.clip  # type: ignore[misc]
    clipped = np.clip(values, low, high)
    if spec.transform == "log1p":
        clipped, low, high = np.log1p(clipped), math.log1p(low), math.log1p(high)
    return 2.0 * (clipped - low) / (high - low) - 1.0


def encode_table(table: RawTable, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Validate `table` against `schema` and encode it; returns (features float32, labels 0/1).

    Errors name file, column and CSV line (line 1 is the header).
    """
    if not schema.has_label:
        raise DataValidationError(
            f"{table.path}: schema {schema.name!r} declares no label ([dataset] label, "
            f"label_values, bad_value); a schema without a label describes a vertical passive "
            f"party's table only")
    _check_table(table, schema)
    labels = np.empty(len(table.rows), dtype=np.float32)
    for i, value in enumerate(table.column(schema.label)):
        if value not in schema.label_values:
            raise DataValidationError(
                f"{table.path}: column {schema.label!r}, row {table.line(i)}: label {value!r} "
                f"is not one of the declared values {list(schema.label_values)}")
        labels[i] = 1.0 if value == schema.bad_value else 0.0
    return encode_features(table, schema), labels


def _check_table(table: RawTable, schema: Schema) -> None:
    """Every column the schema declares (its label, when it has one) is in `table`, which has
    rows."""
    required = [c.name for c in schema.columns if not c.derived]
    for name in [schema.label] * schema.has_label + required:
        if name not in table.header:
            raise DataValidationError(
                f"{table.path}: missing column {name!r} required by schema {schema.name!r}")
    if not table.rows:
        raise DataValidationError(f"{table.path}: no data rows (empty partition)")


def encode_features(table: RawTable, schema: Schema) -> np.ndarray:
    """Validate `table`'s columns against `schema` and encode its features (float32), without
    reading any label (a vertical passive party's table). Errors as `encode_table`'s."""
    _check_table(table, schema)
    missing_tokens = set(schema.missing_values)
    blocks: list[np.ndarray] = []
    for spec in schema.columns:
        if not spec.feature:
            _check_categories(table, spec, missing_tokens)
            continue
        if spec.derived:
            blocks.append(_encode_ratio(table, spec, schema, missing_tokens))
            continue
        values = table.column(spec.name)
        if spec.type == "numeric":
            blocks.append(_encode_numeric(table, spec, values, missing_tokens))
        else:
            blocks.append(_encode_categorical(table, spec, values, missing_tokens))
    if not blocks:
        raise DataValidationError(f"{table.path}: schema {schema.name!r} declares no feature "
                                  f"column")
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _missing_error(path: str, spec: ColumnSpec, row: int) -> DataValidationError:
    return DataValidationError(
        f"{path}: column {spec.name!r}, row {row}: missing value, and the schema declares no "
        f"fill value or missing category for this column")


def _encode_numeric(table: RawTable, spec: ColumnSpec, values: list[str],
                    missing_tokens: set[str]) -> np.ndarray:
    path = table.path
    out = np.empty((len(values), 2 if spec.missing_indicator else 1), dtype=np.float64)
    for i, value in enumerate(values):
        if value in missing_tokens:
            if spec.missing != "fill" or spec.fill is None:
                raise _missing_error(path, spec, table.line(i))
            number, is_missing = spec.fill, 1.0
        else:
            try:
                number = float(value)
            except ValueError:
                raise DataValidationError(
                    f"{path}: column {spec.name!r}, row {table.line(i)}: "
                    f"non-numeric value {value!r}"
                ) from None
            if not math.isfinite(number):
                raise DataValidationError(
                    f"{path}: column {spec.name!r}, row {table.line(i)}: "
                    f"non-finite value {value!r}")
            is_missing = 0.0
        out[i, 0] = number
        if spec.missing_indicator:
            out[i, 1] = is_missing
    out[:, 0] = _transform(out[:, 0], spec)
    return out


def _encode_ratio(table: RawTable, spec: ColumnSpec, schema: Schema,
                  missing_tokens: set[str]) -> np.ndarray:
    """numerator / denominator, raw values (each validated by its own column's encoding); the
    fill value where either is missing or the denominator is not positive; then clipped,
    transformed and scaled like a numeric column."""
    numerator, denominator = (table.column(name) for name in spec.sources)
    assert spec.fill is not None
    out = np.full((len(numerator), 1), spec.fill, dtype=np.float64)
    for i, (top, bottom) in enumerate(zip(numerator, denominator, strict=True)):
        if top in missing_tokens or bottom in missing_tokens:
            continue
        try:
            top_value, bottom_value = float(top), float(bottom)
        except ValueError:
            raise DataValidationError(
                f"{table.path}: row {table.line(i)}: ratio {spec.name!r} needs numbers in "
                f"{spec.numerator!r} and {spec.denominator!r}, got {top!r} and {bottom!r}"
            ) from None
        if bottom_value > 0 and math.isfinite(top_value / bottom_value):
            out[i, 0] = top_value / bottom_value
    out[:, 0] = _transform(out[:, 0], spec)
    return out


def _category_index(path: str, spec: ColumnSpec, value: str, row: int,
                    missing_tokens: set[str]) -> int:
    """Index of `value` among the one-hot slots: categories, then bucket, then missing."""
    if value in missing_tokens:
        if spec.missing != "category":
            raise _missing_error(path, spec, row)
        return len(spec.categories) + (1 if spec.unknown == "bucket" else 0)
    try:
        return spec.categories.index(value)
    except ValueError:
        if spec.unknown == "bucket":
            return len(spec.categories)
        raise DataValidationError(
            f"{path}: column {spec.name!r}, row {row}: unknown category {value!r}; declared "
            f"categories are {list(spec.categories)} (set unknown = \"bucket\" in the schema to "
            f"map unseen values to an 'other' bucket)") from None


def _check_categories(table: RawTable, spec: ColumnSpec, missing_tokens: set[str]) -> None:
    if spec.type == "numeric":
        return
    for i, value in enumerate(table.column(spec.name)):
        _category_index(table.path, spec, value, table.line(i), missing_tokens)


def _encode_categorical(table: RawTable, spec: ColumnSpec, values: list[str],
                        missing_tokens: set[str]) -> np.ndarray:
    width = len(spec.feature_names())
    out = np.zeros((len(values), width), dtype=np.float64)
    for i, value in enumerate(values):
        idx = _category_index(table.path, spec, value, table.line(i), missing_tokens)
        if spec.type == "ordinal":
            if idx >= len(spec.categories):
                out[i, 0], out[i, 1] = 0.0, 1.0
            else:
                out[i, 0] = 2.0 * idx / max(len(spec.categories) - 1, 1) - 1.0
        else:
            out[i, idx] = 1.0
    return out
