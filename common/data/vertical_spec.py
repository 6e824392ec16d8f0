"""A vertical data spec: each vertical party's own CSV, its own schema and its own customer-ID
column (bring your own data, vertical mode; `fedcredit simulate --spec`).

    mode = "vertical"
    [parties.lender]             # holds the label: its schema declares it
    data = "lender.csv"
    schema = "lender.toml"
    id_column = "customer_id"
    [parties.ecommerce]          # a passive party: its schema declares no label
    data = "shop.csv"
    schema = "shop.toml"
    id_column = "shopper"
    [parties.bank]
    data = "bank.csv"
    schema = "bank.toml"
    id_column = "acct_no"

Relative paths are relative to the spec file. The parties are the vertical roles
(`common.data.scenarios.PARTIES`): the lender, the e-commerce platform and the bank, each exactly
once. Each party's rows are lined up with the others' by the PSI on the values of its ID column
(`common.vertical.parties.load_party_csv` reads and checks a party's table, the same loader a
deployed vertical party uses on its node config `data-path`, `schema-path` and `id-column`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.csv_table import read_csv
from common.data.scenarios import LENDER, PARTIES
from common.data.schema import Schema, load_schema
from common.data.toml_text import toml_string
from common.errors import DataValidationError

VERTICAL_MODE = "vertical"
VERTICAL_SPEC_KEYS = ("mode", "parties")
PARTY_KEYS = ("data", "schema", "id_column")


def _error(where: str, message: str) -> DataValidationError:
    return DataValidationError(f"{where}: {message}" if where else message)


def check_party_schema(party: str, schema: Schema, id_column: str, where: str) -> None:
    """A party's schema fits its role: the lender's declares the label, a passive party's none
    (the label stays with the lender); the ID column is neither the label nor a schema column
    (an ID is no feature). DataValidationError naming `where` otherwise."""
    if party not in PARTIES:
        raise _error(where, f"unknown vertical party {party!r}; the parties are {list(PARTIES)}")
    if not id_column:
        raise _error(where, "no customer-ID column given (the column holding the IDs the PSI "
                            "aligns the parties' rows on)")
    if party == LENDER and not schema.has_label:
        raise _error(where, f"the lender holds the label, but its schema {schema.name!r} "
                            f"declares none (set label, label_values and bad_value in its "
                            f"[dataset])")
    if party != LENDER and schema.has_label:
        raise _error(where, f"{party} is a passive party and holds no label, but its schema "
                            f"{schema.name!r} declares label {schema.label!r} (remove label, "
                            f"label_values and bad_value from its [dataset])")
    if id_column == schema.label or id_column in {c.name for c in schema.columns}:
        raise _error(where, f"the customer-ID column {id_column!r} is also declared in schema "
                            f"{schema.name!r}; leave it out of the schema (it is no feature)")


@dataclass(frozen=True)
class PartySource:
    """Where one vertical party's table comes from: its CSV, its schema and its ID column."""

    party: str
    data: Path
    schema: Path
    id_column: str


@dataclass(frozen=True)
class VerticalSpec:
    """Every vertical party's own table (`parties`, in `PARTIES` order); `source` names where
    the spec came from in error messages."""

    parties: tuple[PartySource, ...]
    source: str = "data spec"

    @property
    def party_names(self) -> list[str]:
        """The parties, in `PARTIES` order (the simulation's partition ids)."""
        return [p.party for p in self.parties]

    def party(self, name: str) -> PartySource:
        """The source of party `name`'s table."""
        for source in self.parties:
            if source.party == name:
                return source
        raise _error(self.source, f"names no party {name!r}; parties are {self.party_names}")

    def check(self) -> None:
        """Validate what needs no encoding: every party present once, files exist, schemas parse
        and fit the party's role, each CSV has its ID column."""
        src = self.source
        names = self.party_names
        if sorted(names) != sorted(PARTIES):
            missing = [p for p in PARTIES if p not in names]
            raise _error(src, f"a vertical run needs the parties {list(PARTIES)} exactly once "
                              f"(the lender with the label, the e-commerce platform, the bank); "
                              f"missing {missing}")
        for p in self.parties:
            where = f"{src}: parties.{p.party}"
            if not p.schema.is_file():
                raise _error(where, f"schema: no such file {p.schema}")
            if not p.data.is_file():
                raise _error(where, f"data: no such file {p.data}")
            check_party_schema(p.party, load_schema(p.schema), p.id_column, where)
            header = read_csv(p.data).header
            if p.id_column not in header:
                raise _error(where, f"id_column {p.id_column!r} is not a column of {p.data} "
                                    f"(columns: {list(header)})")

    def to_toml(self) -> str:
        """The spec as a TOML file `load_vertical_spec` reads back (absolute paths)."""
        lines = [f"mode = {toml_string(VERTICAL_MODE)}"]
        for p in self.parties:
            lines += ["", f"[parties.{p.party}]", f"data = {toml_string(p.data.resolve())}",
                      f"schema = {toml_string(p.schema.resolve())}",
                      f"id_column = {toml_string(p.id_column)}"]
        return "\n".join(lines) + "\n"


def parse_vertical_spec(raw: dict[str, Any], base: Path, where: str) -> VerticalSpec:
    """A VerticalSpec from a parsed spec TOML (`mode = "vertical"`); relative paths are relative
    to `base`. Every error names `where` and the key."""
    if raw.get("mode") != VERTICAL_MODE:
        raise _error(where, f"mode must be {VERTICAL_MODE!r}, got {raw.get('mode')!r}")
    unknown = sorted(set(raw) - set(VERTICAL_SPEC_KEYS))
    if unknown:
        raise _error(where, f"unknown key(s) {unknown} in a vertical spec; known keys: "
                            f"{list(VERTICAL_SPEC_KEYS)} (each party's data, schema and "
                            f"id_column go in its [parties.<party>] table)")
    parties = raw.get("parties")
    if not isinstance(parties, dict) or not parties:
        raise _error(where, "no parties: give one [parties.<party>] table (data, schema, "
                            f"id_column) for each of {list(PARTIES)}")
    sources = {}
    for name, table in parties.items():
        key = f"parties.{name}"
        if name not in PARTIES:
            raise _error(where, f"{key}: unknown vertical party {name!r}; the parties are "
                                f"{list(PARTIES)} (the lender holds the label)")
        if not isinstance(table, dict):
            raise _error(where, f"{key} must be a table with {list(PARTY_KEYS)}")
        extra = sorted(set(table) - set(PARTY_KEYS))
        if extra:
            raise _error(where, f"{key}: unknown key(s) {extra}; known keys: {list(PARTY_KEYS)}")
        for field in PARTY_KEYS:
            if not isinstance(table.get(field), str) or not table[field].strip():
                raise _error(where, f"{key}.{field} is missing or not a non-empty string")
        sources[name] = PartySource(name, base / table["data"], base / table["schema"],
                                    table["id_column"].strip())
    spec = VerticalSpec(parties=tuple(sources[p] for p in PARTIES if p in sources), source=where)
    spec.check()
    return spec
