"""Benchmark: how a DP federation's cost grows with the number of partners.

Each point runs the federation alone (Flower's Simulation Engine, DP-SGD with ledgers and
receipts, as `fedcredit simulate` runs its DP setting) in a fresh interpreter, for lending_club's
9,857 rows dealt iid to N partners: the data and the DP-SGD work per round stay the same, so what
grows with N is coordination (messages, partner start-up, per-partner accounting and ledgers).
Figures are measured and printed; nothing is asserted (speed goals are not tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import RunConfig
from simulations.bench.horizontal import full_simulation

PARTNER_COUNTS = (3, 10, 30, 100, 200)


def partner_scaling_run(partners: int, *, rounds: int = 10, epsilon: float = 3.0, seed: int = 0,
                        scenario: str = "lending_club", fraction_train: float = 1.0) -> RunConfig:
    """The run config of one point: `scenario`'s rows dealt iid to `partners` partners."""
    return RunConfig(scenario=scenario, split="iid", num_partners=partners,
                     num_server_rounds=rounds, sim_epsilon=epsilon, seed=seed,
                     fraction_train=fraction_train, min_partners=2)


def measure_partner_scaling(counts: tuple[int, ...] = PARTNER_COUNTS, *, rounds: int = 10,
                            epsilon: float = 3.0, seed: int = 0, fraction_train: float = 1.0,
                            step: Callable[[str], None] = print) -> dict[str, Any]:
    """Wall time, seconds per round and peak memory of the DP federation for each partner
    count, with each partner's ε spent checked against its budget."""
    points = []
    for count in counts:
        step(f"{count} partners x {rounds} rounds (DP, fraction-train {fraction_train:g}) ...")
        run = partner_scaling_run(count, rounds=rounds, epsilon=epsilon, seed=seed,
                                  fraction_train=fraction_train)
        figures = full_simulation(run)
        privacy = figures.pop("privacy")
        spent = [p["epsilon_spent"] / p["epsilon_budget"] for p in privacy.values()]
        point = {"partners": count, **figures,
                 "partners_trained": len(privacy),
                 "partner_rounds_trained": sum(p["rounds_trained"] for p in privacy.values()),
                 "max_epsilon_share_of_budget": max(spent) if spent else 0.0}
        step(f"  {point['wall_seconds']:.1f} s wall, {point['steady_round_seconds']:.2f} s per "
             f"round, peak {point['peak_rss_mib']:.0f} MiB, max eps/budget "
             f"{point['max_epsilon_share_of_budget']:.5f}, run {point['status']}")
        points.append(point)
    return {"rounds": rounds, "epsilon": epsilon, "seed": seed,
            "scenario": partner_scaling_run(2).scenario, "split": "iid",
            "fraction_train": fraction_train, "points": points}


def plot_partner_scaling(figures: dict[str, Any], path: Path) -> None:
    """Seconds per round, round 1 (start-up and calibration) and peak memory vs partners."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = figures["points"]
    counts = [p["partners"] for p in points]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
    time_ax.plot(counts, [p["steady_round_seconds"] for p in points], "o-",
                 label="seconds per round (median, rounds 2+)")
    time_ax.plot(counts, [p["startup_to_round1_seconds"] for p in points], "s--",
                 label="start-up to end of round 1")
    time_ax.plot(counts, [p["wall_seconds"] for p in points], "^:",
                 label=f"whole {figures['rounds']}-round run")
    memory_ax.plot(counts, [p["peak_rss_mib"] / 1024 for p in points], "o-")
    for ax in (time_ax, memory_ax):
        ax.set_xscale("log")
        ax.set_xlabel("partners (lending_club rows dealt iid)")
        ax.grid(alpha=0.3, which="both")
    time_ax.set_yscale("log")
    time_ax.set_ylabel("seconds")
    time_ax.legend(fontsize=8)
    memory_ax.set_ylabel("peak RSS of the process tree (GiB)")
    memory_ax.set_ylim(0, 1.2 * max(p["peak_rss_mib"] for p in points) / 1024)
    fig.suptitle(f"DP federation cost vs partners (eps={figures['epsilon']:g}, 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
