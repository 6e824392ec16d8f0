"""Three vertical parties' OWN tables, written into a test's folder: tables the project does not
ship, each with its own customer-ID column name, its own schema, its own subset of the customers
and its own row order (so the PSI alignment matters), generated from a seed.

Every customer k has the ID `customer_ref(k)` ("A-" + 10 hex digits) in all three tables and a
column `*_ref` holding k itself in each (a feature that is a known function of the ID): rows the
PSI lines up must carry the same k at every party. The label (lender only) depends on one latent
score per party, so each party's columns carry signal.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_CUSTOMERS = 240
ID_COLUMNS = {"lender": "loan_ref", "ecommerce": "shopper", "bank": "acct_no"}
REF_COLUMNS = {"lender": "lender_ref", "ecommerce": "shop_ref", "bank": "bank_ref"}
KNOWN_SHARE = {"lender": 0.95, "ecommerce": 0.85, "bank": 0.8}

LENDER_SCHEMA = """\
[dataset]
name = "own-lender"
label = "defaulted"
label_values = ["no", "yes"]
bad_value = "yes"

[[columns]]
name = "lender_ref"
type = "numeric"
clip = [0, 1000]

[[columns]]
name = "amount"
type = "numeric"
clip = [-4, 4]

[[columns]]
name = "term"
type = "categorical"
categories = ["short", "long"]
"""

ECOMMERCE_SCHEMA = """\
[dataset]
name = "own-shop"

[[columns]]
name = "shop_ref"
type = "numeric"
clip = [0, 1000]

[[columns]]
name = "basket"
type = "numeric"
clip = [-4, 4]
"""

BANK_SCHEMA = """\
[dataset]
name = "own-bank"
missing_values = ["", "NA"]

[[columns]]
name = "bank_ref"
type = "numeric"
clip = [0, 1000]

[[columns]]
name = "income"
type = "numeric"
clip = [-4, 4]
fill = 0
missing_indicator = true

[[columns]]
name = "segment"
type = "categorical"
categories = ["retail", "premium"]
"""

SCHEMAS = {"lender": LENDER_SCHEMA, "ecommerce": ECOMMERCE_SCHEMA, "bank": BANK_SCHEMA}


def customer_ref(k: int) -> str:
    """Customer k's ID, the same at every party: 'A-9f3c...' (10 hex digits)."""
    return "A-" + hashlib.sha256(f"customer {k}".encode()).hexdigest()[:10]


@dataclass(frozen=True)
class OwnTables:
    """Where the tables were written and which customers each party knows (by k)."""

    folder: Path
    spec: Path
    known: dict[str, list[int]]
    labels: dict[int, float]

    def csv(self, party: str) -> Path:
        return self.folder / f"{party}.csv"

    def schema(self, party: str) -> Path:
        return self.folder / f"{party}.toml"

    @property
    def common(self) -> set[int]:
        """Customers every party knows: what the alignment must find."""
        return set.intersection(*(set(k) for k in self.known.values()))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def spec_text(folder: Path | None = None) -> str:
    """The vertical spec of the three tables (paths relative to the spec, or under `folder`)."""
    lines = ['mode = "vertical"']
    for party, column in ID_COLUMNS.items():
        where = f"{folder}/" if folder else ""
        lines += ["", f"[parties.{party}]", f'data = "{where}{party}.csv"',
                  f'schema = "{where}{party}.toml"', f'id_column = "{column}"']
    return "\n".join(lines) + "\n"


def write_own_tables(folder: Path, seed: int = 7) -> OwnTables:
    """Write `<party>.csv`, `<party>.toml` and `spec.toml` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(NUM_CUSTOMERS, 3))
    risk = 1.4 * latent.sum(axis=1) - 0.8
    labels = (rng.random(NUM_CUSTOMERS) < 1 / (1 + np.exp(-risk))).astype(float)
    known = {}
    for party, share in KNOWN_SHARE.items():
        chosen = rng.choice(NUM_CUSTOMERS, size=round(share * NUM_CUSTOMERS), replace=False)
        known[party] = [int(k) for k in rng.permutation(chosen)]  # the party's own row order
    rows: dict[str, list[list[str]]] = {
        "lender": [[customer_ref(k), str(k), f"{latent[k, 0]:.4f}",
                    "long" if latent[k, 0] > 0 else "short", "yes" if labels[k] else "no"]
                   for k in known["lender"]],
        "ecommerce": [[str(k), customer_ref(k), f"{latent[k, 1]:.4f}"]
                      for k in known["ecommerce"]],
        "bank": [[customer_ref(k), f"{latent[k, 2]:.4f}" if k % 17 else "NA", str(k),
                  "premium" if latent[k, 2] > 0.5 else "retail"] for k in known["bank"]],
    }
    headers = {"lender": ["loan_ref", "lender_ref", "amount", "term", "defaulted"],
               "ecommerce": ["shop_ref", "shopper", "basket"],  # the ID column need not lead
               "bank": ["acct_no", "income", "bank_ref", "segment"]}
    for party in ID_COLUMNS:
        _write_csv(folder / f"{party}.csv", headers[party], rows[party])
        (folder / f"{party}.toml").write_text(SCHEMAS[party], encoding="utf-8")
    spec = folder / "spec.toml"
    spec.write_text(spec_text(), encoding="utf-8")
    return OwnTables(folder, spec, known, {k: float(labels[k]) for k in range(NUM_CUSTOMERS)})
