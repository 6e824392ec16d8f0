"""Choose training settings fast: the federated+DP setting in one process, without Flower.

Each simulated partner runs the real `common.partner.train_round` (its own noisy count, σ
calibration, budget enforcement and DP-SGD), and the coordinator's step is FedAvg weighted by each
partner's released count, exactly as `server.strategy.ValidatingFedAvg` aggregates. It skips only
Flower's message passing, so a configuration takes seconds instead of a minute: enough to compare
settings on seeds that are then NOT used to report (the reported numbers come from
`fedcredit sweep`, which runs the real Flower simulation).

    python -m simulations.bench.tune --scenario credit_data --seeds 5 6 7 8 9 --epsilons 3 1 \
        --set batch-size=256 --set local-epochs=1
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from common.config import PartnerConfig, RunConfig
from common.data.spec import load_run_partners
from common.data.tables import PartnerData, Split
from common.learning.metrics import credit_metrics
from common.learning.model import build_model, get_weights, set_weights
from common.learning.training import predict
from common.partner import PartnerState, train_round
from common.protocol import LEARNING_RATE, LOCAL_EPOCHS, NUM_EXAMPLES


def federate(run: RunConfig, partners: list[PartnerData]) -> dict[str, Any]:
    """Run the federated+DP setting in process; the final global model's pooled test metrics."""
    model = build_model(partners[0].train.features.shape[1], run.hidden, run.seed)
    weights = get_weights(model)
    states = {p.partner: PartnerState() for p in partners}
    configs = {p.partner: PartnerConfig(partner=p.partner,
                                        epsilon=run.sim_epsilon if run.sim_dp else None,
                                        delta=run.sim_delta if run.sim_dp else None,
                                        partition_id=k)
               for k, p in enumerate(partners)}
    for server_round in range(1, run.num_server_rounds + 1):
        requested = {LOCAL_EPOCHS: run.local_epochs,
                     LEARNING_RATE: run.learning_rate_at(server_round)}
        replies = [train_round(configs[p.partner], run, states[p.partner], weights, requested,
                               server_round, p) for p in partners]
        accepted = [r for r in replies if r.weights is not None]
        if not accepted:
            break
        total = sum(r.metrics[NUM_EXAMPLES] for r in accepted)
        weights = {key: sum(r.weights[key] * (r.metrics[NUM_EXAMPLES] / total) for r in accepted)
                   for key in weights}
    set_weights(model, weights)
    scores = [predict(model, p.test.features) for p in partners]
    labels = np.concatenate([p.test.labels for p in partners])
    pooled = credit_metrics(labels, np.concatenate(scores))
    per_partner = {p.partner: credit_metrics(p.test.labels, s)["auc"]
                   for p, s in zip(partners, scores, strict=True)}
    return {"auc": pooled["auc"], "ks": pooled["ks"], "partners": per_partner}


def split_partners(partners: list[PartnerData], pieces: int, seed: int) -> list[PartnerData]:
    """Each partner's train and test rows dealt at random into `pieces` smaller partners (the
    small-partner stress test: a few hundred training rows each)."""
    if pieces <= 1:
        return partners
    rng = np.random.default_rng(seed)
    smaller = []
    for partner in partners:
        train = np.array_split(rng.permutation(len(partner.train)), pieces)
        test = np.array_split(rng.permutation(len(partner.test)), pieces)
        for k, (train_rows, test_rows) in enumerate(zip(train, test, strict=True)):
            smaller.append(PartnerData(
                partner=f"{partner.partner}-{k}",
                train=Split(partner.train.features[train_rows], partner.train.labels[train_rows]),
                test=Split(partner.test.features[test_rows], partner.test.labels[test_rows])))
    return smaller


def _parse_settings(pairs: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for pair in pairs:
        key, _, values = pair.partition("=")
        grid[key] = values.split(",")
    return grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="credit_data")
    parser.add_argument("--split", default="natural")
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[3.0])
    parser.add_argument("--split-partners", type=int, default=1, metavar="K",
                        help="deal each partner's rows into K smaller partners")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                        help="a run config key and the values to try (a grid over all --set)")
    args = parser.parse_args(argv)
    grid = _parse_settings(args.set)
    for values in itertools.product(*grid.values()) if grid else [()]:
        overrides = dict(zip(grid, values, strict=True))
        base = RunConfig.from_flower({"scenario": args.scenario, "split": args.split,
                                      **{k: v for k, v in overrides.items()}})
        for epsilon in args.epsilons:
            started = time.monotonic()
            aucs = []
            for seed in args.seeds:
                run = replace(base, seed=seed, sim_epsilon=epsilon)
                partners = split_partners(load_run_partners(run), args.split_partners, seed)
                aucs.append(federate(run, partners)["auc"])
            print(json.dumps({**overrides, "epsilon": epsilon,
                              "auc_mean": round(float(np.mean(aucs)), 4),
                              "auc_std": round(float(np.std(aucs)), 4),
                              "aucs": [round(a, 4) for a in aucs],
                              "seconds": round(time.monotonic() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
