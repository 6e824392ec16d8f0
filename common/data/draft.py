"""Draft a schema TOML from a CSV, for the analyst to review: `fedcredit schema draft`.

A schema must never be fitted on private data in a deployment: its clip bounds and category
lists are shared with the coordinator and every partner, so a bound or category learned from the
rows reveals something about them (the largest loan, a rare job title). The draft therefore marks
every value it read from the data with `LEARNED_MARK`, and its header says what to do: replace
each with a value justified without the data (domain knowledge, product limits, regulation) and
delete the mark. What it can decide without looking at values (column types from whether values
parse as numbers, missing-value handling) it decides, and says so.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from common.data.csv_table import RawTable
from common.data.toml_text import toml_string, toml_value
from common.errors import DataValidationError

LEARNED_MARK = "# LEARNED FROM YOUR DATA: replace with a value you can justify without it"
MISSING_TOKENS = ("", "NA")
MAX_CATEGORIES = 30
"""Above this many distinct values a text column is left out (`feature = false`), not listed."""


@dataclass(frozen=True)
class Draft:
    """The drafted TOML and every value in it that was read from the data."""

    toml: str
    learned: list[str]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def draft_schema(table: RawTable, *, label: str, bad_value: str | None = None,
                 name: str = "my_data") -> Draft:
    """A schema for `table` with `label` as the 0/1 target (`bad_value` = 1), every learned value
    marked. Raises DataValidationError when the label column is absent or not binary."""
    if label not in table.header:
        raise DataValidationError(f"{table.path}: no column {label!r} to use as the label "
                                  f"(columns: {', '.join(table.header)})")
    labels = Counter(v.strip() for v in table.column(label) if v.strip() not in MISSING_TOKENS)
    if len(labels) != 2:
        raise DataValidationError(f"{table.path}: label column {label!r} must have exactly two "
                                  f"values, found {len(labels)}")
    values = sorted(labels)
    if bad_value is None:
        bad_value = min(values, key=lambda v: (labels[v], v))  # the rarer outcome
    if bad_value not in values:
        raise DataValidationError(f"{table.path}: --bad-value {bad_value!r} is not one of the "
                                  f"label's values {values}")
    good = next(v for v in values if v != bad_value)
    learned = [f"label values {[good, bad_value]}"]
    lines = [
        f"# DRAFT schema for {table.path}, written by `fedcredit schema draft`.",
        "# Every line marked 'LEARNED FROM YOUR DATA' was read from the private rows. Shared with",
        "# the coordinator and every partner, such a value reveals something about them: replace",
        "# each with a bound or category list you can justify without the data (domain knowledge,",
        "# product limits, regulation), delete the mark, then run `fedcredit schema check`.",
        "",
        "[dataset]",
        f"name = {toml_string(name)}",
        f"label = {toml_string(label)}",
        f"label_values = {toml_value([good, bad_value])}  {LEARNED_MARK}",
        f"bad_value = {toml_string(bad_value)}",
        f"missing_values = {toml_value(list(MISSING_TOKENS))}",
    ]
    for column in table.header:
        if column == label:
            continue
        raw = [v.strip() for v in table.column(column)]
        present = [v for v in raw if v not in MISSING_TOKENS]
        has_missing = len(present) < len(raw)
        lines += ["", "[[columns]]", f"name = {toml_string(column)}"]
        numbers = [_number(v) for v in present]
        if present and all(n is not None for n in numbers):
            low, high = min(numbers), max(numbers)
            if low == high:
                high = low + 1.0
            lines += ['type = "numeric"', f"clip = [{_format(low)}, {_format(high)}]  "
                      f"{LEARNED_MARK}"]
            learned.append(f"{column}: clip [{_format(low)}, {_format(high)}]")
            if has_missing:
                lines += [f"fill = {_format(low)}  {LEARNED_MARK}", "missing_indicator = true"]
                learned.append(f"{column}: fill {_format(low)}")
            continue
        counts = Counter(present)
        if not present or len(counts) > MAX_CATEGORIES:
            lines += ['type = "categorical"', 'categories = ["?"]', 'unknown = "bucket"',
                      "feature = false  "
                      f"# {len(counts)} distinct values: left out; declare it yourself to use it"]
            continue
        categories = sorted(counts, key=lambda v: (-counts[v], v))
        lines += ['type = "categorical"', f"categories = {toml_value(categories)}  "
                  f"{LEARNED_MARK}", 'unknown = "bucket"']
        learned.append(f"{column}: categories {categories}")
        if has_missing:
            lines.append('missing = "category"')
    return Draft("\n".join(lines) + "\n", learned)
