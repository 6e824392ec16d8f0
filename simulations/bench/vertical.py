"""Benchmark of vertical credit_data at ε per party: AUC/KS per setting, DP and non-private.

Usage: `python -m simulations.bench.vertical [--seeds 0 1 2 3 4] [--epsilon 3]`. Prints one row
per setting with the mean (and min..max) over seeds, the centralized logistic regression on the
same aligned rows, and each party's ε recomputed from its releases.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np
import torch

from common.data.scenarios import PARTIES
from common.vertical.in_memory import VerticalResult, run_vertical_in_memory
from common.vertical.parties import SETTINGS, setting_name
from common.vertical.settings import VerticalSettings

log = logging.getLogger(__name__)


def run_seeds(seeds: Sequence[int], settings: VerticalSettings) -> list[VerticalResult]:
    """One vertical run per seed."""
    return [run_vertical_in_memory(seed, settings) for seed in seeds]


def format_table(results: Sequence[VerticalResult], settings: VerticalSettings) -> str:
    """The table of mean AUC/KS (min..max) over seeds per setting and mode."""
    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.4f} ({min(values):.3f}..{max(values):.3f})"

    seeds = [r.seed for r in results]
    lines = [f"credit_data_vertical, epsilon={settings.epsilon:g} per party "
             f"(label epsilon {settings.lender_epsilon:g}), delta={settings.delta:g}, "
             f"seeds {seeds}",
             f"{'setting':<26}{'mode':<13}{'AUC mean (min..max)':<28}{'KS mean (min..max)'}"]
    for parties in SETTINGS:
        name = setting_name(parties)
        for mode in ("dp", "non_private"):
            aucs = [r.metrics[mode][name]["auc"] for r in results]
            kss = [r.metrics[mode][name]["ks"] for r in results]
            lines.append(f"{name:<26}{mode:<13}{cell(aucs):<28}{cell(kss)}")
    lines.append(f"{'centralized LR (all)':<26}{'non_private':<13}"
                 f"{cell([r.centralized['auc'] for r in results]):<28}"
                 f"{cell([r.centralized['ks'] for r in results])}")
    gaps = [r.metrics["non_private"][setting_name(SETTINGS[-1])]["auc"] - r.centralized["auc"]
            for r in results]
    lines.append(f"non-private all-three minus centralized LR, AUC: mean {np.mean(gaps):+.4f}, "
                 f"per seed {[round(g, 4) for g in gaps]}")
    eps = {p: max(r.epsilon[p] for r in results) for p in PARTIES}
    lines.append("epsilon spent (max over seeds): "
                 + ", ".join(f"{p} {e:.4f}" for p, e in eps.items()))
    mech = results[0].mechanisms
    lines.append("mechanisms: " + ", ".join(f"{k}={v:.4g}" for k, v in mech.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--bottom-epsilon", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    settings = VerticalSettings(epsilon=args.epsilon, delta=args.delta,
                                bottom_epsilon=args.bottom_epsilon)
    print(format_table(run_seeds(args.seeds, settings), settings))  # noqa: T201


if __name__ == "__main__":
    main()
