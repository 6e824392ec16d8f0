"""A data spec: which CSV rows each simulated partner holds, under one schema (bring your own data).

Either one CSV per partner, or one CSV plus a column naming each row's partner (optionally
`groups` mapping several values of that column to one partner, as the bundled scenarios do), one
schema TOML (the existing format) and optional per-partner budgets. From a small TOML file
(`load_spec`; relative paths are relative to that file):

    schema = "loans.toml"
    [partners]                 # or: data = "all.csv" and partner_column = "branch"
    north = "north.csv"
    south = "south.csv"
    [budgets]                  # optional: epsilon, or "epsilon:delta"
    north = 1.0

or from `fedcredit simulate --data/--partner-column/--schema` (`spec_from_options`). The bundled
`natural` scenarios are specs of the same kind (`spec_for_scenario`). Every error names the file
or option and the key at fault. A spec with `mode = "vertical"` is the vertical form instead
(each party's own CSV, schema and customer-ID column: `common.data.vertical_spec`), read by
`load_vertical_spec`; `load_any_spec` reads either.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.data.csv_table import RawTable, read_csv
from common.data.scenarios import get_scenario, load_scenario
from common.data.schema import load_schema
from common.data.tables import PartnerData, bundled_path, split_train_test, subset
from common.data.toml_text import toml_string, toml_value
from common.data.vertical_spec import VERTICAL_MODE, VerticalSpec, parse_vertical_spec
from common.errors import DataValidationError
from common.privacy.randomness import split_key

SPEC_KEYS = ("schema", "partners", "data", "partner_column", "groups", "budgets")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED = ("coordinator",)  # the coordinator's key pair shares the partners' keys folder


def _error(where: str, message: str) -> DataValidationError:
    return DataValidationError(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class DataSpec:
    """Partners' data for a simulation: `files` (partner -> CSV, in partition-id order), or one
    `data` CSV whose `partner_column` names each row's partner (through `groups` when given).
    `budgets` holds (partner, epsilon, delta or None = the run's delta); `source` names where the
    spec came from in error messages."""

    schema: Path
    files: tuple[tuple[str, Path], ...] = ()
    data: Path | None = None
    partner_column: str = ""
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    budgets: tuple[tuple[str, float, float | None], ...] = ()
    source: str = "data spec"

    @property
    def partner_names(self) -> list[str]:
        """Partner names in partition-id order (one shared CSV without groups: its sorted
        partner-column values)."""
        if self.files:
            return [name for name, _ in self.files]
        if self.groups:
            return [name for name, _ in self.groups]
        assert self.data is not None
        return list(_column_values(str(self.data), self.partner_column, _stamp(self.data)))

    def budgets_text(self) -> str:
        """The budgets in `--budget` / `sim-budgets` form: 'north=1,south=3:1e-06'."""
        return ",".join(f"{name}={eps!r}" + (f":{delta!r}" if delta is not None else "")
                        for name, eps, delta in self.budgets)

    def check(self) -> None:
        """Validate what needs no encoding: files exist, the schema parses, the partner column
        exists, at least 2 partners with valid, distinct names, budgets name known partners."""
        src = self.source
        load_schema(_existing(self.schema, src, "schema"))
        if self.files and self.data is not None:
            raise _error(src, "give either one CSV per partner or one CSV with a partner "
                              "column, not both")
        if self.data is None:
            for name, path in self.files:
                _existing(path, src, f"partners.{name}")
        else:
            if not self.partner_column:
                raise _error(src, "one shared CSV needs 'partner_column', the column naming "
                                  "each row's partner")
            header = read_csv(_existing(self.data, src, "data")).header
            if self.partner_column not in header:
                raise _error(src, f"partner_column {self.partner_column!r} is not a column of "
                                  f"{self.data} (columns: {list(header)})")
        names = self.partner_names
        for name in names:
            if not _NAME.match(name) or name in _RESERVED:
                raise _error(src, f"partner name {name!r} must be 1-64 letters, digits, '_', "
                                  f"'-' or '.', start with a letter or digit, and not be "
                                  f"'coordinator' (use 'groups' to name the partners of a "
                                  f"shared CSV)")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _error(src, f"partner(s) {repeated} named more than once")
        if len(names) < 2:
            raise _error(src, f"a federation needs at least 2 partners, got {names}")
        for name, eps, delta in self.budgets:
            if name not in names:
                raise _error(src, f"budgets.{name} names no partner; partners are {names}")
            if not 0 < eps < math.inf or (delta is not None and not 0 < delta < 1):
                raise _error(src, f"budgets.{name}: epsilon must be a finite number > 0 and "
                                  f"delta in (0, 1), got {eps}" + (f":{delta}" if delta else ""))

    def load_partners(self, *, seed: int, test_fraction: float,
                      only: str | None = None) -> list[PartnerData]:
        """Every partner's encoded train/test split (only `only`'s when given), split by the
        same keyed hash as the bundled scenarios (`split_key(partner=..., seed=seed)`)."""
        schema = load_schema(self.schema)
        out = []
        for name, table in self._tables(only):
            if len(table.rows) < 2:
                raise _error(self.source, f"partner {name} holds {len(table.rows)} row(s) of "
                                          f"{table.path}; a train/test split needs more")
            train, test = split_train_test(table, schema, test_fraction=test_fraction,
                                           key=split_key(partner=name, seed=seed))
            out.append(PartnerData(partner=name, train=train, test=test))
        return out

    def _tables(self, only: str | None) -> list[tuple[str, RawTable]]:
        """(partner, its raw rows) in partition-id order."""
        if self.data is None:
            return [(name, read_csv(path)) for name, path in self.files
                    if only is None or name == only]
        table = read_csv(self.data)
        values = table.column(self.partner_column)
        owner = {v: name for name, group in self.groups for v in group}
        if self.groups:
            unclaimed = [i for i, v in enumerate(values) if v not in owner]
            if unclaimed:
                raise _error(self.source, f"{self.data}: line {table.line(unclaimed[0])}: "
                                          f"{self.partner_column} {values[unclaimed[0]]!r} is "
                                          f"in no partner's group ({len(unclaimed)} such rows)")
        names = [owner.get(v, v) for v in values]
        return [(name, subset(table, np.flatnonzero([n == name for n in names]), name))
                for name in self.partner_names if only is None or name == only]

    def to_toml(self) -> str:
        """The spec as a TOML file `load_spec` reads back (absolute paths)."""
        lines = [f"schema = {toml_string(self.schema.resolve())}"]
        if self.data is not None:
            lines += [f"data = {toml_string(self.data.resolve())}",
                      f"partner_column = {toml_string(self.partner_column)}"]
            if self.groups:
                lines += ["", "[groups]"] + [
                    f"{toml_string(n)} = {toml_value(list(g))}" for n, g in self.groups]
        else:
            lines += ["", "[partners]"] + [f"{toml_string(n)} = {toml_string(p.resolve())}"
                                           for n, p in self.files]
        if self.budgets:
            lines += ["", "[budgets]"] + [
                f"{toml_string(n)} = " + (repr(e) if d is None else toml_string(f"{e!r}:{d!r}"))
                for n, e, d in self.budgets]
        return "\n".join(lines) + "\n"


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime, size) of `path`, so that a cache keyed on it notices an edited file."""
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _column_values(path: str, column: str, _stamp: tuple[int, int]) -> tuple[str, ...]:
    """Sorted distinct values of `column` in the CSV at `path` (cached per file version)."""
    table = read_csv(path)
    if column not in table.header:
        raise DataValidationError(f"{path}: no column {column!r} (partner_column)")
    return tuple(sorted(set(table.column(column))))


