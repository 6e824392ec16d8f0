"""A SYNTHETIC borrower population in credit_data's schema, for scale tests only.

Nothing here is real or fitted: every row is drawn from hand-chosen distributions
(`SyntheticPopulation`), seeded, and independent of any bundled or partner data. Its columns and
categories are credit_data.csv's, so `credit_data.toml` encodes it unchanged. The label is a
fixed, hand-written logistic model of a few columns, so a model has signal to learn (a logistic
regression reaches an AUC of about 0.77) while the bad rate stays in the stated public range.

Rows are drawn in fixed blocks of `BLOCK_ROWS`, each seeded by (seed, partner, block), so the
data depends on (seed, partner, rows) alone, never on how it is chunked, and 10^6+ rows stream
through `generate_chunks` without ever being held as strings at once. `write_partner_arrays`
encodes them chunk by chunk into .npy files and returns memory-mapped, read-only splits.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from common.data.csv_table import CHUNK_ROWS, RawTable
from common.data.schema import Schema, encode_table, load_schema
from common.data.tables import PartnerData, Split, bundled_path
from common.errors import DataValidationError

BLOCK_ROWS = 8192
"""Rows drawn per seeded block: a constant, so the data never depends on the chunk size."""
GENERATOR_VERSION = 1
"""Bumped whenever the generator's output changes (cached arrays are then regenerated)."""
HEADER = ("Status", "Seniority", "Home", "Time", "Age", "Marital", "Records", "Job", "Expenses",
          "Income", "Assets", "Debt", "Amount", "Price")
MISSING = "NA"
SIDECAR = "synthetic.json"
ARRAYS = ("train_features", "train_labels", "test_features", "test_labels")
_SPLIT_STREAM = 1  # SeedSequence tag of the train/test assignment (blocks use 0)


@dataclass(frozen=True)
class SyntheticPopulation:
    """Parameters of the SYNTHETIC population (scale tests only; data-independent: chosen by
    hand, never estimated from bundled or partner data). Units follow credit_data.toml's columns;
    every draw is clipped into that schema's documented clip range."""

    # Target bad (overdue) rate: the public figure the "Scale" issue quotes for young borrowers
    # in the seed market, 5-8% overdue; the intercept below aims at its middle (about 6.5%).
    bad_rate_range: tuple[float, float] = (0.05, 0.08)
    # Age: skewed young (the segment is young borrowers): 18 + Gamma(2, 6 years), mean
    # 30, clipped to the schema's [18, 80]. Hand-chosen.
    age_gamma_shape: float = 2.0
    age_gamma_scale: float = 6.0
    # Years with the current employer: exponential, mean 4 years, at most age - 18 (schema clip
    # [0, 48]). Hand-chosen.
    seniority_mean_years: float = 4.0
    # Category shares, in the order of _HOMES, _MARITAL and _JOBS below (credit_data.toml's
    # categories, then "NA" = missing). Hand-chosen for a young population: many renters and
    # borrowers living with their parents, mostly single.
    home_shares: tuple[float, ...] = (0.40, 0.22, 0.05, 0.01, 0.25, 0.06, 0.01)
    marital_shares: tuple[float, ...] = (0.58, 0.35, 0.005, 0.03, 0.03, 0.005)
    job_shares: tuple[float, ...] = (0.58, 0.20, 0.14, 0.07, 0.01)
    records_share: float = 0.10
    # Loan term in months: the schema's range [6, 72], common consumer-loan terms. Hand-chosen.
    terms_months: tuple[int, ...] = (12, 18, 24, 30, 36, 42, 48, 54, 60, 72)
    term_shares: tuple[float, ...] = (0.06, 0.04, 0.12, 0.05, 0.20, 0.06, 0.17, 0.04, 0.22, 0.04)
    # Money columns: log-normal (median, log-sd), clipped to the schema's clip ranges (Income
    # [0, 1000], Assets [0, 300000], Debt [0, 30000], Amount [0, 5000], Price [0, 12000]).
    income_median: float = 110.0
    income_log_sd: float = 0.45
    income_missing_share: float = 0.03
    assets_zero_share: float = 0.55
    assets_median: float = 3000.0
    assets_log_sd: float = 1.2
    debt_zero_share: float = 0.80
    debt_median: float = 1000.0
    debt_log_sd: float = 0.9
    price_median: float = 1300.0  # Price and Amount are at least 100 (hand-chosen floor)
    price_log_sd: float = 0.45
    loan_to_value_beta: tuple[float, float] = (6.0, 2.5)  # Amount = Price x Beta: mean 0.71
    expenses_base: float = 35.0  # monthly expenses (schema clip [0, 200]); +15 if married
    # The label's logistic model (coefficients chosen by hand, not fitted): log-odds of "bad".
    # The intercept was set against this generator's own output (bad rate about 6.4%), never
    # against any data.
    intercept: float = -3.55
    coef_records: float = 1.5  # prior arrears records
    coef_job_partime: float = 1.1
    coef_job_freelance: float = 0.35
    coef_job_others: float = 0.7
    coef_seniority_per_year: float = -0.08
    coef_log_income: float = -1.5  # per unit of log(income / median)
    coef_loan_to_value: float = 3.0  # per unit of (amount / price - 0.7)
    coef_renter: float = 0.35  # home = rent or other
    coef_age_per_decade: float = -0.25  # per 10 years above 30


