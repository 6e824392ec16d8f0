"""A hostile coordinator's membership test against a real deployed partner, and its DP ceiling.

The coordinator knows every record of the partner's data set except whether one target record
is in it (the adversary of the DP definition), and chooses the model, the learning rate and the
optimiser. It sends a "detector" network: one tanh unit that saturates to +1 on the target and
to -1 on every other record, and an output whose logit is exactly 0 on every other record (loss
ln 2, gradient orthogonal to the target's) and far on the wrong side on the target. Each trial
starts a fresh partner (its own ledger and odometer) on the data set with (IN) or without (OUT)
the target, sends one train instruction through the partner's real ClientApp, and scores the
reply with the attacker's best statistic from what the reply holds:

- the training loss, when the reply carries one (before issue 21 every reply did: ln 2 exactly
  unless the target was sampled);
- otherwise the update itself, projected on the direction only the target's clipped gradient
  can move (the noise is N(0, σ²C²) per step there).

(ε, δ)-DP bounds every test: TPR ≤ e^ε·FPR + δ at each threshold. `membership_trials` runs
the trials, `dp_ceiling_check` compares the empirical TPR's lower confidence bound with the
ceiling at the FPR's upper bound (Clopper-Pearson, 95 % one-sided each), threshold by threshold.
Prints; asserts nothing (tests/attacks/test_hostile_coordinator.py runs a small version).

    python -m simulations.bench.membership [--trials 200] [--epsilon 1.0]
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from scipy.stats import beta

from clients.app import build_client_app
from common.config import PartnerConfig, RunConfig
from common.data.csv_table import RawTable, read_csv
from common.data.layout import announcement
from common.data.schema import encode_features, load_schema
from common.data.tables import bundled_path
from common.partner import load_data
from common.privacy.crypto import generate_signing_key, write_key_pair
from common.protocol import (
    ARRAYS,
    CONFIG,
    EPSILON_SPENT,
    INFO,
    METRICS,
    REFUSAL_REASON,
    TRAIN_LOSS,
)

TRAIN_ROWS_WANTED = 300
"""Rows of credit_data in the partner's data set (small, so that a trial takes ~0.1 s)."""
SATURATION = 40.0
"""The detector's hidden pre-activation margin: tanh of +-40 is exactly +-1 in float32."""
TARGET_LOGIT = 20.0
"""The detector's output logit on the target (others: exactly 0)."""
LOCAL_EPOCHS = 3.0
"""The run config's default: about 30 DP-SGD steps, so the target is sampled in ~96 % of IN
trials (the ε of the round is the partner's budget whatever the steps)."""
LOSS_LEARNING_RATE = 1e-6
UPDATE_LEARNING_RATE = 1.0
"""The learning rates the attacker asks for (the default bounds of `common.limits` admit both):
the smallest through the loss, the largest through the update."""


@dataclass(frozen=True)
class Trial:
    """One trial: whether the target was in the data set, the attacker's score, and the ε the
    partner accounted for the round (the count included)."""

    member: bool
    score: float
    epsilon_spent: float
    statistic: str


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