def _existing(path: Path, where: str, key: str) -> Path:
    if not path.is_file():
        raise _error(where, f"{key}: no such file {path}")
    return path


def _budget(where: str, name: str, value: Any) -> tuple[str, float, float | None]:
    """One `[budgets]` entry: epsilon, or 'epsilon:delta'."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            return name, float(value), None
        eps, _, delta = str(value).partition(":")
        return name, float(eps), float(delta) if delta else None
    except ValueError:
        raise _error(where, f"budgets.{name} must be epsilon or 'epsilon:delta', got "
                            f"{value!r}") from None


def parse_spec(raw: dict[str, Any], base: Path, where: str) -> DataSpec:
    """A DataSpec from a parsed spec TOML; relative paths are relative to `base`."""
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise _error(where, f"unknown key(s) {unknown}; known keys: {list(SPEC_KEYS)}")
    if not isinstance(raw.get("schema"), str):
        raise _error(where, "'schema' (the schema TOML's path) is missing or not a string")
    for key in ("partners", "groups", "budgets"):
        if not isinstance(raw.get(key, {}), dict):
            raise _error(where, f"'{key}' must be a table ([{key}])")
    partners, groups = raw.get("partners", {}), raw.get("groups", {})
    for name, value in partners.items():
        if not isinstance(value, str):
            raise _error(where, f"partners.{name} must be a CSV path, got {value!r}")
    for name, value in groups.items():
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise _error(where, f"groups.{name} must be a list of partner column values, got "
                                f"{value!r}")
    if partners and ("data" in raw or groups):
        raise _error(where, "give either [partners] (one CSV each) or 'data' with "
                            "'partner_column', not both")
    if not partners and "data" not in raw:
        raise _error(where, "no partners: give [partners] (name = CSV path) or 'data' with "
                            "'partner_column'")
    spec = DataSpec(
        schema=base / raw["schema"],
        files=tuple((str(n), base / p) for n, p in partners.items()),
        data=base / str(raw["data"]) if "data" in raw else None,
        partner_column=str(raw.get("partner_column", "")),
        groups=tuple((str(n), tuple(v)) for n, v in groups.items()),
        budgets=tuple(_budget(where, str(n), v) for n, v in raw.get("budgets", {}).items()),
        source=where)
    spec.check()
    return spec


def _read_spec(path: Path) -> dict[str, Any]:
    """The parsed TOML of a data spec file; errors name the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataValidationError(f"cannot read data spec {path}: "
                                  f"{exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{path}: not a valid TOML file: {exc}") from None