POPULATION = SyntheticPopulation()
_HOMES = ("rent", "owner", "priv", "ignore", "parents", "other", MISSING)
_MARITAL = ("single", "married", "widow", "separated", "divorced", MISSING)
_JOBS = ("fixed", "freelance", "partime", "others", MISSING)


def credit_data_schema() -> Schema:
    """credit_data.toml, the schema every synthetic row follows."""
    return load_schema(bundled_path("credit_data")[1])


def _draw_block(rng: np.random.Generator, p: SyntheticPopulation) -> list[list[str]]:
    """One block of `BLOCK_ROWS` rows as string columns, in `HEADER` order."""
    n = BLOCK_ROWS
    age = np.minimum(18.0 + rng.gamma(p.age_gamma_shape, p.age_gamma_scale, n), 80.0).astype(int)
    seniority = np.minimum(rng.exponential(p.seniority_mean_years, n), age - 18).astype(int)
    home = rng.choice(len(_HOMES), n, p=p.home_shares)
    marital = rng.choice(len(_MARITAL), n, p=p.marital_shares)
    job = rng.choice(len(_JOBS), n, p=p.job_shares)
    records = rng.random(n) < p.records_share
    term = np.asarray(p.terms_months)[rng.choice(len(p.terms_months), n, p=p.term_shares)]
    married = marital == _MARITAL.index("married")
    expenses = np.clip(p.expenses_base + 15.0 * married + rng.normal(0, 12, n), 0, 200)
    log_income = rng.normal(0.0, p.income_log_sd, n)
    income = np.clip(p.income_median * np.exp(log_income), 0, 1000).round(1)
    assets = np.where(rng.random(n) < p.assets_zero_share, 0.0,
                      p.assets_median * np.exp(rng.normal(0, p.assets_log_sd, n)))
    debt = np.where(rng.random(n) < p.debt_zero_share, 0.0,
                    p.debt_median * np.exp(rng.normal(0, p.debt_log_sd, n)))
    price = np.clip(p.price_median * np.exp(rng.normal(0, p.price_log_sd, n)), 100, 12000).round()
    amount = np.clip(price * rng.beta(*p.loan_to_value_beta, n), 100, 5000).round()
    log_odds = (p.intercept + p.coef_records * records
                + np.select([job == _JOBS.index(j) for j in ("partime", "freelance", "others")],
                            [p.coef_job_partime, p.coef_job_freelance, p.coef_job_others], 0.0)
                + p.coef_seniority_per_year * seniority + p.coef_log_income * log_income
                + p.coef_loan_to_value * (amount / price - 0.7)
                + p.coef_renter * np.isin(home, [_HOMES.index("rent"), _HOMES.index("other")])
                + p.coef_age_per_decade * (age - 30) / 10.0)
    bad = rng.random(n) < 1.0 / (1.0 + np.exp(-log_odds))
    income_missing = rng.random(n) < p.income_missing_share
    columns = [np.where(bad, "bad", "good"), seniority, np.asarray(_HOMES)[home], term, age,
               np.asarray(_MARITAL)[marital], np.where(records, "yes", "no"),
               np.asarray(_JOBS)[job], expenses.astype(int),
               np.where(income_missing, MISSING, income.astype(str)),
               np.clip(assets, 0, 300000).round(1), np.clip(debt, 0, 30000).round(1),
               amount.astype(int), price.astype(int)]
    return [column.astype(str).tolist() for column in columns]


def _blocks(rows: int, seed: int, partner: int, p: SyntheticPopulation) -> Iterator[list[tuple]]:
    """Rows (tuples of strings) block by block; block k is seeded by (seed, partner, 0, k) and
    always draws `BLOCK_ROWS` rows, the last one cut short, so any prefix is stable."""
    for block in range(math.ceil(rows / BLOCK_ROWS)):
        rng = np.random.default_rng([seed, partner, 0, block])
        keep = min(BLOCK_ROWS, rows - block * BLOCK_ROWS)
        yield list(zip(*_draw_block(rng, p), strict=True))[:keep]


def generate_chunks(rows: int, *, seed: int, partner: int = 0, chunk_rows: int = CHUNK_ROWS,
                    population: SyntheticPopulation = POPULATION) -> Iterator[RawTable]:
    """`rows` SYNTHETIC rows in credit_data's columns, as RawTables of at most `chunk_rows` rows
    (line numbers count from the first row of all chunks). Deterministic in (seed, partner, rows);
    the chunk size changes only where the rows are cut."""
    if rows < 1 or chunk_rows < 1:
        raise ValueError(f"rows and chunk_rows must be >= 1, got {rows} and {chunk_rows}")
    name = f"synthetic(seed={seed}, partner={partner})"
    pending: list[tuple] = []
    start = 0
    for block in _blocks(rows, seed, partner, population):
        pending.extend(block)
        while len(pending) >= chunk_rows or (pending and start + len(pending) == rows):
            chunk, pending = pending[:chunk_rows], pending[chunk_rows:]
            yield RawTable(path=name, header=HEADER, rows=chunk,
                           lines=list(range(start + 2, start + 2 + len(chunk))))
            start += len(chunk)