class DetectorAttack:
    """The coordinator's side: a partner's data set with and without the target, and the
    detector model built from the records it knows."""

    def __init__(self, workdir: Path, *, epsilon: float, delta: float) -> None:
        self.workdir, self.epsilon, self.delta = workdir, epsilon, delta
        csv_path, self.schema_path = bundled_path("credit_data")
        table = read_csv(csv_path)
        self.header = list(table.header)
        rows = [list(row) for row in table.rows[: TRAIN_ROWS_WANTED + 1]]
        write_key_pair(generate_signing_key(), workdir / "keys", "bank")
        self.key_path = workdir / "keys" / "bank.key"
        self.target_index, self.detector = self._choose_target(rows)
        self.member_csv = workdir / "in.csv"
        self.nonmember_csv = workdir / "out.csv"
        _write_csv(self.member_csv, self.header, rows)
        _write_csv(
            self.nonmember_csv,
            self.header,
            [r for i, r in enumerate(rows) if i != self.target_index],
        )

    def node(self, data_path: Path, trial_dir: Path, release_metrics: bool) -> dict:
        """The partner's node config for one trial."""
        return {
            "partner": "bank",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "data-path": str(data_path),
            "schema-path": str(self.schema_path),
            "ledger-path": str(trial_dir / "bank.ledger.jsonl"),
            "signing-key": str(self.key_path),
            "odometer-path": str(trial_dir / "bank.odometer.jsonl"),
            "lifetime-epsilon": 10 * self.epsilon,
            "release-metrics": str(release_metrics).lower(),
        }

    def _choose_target(self, rows: list[list[str]]) -> tuple[int, dict[str, np.ndarray]]:
        """A training record the detector can isolate: the first whose direction from the
        others' mean separates it from every other record, and the detector's weights."""
        path = self.workdir / "all.csv"
        _write_csv(path, self.header, rows)
        run = RunConfig(num_server_rounds=1, local_epochs=LOCAL_EPOCHS)
        partner = PartnerConfig.from_node_config(self.node(path, self.workdir, False), run)
        train = load_data(partner, run).train
        features = train.features.astype(np.float64)
        for index in range(len(features)):
            others = np.delete(features, index, axis=0)
            direction = features[index] - others.mean(axis=0)
            direction /= np.linalg.norm(direction)
            own, rest = features[index] @ direction, np.sort(others @ direction)[-1]
            if own - rest > 1e-3 and not np.any(np.all(others == features[index], axis=1)):
                row = self._row_of(rows, train.features[index])
                if row is not None:
                    scale = 2 * SATURATION / (own - rest)
                    sign = -1.0 if train.labels[index] == 1 else 1.0  # the wrong side
                    return row, {
                        "net.0.weight": (scale * direction)[None, :].astype(np.float32),
                        "net.0.bias": np.array([-scale * (own + rest) / 2], np.float32),
                        "net.2.weight": np.array([[sign * TARGET_LOGIT / 2]], np.float32),
                        "net.2.bias": np.array([sign * TARGET_LOGIT / 2], np.float32),
                    }
        raise RuntimeError("no record of the data set can be isolated by the detector")

    def _row_of(self, rows: list[list[str]], encoded: np.ndarray) -> int | None:
        """Which CSV row encodes to `encoded` (None if several do)."""
        matrix = encode_features(
            RawTable(path="rows", header=tuple(self.header), rows=[tuple(r) for r in rows]),
            load_schema(self.schema_path),
        )
        found = np.flatnonzero(np.all(np.isclose(matrix, encoded, atol=1e-6), axis=1))
        return int(found[0]) if len(found) == 1 else None

    @staticmethod
    def learning_rate(release_metrics: bool) -> float:
        """Through the loss, the smallest learning rate the partner accepts keeps the detector
        intact for the whole round; through the update, the largest moves it the most."""
        return LOSS_LEARNING_RATE if release_metrics else UPDATE_LEARNING_RATE

    def run_config(self, release_metrics: bool):
        """The coordinator's run config: plain SGD on the one-unit detector, one round."""
        return RunConfig(
            num_server_rounds=1,
            local_epochs=LOCAL_EPOCHS,
            optimizer="sgd",
            learning_rate=self.learning_rate(release_metrics),
            lr_schedule="constant",
            hidden_layers="1",
        )

    def trial(self, member: bool, number: int, *, release_metrics: bool = False) -> Trial:
        """One fresh partner, one detector round, the attacker's score."""
        TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1
        run, rate = self.run_config(release_metrics), self.learning_rate(release_metrics)
        trial_dir = self.workdir / f"trial-{number}"
        trial_dir.mkdir()
        data = self.member_csv if member else self.nonmember_csv
        node = self.node(data, trial_dir, release_metrics)
        config = {
            "server-round": 1,
            "local-epochs": LOCAL_EPOCHS,
            "learning-rate": rate,
            **announcement(load_schema(self.schema_path).layout()),
        }
        request = Message(
            content=RecordDict(
                {
                    ARRAYS: ArrayRecord({k: Array(v) for k, v in self.detector.items()}),
                    CONFIG: ConfigRecord(config),
                }
            ),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )
        context = Context(
            run_id=number + 1,
            node_id=1,
            node_config=node,
            state=RecordDict(),
            run_config=run.to_flower(),
        )
        reply = build_client_app(run.to_flower())(request, context).content
        shutil.rmtree(trial_dir)
        metrics, refusal = dict(reply[METRICS]), reply[INFO][REFUSAL_REASON]
        if refusal:
            raise RuntimeError(f"the partner refused: {refusal}")
        if TRAIN_LOSS in metrics:
            return Trial(
                member,
                float(metrics[TRAIN_LOSS]) - math.log(2),
                float(metrics[EPSILON_SPENT]),
                "train-loss",
            )
        update = {k: a.numpy() for k, a in reply[ARRAYS].items()}
        sign = np.sign(self.detector["net.2.bias"][0])
        moved = (
            update["net.2.weight"][0, 0]
            - self.detector["net.2.weight"][0, 0]
            + update["net.2.bias"][0]
            - self.detector["net.2.bias"][0]
        )
        # The target's gradient pushes its logit back towards its label: against `sign`.
        return Trial(member, float(-sign * moved), float(metrics[EPSILON_SPENT]), "update")


