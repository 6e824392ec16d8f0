"""The encoded feature layout: what each model input unit means, from the schema alone.

Two schemas with the same layout encode every record into the same input units in the same
order; a schema that lists the same categories in another order (same width) does not, and its
features would be silently permuted relative to the shared model. The layout is public schema
metadata (column names, encodings, categories, clip bounds, transforms, fill values), never data.

The coordinator announces the run's layout and its hash with every train and evaluate
instruction (`announcement`); a partner refuses unless its own schema's layout is identical
(`refusal`, which says what differs column by column) and echoes its layout's hash in every
reply, which the coordinator compares with the run's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from common.errors import SchemaError
from common.protocol import FEATURE_LAYOUT, FEATURE_LAYOUT_SHA256, LAYOUT_NOT_ANNOUNCED

if TYPE_CHECKING:
    from common.data.schema import ColumnSpec

# The encoder's semantics (`common.data.schema.encode_table`); a change of how a declared column
# is encoded must bump it, so that the layouts (and hashes) of old and new partners differ.
LAYOUT_VERSION = 1
MAX_DIFFERENCES = 6  # how many differences a refusal lists (the rest are counted)


def column_layout(spec: ColumnSpec) -> dict[str, Any]:
    """What decides the meaning of the input units of one feature column, in the order they
    appear: its encoding and every declared parameter of it (no statistic of any data)."""
    entry: dict[str, Any] = {"column": spec.name, "encoding": spec.type}
    if spec.type in ("numeric", "ratio"):
        assert spec.clip is not None
        if spec.derived:
            entry.update(numerator=spec.numerator, denominator=spec.denominator)
        entry.update(clip=list(spec.clip), transform=spec.transform,
                     fill=spec.fill if spec.missing == "fill" else None,
                     missing_indicator=spec.missing_indicator)
    elif spec.type == "ordinal":
        entry.update(levels=list(spec.categories), missing_category=spec.missing == "category")
    else:
        entry.update(categories=list(spec.categories),
                     unknown_bucket=spec.unknown == "bucket",
                     missing_category=spec.missing == "category")
    return entry


@dataclass(frozen=True)
class FeatureLayout:
    """A schema's encoded feature layout as canonical JSON (`text`), hashed by `sha256`."""

    text: str

    @classmethod
    def of(cls, columns: Iterable[ColumnSpec]) -> FeatureLayout:
        """The layout of a schema's columns (non-feature columns produce no input unit)."""
        return cls(_canonical({"version": LAYOUT_VERSION,
                               "columns": [column_layout(c) for c in columns if c.feature]}))

    @classmethod
    def from_json(cls, text: object) -> FeatureLayout:
        """A layout received as JSON text; SchemaError if it is not one."""
        try:
            doc = json.loads(str(text))
            columns = doc["columns"]
            if isinstance(doc["version"], int) and isinstance(columns, list) and all(
                    isinstance(c, dict) and isinstance(c.get("column"), str) for c in columns):
                return cls(_canonical(doc))
        except (ValueError, TypeError, KeyError):
            pass
        raise SchemaError("the announced feature layout is not a fedcredit feature layout")

    @cached_property
    def sha256(self) -> str:
        """SHA-256 (hex) of the canonical JSON: equal hashes, equal layouts."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def version(self) -> int:
        """The encoder version the layout was made for."""
        return int(json.loads(self.text)["version"])

    @property
    def columns(self) -> list[dict[str, Any]]:
        """One entry per feature column, in model input order."""
        return list(json.loads(self.text)["columns"])

    def differences(self, run: FeatureLayout, *, values: bool = True) -> list[str]:
        """What differs between this (the partner's) layout and the run's, column by column,
        each as '<this> vs <run's>' (with `values=False`: only which setting differs, for a
        partner that must not tell the coordinator its schema's values, which a drafted schema
        may have learned from its data); empty when they are identical."""
        found = []
        if self.version != run.version:
            found.append(f"layout version {self.version} vs {run.version} (another fedcredit "
                         f"version)")
        ours = {c["column"]: c for c in self.columns}
        theirs = {c["column"]: c for c in run.columns}
        found += [f"column {name!r}: not a feature column of this partner's schema"
                  for name in theirs if name not in ours]
        found += [f"column {name!r}: not a feature column of the run's schema"
                  for name in ours if name not in theirs]
        for name, mine in ours.items():
            other = theirs.get(name)
            if other is None:
                continue
            for key in sorted((set(mine) | set(other)) - {"column"}):
                if mine.get(key) != other.get(key):
                    setting = key.replace("_", " ")
                    found.append(f"column {name!r}: {setting} "
                                 f"{_show(mine.get(key))} vs {_show(other.get(key))}" if values
                                 else f"column {name!r}: {setting} differs from the run's")
        order = [n for n in ours if n in theirs], [n for n in theirs if n in ours]
        if order[0] != order[1]:
            found.append(f"column order {order[0]} vs {order[1]}")
        return found


def announcement(layout: FeatureLayout) -> dict[str, str]:
    """The config entries of a train or evaluate instruction that announce the run's layout."""
    return {FEATURE_LAYOUT: layout.text, FEATURE_LAYOUT_SHA256: layout.sha256}


def refusal(own: FeatureLayout, requested: dict[str, Any], *, required: bool) -> str:
    """Why a partner whose schema has layout `own` must not take part in a round whose
    instruction config is `requested` ('' if it may). Names schema metadata only.

    `required`: whether an instruction that announces no layout is refused, and the reason
    names which settings differ but not the partner's values (a deployed partner's), or
    accepted, with the values shown (a simulated partner's: its data is the coordinator's own
    scenario).
    """
    announced_hash = requested.get(FEATURE_LAYOUT_SHA256)
    if announced_hash is None and FEATURE_LAYOUT not in requested:
        return LAYOUT_NOT_ANNOUNCED if required else ""
    if announced_hash == own.sha256:
        return ""
    try:
        run = FeatureLayout.from_json(requested.get(FEATURE_LAYOUT))
    except SchemaError as exc:
        return f"{exc}; this partner's layout sha256 is {own.sha256}"
    if run.sha256 != announced_hash:
        return (f"the announced feature layout does not match its announced sha256; this "
                f"partner's layout sha256 is {own.sha256}")
    differences = (own.differences(run, values=not required)
                   or [f"layout sha256 {own.sha256} vs {run.sha256}"])
    shown = differences[:MAX_DIFFERENCES]
    if len(differences) > len(shown):
        shown.append(f"and {len(differences) - len(shown)} more")
    return ("this partner's schema encodes its features differently from the run's (this "
            "partner's vs the run's): " + "; ".join(shown) + "; fix the schema to match the "
            "run's, then rejoin")


def _show(value: Any) -> str:
    """A layout value as the schema TOML would spell it (whole numbers without '.0')."""
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