def held_out_rows(rows: int, *, seed: int, partner: int, test_fraction: float) -> np.ndarray:
    """Which rows are test rows: a splitmix64 hash of each row's index under a key from
    (seed, partner), read as a uniform number in [0, 1), below `test_fraction`."""
    key = np.random.SeedSequence([seed, partner, _SPLIT_STREAM]).generate_state(1, np.uint64)
    mixed = np.arange(rows, dtype=np.uint64) + key[0]
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        mixed = (mixed ^ (mixed >> np.uint64(shift))) * np.uint64(multiplier)
    mixed ^= mixed >> np.uint64(31)
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53 < test_fraction


def _description(rows: int, seed: int, partner: int, test_fraction: float,
                 schema: Schema, population: SyntheticPopulation) -> dict:
    """What the cached arrays were made from, as their JSON sidecar reads back."""
    return json.loads(json.dumps({
        "synthetic": True, "generator_version": GENERATOR_VERSION, "rows": rows, "seed": seed,
        "partner": partner, "test_fraction": test_fraction,
        "schema_layout_sha256": schema.layout_sha256, "population": asdict(population)}))


def _load_arrays(directory: Path, partner: int) -> PartnerData:
    """The cached arrays in `directory` as a partner's read-only, memory-mapped splits."""
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    return PartnerData(partner=f"synthetic-{partner}",
                       train=Split(arrays["train_features"], arrays["train_labels"]),
                       test=Split(arrays["test_features"], arrays["test_labels"]))


def write_partner_arrays(directory: Path, rows: int, *, seed: int, partner: int = 0,
                         test_fraction: float = 0.25, chunk_rows: int = CHUNK_ROWS,
                         population: SyntheticPopulation = POPULATION) -> PartnerData:
    """A SYNTHETIC partner of `rows` rows, encoded with credit_data.toml chunk by chunk into
    .npy files under `directory`; returns its splits as read-only memory maps. Files already
    there for the same parameters (the `synthetic.json` sidecar) are reused as they are."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    schema = credit_data_schema()
    description = _description(rows, seed, partner, test_fraction, schema, population)
    directory = Path(directory)
    sidecar = directory / SIDECAR
    if (sidecar.exists() and json.loads(sidecar.read_text()) == description
            and all((directory / f"{name}.npy").exists() for name in ARRAYS)):
        return _load_arrays(directory, partner)
    directory.mkdir(parents=True, exist_ok=True)
    sidecar.unlink(missing_ok=True)  # written last: present only over complete arrays
    in_test = held_out_rows(rows, seed=seed, partner=partner, test_fraction=test_fraction)
    sizes = {"train": int((~in_test).sum()), "test": int(in_test.sum())}
    if min(sizes.values()) < 1:
        raise DataValidationError(f"synthetic partner {partner}: {rows} rows leave a split "
                                  f"empty at test fraction {test_fraction}; ask for more rows")
    # Written under temporary names, then renamed: maps of earlier files stay valid.
    outputs = {}
    for split, size in sizes.items():
        for name, shape in ((f"{split}_features", (size, schema.num_features)),
                            (f"{split}_labels", (size,))):
            outputs[name] = open_memmap(directory / f"{name}.npy.partial", mode="w+",
                                        dtype=np.float32, shape=shape)
    filled, start = {"train": 0, "test": 0}, 0
    for chunk in generate_chunks(rows, seed=seed, partner=partner, chunk_rows=chunk_rows,
                                 population=population):
        features, labels = encode_table(chunk, schema)
        chunk_test = in_test[start:start + len(labels)]
        for split, rows_here in (("train", ~chunk_test), ("test", chunk_test)):
            at, count = filled[split], int(rows_here.sum())
            outputs[f"{split}_features"][at:at + count] = features[rows_here]
            outputs[f"{split}_labels"][at:at + count] = labels[rows_here]
            filled[split] += count
        start += len(labels)
    for split in sizes:
        counts = np.bincount(outputs[f"{split}_labels"].astype(int), minlength=2)
        if counts.min() < 1:
            raise DataValidationError(f"synthetic partner {partner}: the {split} split has "
                                      f"{counts[0]} good and {counts[1]} bad rows; ask for "
                                      f"more rows")
    for name in ARRAYS:
        outputs.pop(name).flush()
        os.replace(directory / f"{name}.npy.partial", directory / f"{name}.npy")
    sidecar.write_text(json.dumps(description, indent=1))
    return _load_arrays(directory, partner)


def export_csv(path: Path, rows: int, *, seed: int, partner: int = 0,
               chunk_rows: int = CHUNK_ROWS) -> Path:
    """Write `rows` SYNTHETIC rows to a credit_data-style CSV, streaming chunk by chunk."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for chunk in generate_chunks(rows, seed=seed, partner=partner, chunk_rows=chunk_rows):
            writer.writerows(chunk.rows)
    return path