def membership_trials(
    trials: int,
    *,
    epsilon: float = 1.0,
    delta: float = 1e-5,
    release_metrics: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Trial]:
    """`trials` trials, alternating IN and OUT, each a fresh partner."""
    with tempfile.TemporaryDirectory(prefix="fedcredit-membership-") as folder:
        attack = DetectorAttack(Path(folder), epsilon=epsilon, delta=delta)
        results = []
        for number in range(trials):
            results.append(attack.trial(number % 2 == 0, number, release_metrics=release_metrics))
            if progress is not None:
                progress(number + 1)
        return results


def _clopper_pearson(successes: int, total: int, *, upper: bool, alpha: float = 0.05) -> float:
    """One-sided Clopper-Pearson bound of a binomial proportion."""

    if upper:
        return (
            1.0
            if successes == total
            else float(beta.ppf(1 - alpha, successes + 1, total - successes))
        )
    return 0.0 if successes == 0 else float(beta.ppf(alpha, successes, total - successes + 1))


@dataclass(frozen=True)
class CeilingCheck:
    """The worst threshold of a membership test against the DP ceiling."""

    epsilon: float
    delta: float
    threshold: float
    tpr: float
    fpr: float
    tpr_lower: float
    fpr_upper: float
    ceiling: float
    best_advantage: float

    @property
    def within(self) -> bool:
        """Whether the test stays within e^ε·FPR + δ (by the confidence bounds)."""
        return self.tpr_lower <= self.ceiling


def dp_ceiling_check(results: list[Trial], delta: float) -> CeilingCheck:
    """At every threshold: TPR's lower and FPR's upper 95 % bound; the threshold where the lower
    TPR bound comes closest to (or exceeds) e^ε·FPR_upper + δ, ε the largest accounted."""
    epsilon = max(r.epsilon_spent for r in results)
    members = np.array([r.score for r in results if r.member])
    others = np.array([r.score for r in results if not r.member])
    worst: CeilingCheck | None = None
    best_advantage = 0.0
    for threshold in np.unique(np.concatenate([members, others])):
        hits, false = int(np.sum(members >= threshold)), int(np.sum(others >= threshold))
        tpr, fpr = hits / len(members), false / len(others)
        best_advantage = max(best_advantage, tpr - fpr)
        tpr_lower = _clopper_pearson(hits, len(members), upper=False)
        fpr_upper = _clopper_pearson(false, len(others), upper=True)
        ceiling = math.exp(epsilon) * fpr_upper + delta
        check = CeilingCheck(
            epsilon, delta, float(threshold), tpr, fpr, tpr_lower, fpr_upper, ceiling, 0.0
        )
        if worst is None or tpr_lower - ceiling > worst.tpr_lower - worst.ceiling:
            worst = check
    assert worst is not None
    return CeilingCheck(**{**worst.__dict__, "best_advantage": best_advantage})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument(
        "--release-metrics",
        action="store_true",
        help="the partner opts in to releasing its training loss",
    )
    args = parser.parse_args()
    results = membership_trials(
        args.trials, epsilon=args.epsilon, delta=args.delta, release_metrics=args.release_metrics
    )
    check = dp_ceiling_check(results, args.delta)
    print(
        f"{args.trials} trials ({sum(r.member for r in results)} IN), statistic "
        f"{results[0].statistic}, accounted epsilon {check.epsilon:.4f}, delta {args.delta:g}"
    )
    print(f"largest TPR - FPR over thresholds: {check.best_advantage:.3f}")
    print(
        f"closest threshold: TPR {check.tpr:.3f} (95% lower {check.tpr_lower:.3f}), FPR "
        f"{check.fpr:.3f} (95% upper {check.fpr_upper:.3f}); ceiling e^eps*FPR_upper+delta "
        f"= {check.ceiling:.3f}: {'within' if check.within else 'ABOVE'} the DP ceiling"
    )


if __name__ == "__main__":
    main()
