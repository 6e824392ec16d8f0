"""Benchmark: does DP stay affordable as partners grow? Pooled AUC of federated+DP at each ε
against the non-private federation, for partners of 10^3 to 10^6 SYNTHETIC rows.

The partners are `common.data.synthetic` populations (synthetic, data-independent; one seeded
stream per partner), memory-mapped from disk. Each setting runs the real partner code in process
(`simulations.bench.tune.federate`: noisy count, σ calibration, budget enforcement, DP-SGD,
FedAvg weighted by the released counts) without Flower's message passing. Every setting of a
size uses the same expected batch, the plan rule's 0.1 of the smallest partner's training rows
within [8, 4096], and the same rounds and local epochs, so only the noise differs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.data.synthetic import write_partner_arrays
from common.privacy.budget import plan_sample_rate
from simulations.bench.tune import federate

SIZES = (1_000, 10_000, 100_000, 1_000_000)
EPSILONS = (1.0, 3.0)


def expected_batch(train_rows: int) -> int:
    """The plan rule's expected batch for `train_rows` rows (their true count: a public setting
    of this benchmark, not a partner's release)."""
    return max(1, round(plan_sample_rate(train_rows) * train_rows))


def measure_utility_vs_size(sizes: tuple[int, ...] = SIZES, *, workdir: Path,
                            epsilons: tuple[float, ...] = EPSILONS, partners: int = 3,
                            rounds: int = 10, local_epochs: float = 1.0,
                            seeds: tuple[int, ...] = (0, 1, 2),
                            step: Callable[[str], None] = print) -> dict[str, Any]:
    """Pooled test AUC/KS per size, mean and standard deviation over `seeds` (each seed draws
    other synthetic rows and trains anew): federated+DP at each ε and the non-private one."""
    runs = [_one_seed(sizes, workdir=workdir, epsilons=epsilons, partners=partners,
                      rounds=rounds, local_epochs=local_epochs, seed=seed, step=step)
            for seed in seeds]
    points = []
    for k, size in enumerate(sizes):
        settings = {}
        for label in runs[0][k]["settings"]:
            aucs = [run[k]["settings"][label]["auc"] for run in runs]
            settings[label] = {"auc": statistics.mean(aucs),
                               "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                               "auc_per_seed": aucs,
                               "seconds": statistics.mean(run[k]["settings"][label]["seconds"]
                                                          for run in runs)}
        points.append({"rows_per_partner": size, "batch_size": runs[0][k]["batch_size"],
                       "settings": settings})
    return {"partners": partners, "rounds": rounds, "local_epochs": local_epochs,
            "seeds": list(seeds), "epsilons": list(epsilons),
            "data": "synthetic (common.data.synthetic)", "points": points}


def _one_seed(sizes: tuple[int, ...], *, workdir: Path, epsilons: tuple[float, ...],
              partners: int, rounds: int, local_epochs: float, seed: int,
              step: Callable[[str], None]) -> list[dict[str, Any]]:
    """`measure_utility_vs_size`'s points for one seed."""
    points = []
    for size in sizes:
        started = time.perf_counter()
        data = [write_partner_arrays(workdir / f"rows{size}-seed{seed}-partner{k}", size,
                                     seed=seed, partner=k) for k in range(partners)]
        batch = expected_batch(min(len(p.train) for p in data))
        base = RunConfig(num_server_rounds=rounds, local_epochs=local_epochs, batch_size=batch,
                         seed=seed, min_partners=1)
        point: dict[str, Any] = {"rows_per_partner": size, "batch_size": batch,
                                 "data_seconds": time.perf_counter() - started, "settings": {}}
        for label, run in [(f"dp_eps{eps:g}", replace(base, sim_epsilon=eps)) for eps in epsilons
                           ] + [("non_private", replace(base, sim_dp=False))]:
            t0 = time.perf_counter()
            result = federate(run, data)
            point["settings"][label] = {"auc": result["auc"], "ks": result["ks"],
                                        "seconds": time.perf_counter() - t0}
            step(f"seed {seed}  {size:>9,} rows/partner  {label:<12} AUC {result['auc']:.4f}  "
                 f"({point['settings'][label]['seconds']:.0f} s)")
        points.append(point)
    return points


def plot_utility_vs_size(figures: dict[str, Any], path: Path) -> Path:
    """Pooled AUC vs rows per partner (log x): one line per ε and the non-private one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [p["rows_per_partner"] for p in figures["points"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(figures["points"][0]["settings"])
    for marker, label in zip("os^Dv", labels, strict=False):
        ax.errorbar(sizes, [p["settings"][label]["auc"] for p in figures["points"]],
                    yerr=[p["settings"][label]["auc_std"] for p in figures["points"]],
                    capsize=3, marker=marker, label=label.replace("dp_eps", "federated + DP, eps=")
                .replace("non_private", "federated, non-private"))
    ax.set_xscale("log")
    ax.set_xlabel("rows per partner (synthetic)")
    ax.set_ylabel("pooled test AUC")
    ax.set_title(f"{figures['partners']} synthetic partners, {figures['rounds']} rounds x "
                 f"{figures['local_epochs']:g} local epoch, mean +- std over "
                 f"{len(figures['seeds'])} seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
