"""Did joining pay off? A paired bootstrap of AUC differences on one partner's own test rows.

Every model scores the SAME test rows of the partner; each bootstrap resample draws those rows
with replacement once and scores every model on it (paired), so the interval of
AUC(model) - AUC(local only) reflects which rows happened to be in the test split, not training
randomness (run several seeds for that). Numpy only: a deployed partner runs it on its own
machine (`write_local_report`), and nothing it computes is released.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.learning.metrics import credit_metrics

BASELINE = "local_only"
PAID_OFF, COST, NO_CLEAR = "paid off", "cost", "no clear difference"
UNDEFINED = "undefined"
"""The verdict of a partner whose test rows give no AUC (one class only: a small partner)."""
RESAMPLES = 1000
LEVEL = 0.95
BLOCK_CELLS = 2_000_000
METHOD = ("paired bootstrap over the partner's own test rows: AUC of each model minus AUC of "
          "its local-only model, percentile interval")
PHRASES = {
    "federated_dp": "joining the federation{privacy} changed AUC",
    "federated": "the non-private federation changed AUC",
    "federated_dp_personalized": "its personalised model",
}


def verdict_word(low: float, high: float) -> str:
    """'paid off' when the interval lies above 0, 'cost' when below, else 'no clear difference'."""
    if low > 0:
        return PAID_OFF
    if high < 0:
        return COST
    return NO_CLEAR


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of (resamples, n) multiplicities: how often each test row is drawn in each
    resample; blocks of at most ~BLOCK_CELLS cells keep memory flat for large test splits."""
    rng = np.random.default_rng(seed)
    per_block = max(1, BLOCK_CELLS // max(n, 1))
    for start in range(0, resamples, per_block):
        size = min(per_block, resamples - start)
        draws = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        yield np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)


def weighted_aucs(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of `weights` (row multiplicities), ties counted half; NaN where a
    resample lacks a class. Equal to the AUC of the resampled rows, without sorting again."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]  # groups of tied scores
    bad = labels[order] > 0.5
    w = weights[:, order].astype(float)
    bad_w = np.add.reduceat(w * bad, starts, axis=1)
    good_w = np.add.reduceat(w * ~bad, starts, axis=1)
    good_below = np.cumsum(good_w, axis=1) - good_w
    pairs = bad_w.sum(axis=1) * good_w.sum(axis=1)
    won = (bad_w * (good_below + 0.5 * good_w)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, won / np.where(pairs > 0, pairs, 1.0), np.nan)


def partner_verdict(labels: np.ndarray, scores: Mapping[str, np.ndarray],
                    baseline: str = BASELINE, resamples: int = RESAMPLES, seed: int = 0,
                    level: float = LEVEL) -> dict[str, Any]:
    """AUC of every model on the partner's test rows, and for each model other than `baseline`
    its difference from the baseline: point estimate, `level` percentile interval, verdict word.
    Deterministic for a seed."""
    labels = np.asarray(labels, dtype=float)
    names = list(scores)
    if baseline not in scores:
        raise ValueError(f"no scores for the baseline {baseline!r}; got {names}")
    arrays = {name: np.asarray(scores[name], dtype=float) for name in names}
    for name, array in arrays.items():
        if array.shape != labels.shape:
            raise ValueError(f"{name}: {array.shape} scores for {labels.shape} labels")
    aucs = {name: credit_metrics(labels, array)["auc"] for name, array in arrays.items()}
    blocks = [{name: weighted_aucs(labels, array, counts) for name, array in arrays.items()}
              for counts in resample_counts(len(labels), resamples, seed)]
    boot = {name: np.concatenate([block[name] for block in blocks]) for name in names}
    tail = 100 * (1 - level) / 2
    differences: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == baseline:
            continue
        diffs = boot[name] - boot[baseline]
        diffs = diffs[np.isfinite(diffs)]
        estimate = aucs[name] - aucs[baseline]
        if len(diffs) == 0 or not np.isfinite(estimate):
            differences[name] = {"difference": float("nan"), "low": float("nan"),
                                 "high": float("nan"), "verdict": UNDEFINED}
            continue
        low, high = np.percentile(diffs, [tail, 100 - tail])
        differences[name] = {"difference": float(estimate), "low": float(low),
                             "high": float(high), "verdict": verdict_word(low, high)}
    return {"test_rows": len(labels), "baseline": baseline, "auc": aucs,
            "differences": differences}


def verdict_report(partners: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]],
                   baseline: str = BASELINE, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> dict[str, Any]:
    """`partner_verdict` for each partner ((labels, scores per model) by name), seeded apart."""
    return {"method": METHOD, "baseline": baseline, "resamples": resamples, "level": level,
            "seed": seed,
            "partners": {name: partner_verdict(labels, scores, baseline, resamples,
                                               seed * 1000 + k, level)
                         for k, (name, (labels, scores)) in enumerate(partners.items())}}


def _signed(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.3f}"


def verdict_sentence(partner: str, verdict: Mapping[str, Any], epsilon: float | None = None,
                     level: float = LEVEL) -> str:
    """One plain-English sentence: what joining (and personalising) did to this partner's AUC."""
    privacy = "" if epsilon is None else f" under ε={epsilon:g}"
    clauses = []
    for k, (name, d) in enumerate(verdict["differences"].items()):
        phrase = PHRASES.get(name, f"{name} changed AUC").format(privacy=privacy)
        if k == 0:
            phrase += f" on its own {verdict['test_rows']} test rows"
        if "changed AUC" in phrase:
            phrase += " by"
        interval = (f"{_signed(d['difference'])} ({level:.0%} interval {_signed(d['low'])} to "
                    f"{_signed(d['high'])})")
        clauses.append(f"{phrase} {interval}: {d['verdict']}")
    base = verdict["auc"].get(verdict["baseline"], float("nan"))
    return (f"{partner}: " + "; ".join(clauses)
            + f" (local-only AUC {base:.3f}).")


def write_local_report(folder: str | Path, partner: str, verdict: Mapping[str, Any],
                       epsilon: float | None, run_id: str) -> tuple[Path, Path]:
    """A deployed partner's own verdict, `verdict-<run_id>.json` and `.md` in `folder` on its
    machine: never sent anywhere, so it spends no privacy."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"verdict-{''.join(c if c.isalnum() or c in '-_' else '_' for c in run_id)}"
    body = {"partner": partner, "run_id": run_id, "epsilon_budget": epsilon, "method": METHOD,
            "resamples": RESAMPLES, "level": LEVEL, **verdict}
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(body, indent=2, default=float) + "\n")
    md_path.write_text("\n".join([
        f"# Did joining pay off? {partner}, run {run_id}", "",
        verdict_sentence(partner, verdict, epsilon), "",
        f"The global model of the federation's last round and a non-private model trained on "
        f"this partner's own training rows only, both scored on its own test rows; interval: "
        f"{RESAMPLES}-resample {METHOD}. This report stays on this machine: nothing in it was "
        f"sent to the coordinator, and it spends no privacy.", ""]))
    return json_path, md_path