def load_spec(path: str | Path) -> DataSpec:
    """Read and check a data spec TOML file; errors name the file and the key."""
    path = Path(path)
    raw = _read_spec(path)
    if raw.get("mode") == VERTICAL_MODE:
        raise _error(str(path), "is a vertical spec (mode = 'vertical'); a horizontal run "
                                "needs partners holding different customers ([partners])")
    return parse_spec(raw, path.resolve().parent, str(path))


def load_vertical_spec(path: str | Path) -> VerticalSpec:
    """Read and check a vertical data spec TOML file (`common.data.vertical_spec`)."""
    path = Path(path)
    return parse_vertical_spec(_read_spec(path), path.resolve().parent, str(path))


def load_any_spec(path: str | Path) -> DataSpec | VerticalSpec:
    """A data spec file of either form: vertical with `mode = "vertical"`, else the partners
    holding different customers (`mode = "horizontal"` may be said, or left out)."""
    path = Path(path)
    raw = _read_spec(path)
    if raw.get("mode") == VERTICAL_MODE:
        return parse_vertical_spec(raw, path.resolve().parent, str(path))
    if raw.get("mode", "horizontal") != "horizontal":
        raise _error(str(path), f"mode must be 'horizontal' or 'vertical', got {raw['mode']!r}")
    raw.pop("mode", None)
    return parse_spec(raw, path.resolve().parent, str(path))


def spec_from_options(data: list[str], schema: str, partner_column: str = "") -> DataSpec:
    """A DataSpec from `--data NAME=CSV ...` (or one `--data CSV --partner-column COL`) and
    `--schema`; budgets stay with `--budget`."""
    where = ""  # the CLI names the option
    if not schema:
        raise _error(where, "--schema is required with --data (draft one with `fedcredit "
                            "schema draft DATA.csv --label COL --out SCHEMA.toml`)")
    raw: dict[str, Any] = {"schema": schema}
    if partner_column:
        if len(data) != 1 or "=" in data[0]:
            raise _error(where, "--partner-column takes exactly one --data CSV (no NAME=)")
        raw.update(data=data[0], partner_column=partner_column)
    else:
        pairs = [item.partition("=") for item in data]
        if any(not sep or not name.strip() or not path for name, sep, path in pairs):
            raise _error(where, "each --data must be NAME=CSV (or give one CSV and "
                                "--partner-column)")
        names = [name.strip() for name, _, _ in pairs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _error(where, f"partner(s) {repeated} given more than once")
        raw["partners"] = {name.strip(): path for name, _, path in pairs}
    return parse_spec(raw, Path.cwd(), where)


def spec_for_scenario(name: str) -> DataSpec:
    """A bundled scenario's `natural` split as a data spec (the same partners and rows)."""
    scenario = get_scenario(name)
    csv_path, schema_path = bundled_path(scenario.dataset)
    return DataSpec(schema=schema_path, data=csv_path, partner_column=scenario.partition_column,
                    groups=tuple((p, tuple(sorted(g))) for p, g in scenario.groups.items()),
                    source=f"scenario {name}")


class RunData(Protocol):
    """What selects a simulation's data (a `common.config.RunConfig`)."""

    @property
    def data_spec(self) -> str: ...
    @property
    def scenario(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def dirichlet_alpha(self) -> float: ...
    @property
    def test_fraction(self) -> float: ...
    @property
    def num_partners(self) -> int: ...


def load_run_partners(run: RunData, only: str | None = None) -> list[PartnerData]:
    """Every simulated partner's data for a run: its data spec's, or its bundled scenario's."""
    if run.data_spec:
        return load_spec(run.data_spec).load_partners(seed=run.seed,
                                                      test_fraction=run.test_fraction, only=only)
    return load_scenario(run.scenario, split=run.split, seed=run.seed, alpha=run.dirichlet_alpha,
                         test_fraction=run.test_fraction, only=only,
                         num_partners=run.num_partners)
