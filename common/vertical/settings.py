"""Settings of a vertical run (budgets, stage optimisers) and the seeds each pipeline derives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import PartnerConfig, RunConfig, node_flag
from common.learning.training import TrainSettings
from common.privacy.accounting import check_budget


@dataclass(frozen=True)
class VerticalSettings:
    """Settings of a vertical run (privacy per party, stage-2 DP-SGD, top model)."""

    epsilon: float = 3.0
    delta: float = 1e-5
    label_epsilon: float | None = None
    bottom_epsilon: float | None = None
    embedding_clip: float = 1.0
    bottom: TrainSettings = TrainSettings(epochs=10.0, batch_size=1280, learning_rate=0.05)
    bottom_clip_norm: float = 1.0
    top: TrainSettings = TrainSettings(epochs=40.0, batch_size=128, learning_rate=0.02)
    finetune: TrainSettings = TrainSettings(epochs=40.0, batch_size=128, learning_rate=0.01)
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        check_budget(self.epsilon, self.delta, source="vertical settings")
        if not 0 < self.stage2_epsilon < self.epsilon:
            raise ValueError(
                f"bottom epsilon must be in (0, epsilon={self.epsilon}), got {self.bottom_epsilon}"
            )
        if self.embedding_clip <= 0 or self.bottom_clip_norm <= 0:
            raise ValueError("embedding clip and bottom clip norm must be > 0")

    @classmethod
    def from_config(cls, run: RunConfig, partner: PartnerConfig) -> VerticalSettings:
        """The settings of one party's stages: its own budget (node config, or `sim-*` in
        simulation) and every `vertical-*` key of the run config; non-private: the defaults."""
        common = {
            "test_fraction": run.test_fraction,
            "embedding_clip": run.vertical_embedding_clip,
            "bottom_clip_norm": run.clip_norm,
            "finetune": full_batch_finetune(run.vertical_finetune_steps),
        }
        if partner.epsilon is None or partner.delta is None:
            return cls(**common)
        return cls(
            epsilon=partner.epsilon,
            delta=partner.delta,
            bottom_epsilon=run.vertical_bottom_epsilon or None,
            **common,
        )

    @property
    def stage2_epsilon(self) -> float:
        """ε the stage-2 DP-SGD spends on its own (default: a quarter of the party's ε)."""
        return self.epsilon / 4 if self.bottom_epsilon is None else self.bottom_epsilon

    @property
    def lender_epsilon(self) -> float:
        """The lender's label budget (defaults to the per-party ε)."""
        return self.epsilon if self.label_epsilon is None else self.label_epsilon


MAX_SCORED_CUSTOMERS = 100  # default of node config `max-scored-customers`
DEFAULT_TEST_FRACTION = 0.25  # a deployed lender's default of node config `test-fraction`
MAX_TEST_FRACTION = 0.5  # default of node config `max-test-fraction`
MAX_VOUCHERS = 100  # default of node config `max-vouchers`
FEDERATION_KEYS = "federation-keys"
MAX_SCORED_KEY = "max-scored-customers"
TEST_FRACTION_KEY = "test-fraction"
MAX_TEST_FRACTION_KEY = "max-test-fraction"
MAX_VOUCHERS_KEY = "max-vouchers"
RELEASE_EVALUATION = "release-evaluation"
RELEASE_SCORES = "release-scores"


def _node_count(node: Mapping[str, Any], key: str, default: int) -> int:
    value = node.get(key, default)
    try:
        number = float(value)
        if isinstance(value, bool) or not number.is_integer() or number < 0:
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise ValueError(
            f"node config key '{key}' must be a whole number >= 0, got {value!r}"
        ) from None


def _node_fraction(node: Mapping[str, Any], key: str, default: float) -> float:
    value = node.get(key, default)
    try:
        number = float(value)
        if isinstance(value, bool) or not 0.0 < number < 1.0:
            raise ValueError
        return number
    except (TypeError, ValueError):
        raise ValueError(
            f"node config key '{key}' must be a number in (0, 1), got {value!r}"
        ) from None


@dataclass(frozen=True)
class VerticalNodeConfig:
    """A vertical party's own node config beyond `PartnerConfig`: its channel keys and the
    lender's releases to the coordinator.

    - `signing_key` (its ledger key, node config `signing-key`) signs its channel key;
      `federation_keys` (node config `federation-keys`: a directory holding `<party>.pub` of
      every party) checks the others'. In simulation both come from run config `sim-keys-dir`.
    - `max_scored_customers` (`max-scored-customers`, default 100): how many customers the lender
      scores in one run at most.
    - `release_evaluation` (`release-evaluation`) and `release_scores` (`release-scores`): whether
      the lender sends the coordinator its pooled test AUC/KS per setting, and the scores of the
      customers it scores. Off by default for a deployed lender; on in simulation, where the
      analyst running it holds every party's data anyway.
    - `test_fraction`: the lender's share of the aligned customers it makes test customers (their
      clean embeddings reach it without DP). A deployed lender's is its own node config
      `test-fraction` (default 0.25), never the run config's; a simulated one takes the run
      config's unless its node config sets one (the analyst sets both there).
    - `max_test_fraction` (`max-test-fraction`, default 0.5): a passive party refuses a split
      with a larger test share. `max_vouchers` (`max-vouchers`, default 100): the most scoring
      requests it answers in one run.
    """

    signing_key: str = ""
    federation_keys: str = ""
    max_scored_customers: int = MAX_SCORED_CUSTOMERS
    release_evaluation: bool = False
    release_scores: bool = False
    test_fraction: float = DEFAULT_TEST_FRACTION
    max_test_fraction: float = MAX_TEST_FRACTION
    max_vouchers: int = MAX_VOUCHERS

    @classmethod
    def from_node_config(
        cls, node: Mapping[str, Any], run: RunConfig, partner: PartnerConfig
    ) -> VerticalNodeConfig:
        """Parse and check the keys; errors name the key."""
        if partner.deployed:
            if not node.get(FEDERATION_KEYS):
                raise ValueError(
                    f"node config of vertical party {partner.partner!r} lacks "
                    f"'{FEDERATION_KEYS}' (the directory of every party's <party>.pub"
                    ", to check their channel keys)"
                )
            signing_key, federation_keys = partner.signing_key, str(node[FEDERATION_KEYS])
        else:
            keys = run.sim_keys_dir
            signing_key = str(Path(keys) / f"{partner.partner}.key") if keys else ""
            federation_keys = keys
        simulated = not partner.deployed
        # A deployed party's test fraction is its own (never the coordinator's run config).
        own_default = DEFAULT_TEST_FRACTION if partner.deployed else run.test_fraction
        test_fraction = _node_fraction(node, TEST_FRACTION_KEY, own_default)
        return cls(
            signing_key=signing_key,
            federation_keys=federation_keys,
            max_scored_customers=_node_count(node, MAX_SCORED_KEY, MAX_SCORED_CUSTOMERS),
            release_evaluation=node_flag(node, RELEASE_EVALUATION, simulated),
            release_scores=node_flag(node, RELEASE_SCORES, simulated),
            test_fraction=test_fraction,
            max_test_fraction=_node_fraction(node, MAX_TEST_FRACTION_KEY, MAX_TEST_FRACTION),
            max_vouchers=_node_count(node, MAX_VOUCHERS_KEY, MAX_VOUCHERS),
        )


FULL_BATCH = 2**31 - 1


def full_batch_finetune(steps: int, learning_rate: float = 0.02) -> TrainSettings:
    """Joint fine-tuning in `steps` full-batch Adam steps (what the Flower transport runs: two
    message rounds per step; 40 steps at 0.02 reach the per-batch result within ~0.001 AUC)."""
    return TrainSettings(epochs=float(steps), batch_size=FULL_BATCH, learning_rate=learning_rate)


def private_seeds(seed: int) -> list[int]:
    """Seeds of the DP pipeline: [labels, bottoms (one per passive party), -, embedding noise
    (one per passive party), -, -, top]; each party derives its own from the run seed."""
    return [int(x) for x in np.random.SeedSequence([seed, 0xDB]).generate_state(8)]


def non_private_seeds(seed: int) -> list[int]:
    """Seeds of the non-private pipeline: [top, bottoms (by position in a setting), -, finetune]."""
    return [int(x) for x in np.random.SeedSequence([seed, 0x0D]).generate_state(4)]
