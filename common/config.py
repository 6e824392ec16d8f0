"""Run configuration: kebab-case Flower config keys parsed once into a validated frozen dataclass.

Run config comes from the coordinator (`[tool.flwr.app.config]` plus `--run-config`
overrides). It never carries a deployed partner's privacy budget: that lives in the partner's
node config (see `PartnerConfig`). The `sim-*` keys are read only by simulated partners.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.scenarios import (
    PARTIES,
    SCENARIOS,
    SPLITS,
    VERTICAL_SCENARIO,
    scenario_partners,
)
from common.data.spec import load_spec
from common.limits import PartnerLimits
from common.outputs import ledger_file
from common.privacy.accounting import check_budget
from common.privacy.budget import COUNT_EPSILON_SHARE

ConfigValue = bool | int | float | str
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "sgd")
MODES = ("horizontal", "vertical")
MAX_SERVER_ROUNDS = 100_000  # a sanity bound; the simulation also bounds the steps
MAX_LOCAL_EPOCHS = 10_000


def _hidden_layers(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"hidden-layers must be comma-separated integers, got {text!r} "
                         f"(run config key 'hidden-layers')") from None
    if any(s < 1 for s in sizes):
        raise ValueError(f"hidden-layers sizes must be >= 1, got {text!r} "
                         f"(run config key 'hidden-layers')")
    return sizes


NONPRIVATE_BATCH_SIZE = 64


@dataclass(frozen=True)
class RunConfig:
    """Every run-level setting; each field `foo_bar` is the kebab-case config key `foo-bar`."""

    num_server_rounds: int = 20
    local_epochs: float = 3.0
    batch_size: int = 0
    learning_rate: float = 0.05
    lr_schedule: str = "cosine"
    optimizer: str = "adam"
    clip_norm: float = 1.0
    hidden_layers: str = ""
    min_partners: int = 2
    wait_for_partners: float = 300.0
    evaluate_every: int = 5
    seed: int = 0
    test_fraction: float = 0.25
    scenario: str = "credit_data"
    split: str = "natural"
    dirichlet_alpha: float = 0.5
    num_partners: int = 0
    fraction_train: float = 1.0
    data_spec: str = ""
    out_dir: str = "runs/latest"
    schema_path: str = ""
    sim_dp: bool = True
    sim_epsilon: float = 3.0
    sim_delta: float = 1e-5
    sim_budgets: str = ""
    sim_pooled_eval: bool = False
    sim_ledger_dir: str = ""
    sim_keys_dir: str = ""
    receipts_path: str = ""
    receipt_key: str = ""
    secure_aggregation: bool = False
    secagg_clipping_range: float = 8.0
    secagg_max_weight: float = 10000.0
    mode: str = "horizontal"
    vertical_non_private: bool = False
    vertical_finetune_steps: int = 40
    vertical_score_ids: str = ""
    vertical_bottom_epsilon: float = 0.0
    vertical_embedding_clip: float = 1.0

    def learning_rate_at(self, server_round: int) -> float:
        """Learning rate of round `server_round` (1-based): constant, or cosine down to 10%."""
        if self.lr_schedule == "constant":
            return self.learning_rate
        progress = (server_round - 1) / max(self.num_server_rounds, 1)
        return self.learning_rate * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))

    @property
    def nonprivate_batch_size(self) -> int:
        """The minibatch of non-private training (local-only, centralized, the non-private
        federation, personalisation): `batch-size`, or 64 under the DP plan rule."""
        return self.batch_size or NONPRIVATE_BATCH_SIZE

    @property
    def vertical(self) -> bool:
        """Whether this is a vertical run (`mode = "vertical"` or the vertical scenario)."""
        return self.mode == "vertical" or self.scenario == VERTICAL_SCENARIO

    @property
    def partners(self) -> list[str]:
        """The partners of the run's data spec or scenario, in partition-id order."""
        if self.data_spec and not self.vertical:
            return load_spec(self.data_spec).partner_names
        if self.vertical:
            return list(PARTIES)
        return scenario_partners(self.scenario, self.split, self.num_partners)

    @property
    def partners_source(self) -> str:
        """Where the partners come from, for error messages."""
        return f"data spec {self.data_spec}" if self.data_spec else f"scenario {self.scenario!r}"

    @property
    def score_ids(self) -> list[str]:
        """Customer IDs a vertical run scores at its end (`vertical-score-ids`)."""
        return [c.strip() for c in self.vertical_score_ids.split(",") if c.strip()]

    @property
    def hidden(self) -> tuple[int, ...]:
        """Hidden layer widths of the MLP (empty: logistic regression)."""
        return _hidden_layers(self.hidden_layers)

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Map of kebab-case config key to field name."""
        return {f.name.replace("_", "-"): f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_flower(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Parse a Flower run config; unknown keys and bad values raise, naming the key."""
        known = cls.keys()
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown run config key(s) {unknown}; known keys: {sorted(known)}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = known[key]
            values[name] = _coerce(key, value, types[name])
        return cls(**values)

    def to_flower(self) -> dict[str, ConfigValue]:
        """The kebab-case dict form (for Flower's run config and for metadata)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.num_server_rounds <= MAX_SERVER_ROUNDS, "num-server-rounds",
             f"must be in [1, {MAX_SERVER_ROUNDS}]"),
            (0 < self.local_epochs <= MAX_LOCAL_EPOCHS, "local-epochs",
             f"must be a number in (0, {MAX_LOCAL_EPOCHS}]"),
            (self.batch_size >= 0, "batch-size", "must be >= 0 (0: the plan rule)"),
            (0 < self.learning_rate < math.inf, "learning-rate", "must be a finite number > 0"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}"),
            (self.lr_schedule in LR_SCHEDULES, "lr-schedule", f"must be one of {LR_SCHEDULES}"),
            (0 < self.clip_norm < math.inf, "clip-norm", "must be a finite number > 0"),
            (self.min_partners >= 1, "min-partners", "must be >= 1"),
            (self.wait_for_partners > 0, "wait-for-partners", "must be > 0 (seconds)"),
            (self.evaluate_every >= 1, "evaluate-every", "must be >= 1"),
            (self.seed >= 0, "seed", "must be >= 0"),
            (0 < self.test_fraction < 1, "test-fraction", "must be in (0, 1)"),
            (self.scenario in SCENARIOS or self.scenario == VERTICAL_SCENARIO, "scenario",
             f"must be one of {sorted([*SCENARIOS, VERTICAL_SCENARIO])}"),
            (self.mode in MODES, "mode", f"must be one of {MODES}"),
            (self.mode != "vertical" or self.scenario in ("credit_data", VERTICAL_SCENARIO),
             "mode", f"'vertical' runs scenario {VERTICAL_SCENARIO!r} only"),
            (self.vertical_finetune_steps >= 1, "vertical-finetune-steps", "must be >= 1"),
            (0 <= self.vertical_bottom_epsilon < math.inf, "vertical-bottom-epsilon",
             "must be a finite number >= 0 (0: a quarter of each party's epsilon)"),
            (0 < self.vertical_embedding_clip < math.inf, "vertical-embedding-clip",
             "must be a finite number > 0"),
            (self.split in SPLITS, "split", f"must be one of {SPLITS}"),
            (0 < self.dirichlet_alpha < math.inf, "dirichlet-alpha",
             "must be a finite number > 0"),
            (0 < self.fraction_train <= 1, "fraction-train", "must be in (0, 1]"),
            (not self.num_partners or not (self.data_spec or self.vertical), "num-partners",
             "must be 0 with data-spec or a vertical run (they name their own partners)"),
            (bool(self.out_dir), "out-dir", "must not be empty"),
            (0 < self.secagg_clipping_range < math.inf, "secagg-clipping-range",
             "must be a finite number > 0"),
            (1 <= self.secagg_max_weight < math.inf, "secagg-max-weight",
             "must be a finite number >= 1"),
        ]
        checks += [(not self.data_spec or self.split == "natural", "split",
                    "must be 'natural' with data-spec (the spec says who holds which rows)")]
        for ok, key, rule in checks:
            if not ok:
                value = getattr(self, key.replace("-", "_"))
                raise ValueError(f"{key} {rule}, got {value!r} (run config key '{key}')")
        _hidden_layers(self.hidden_layers)
        if bool(self.sim_ledger_dir) != bool(self.sim_keys_dir):
            raise ValueError("run config keys 'sim-ledger-dir' and 'sim-keys-dir' go together")
        if bool(self.receipts_path) != bool(self.receipt_key):
            raise ValueError("run config keys 'receipts-path' and 'receipt-key' go together")
        if self.secure_aggregation and self.fraction_train < 1:
            raise ValueError(f"fraction-train must be 1 with secure-aggregation (SecAgg+ "
                             f"rounds include every connected partner), got "
                             f"{self.fraction_train} (run config key 'fraction-train')")
        if self.secure_aggregation and self.min_partners < 2:
            raise ValueError(f"min-partners must be >= 2 with secure-aggregation (the sum of one "
                             f"partner's update is that update), got {self.min_partners} "
                             f"(run config key 'min-partners')")
        if self.sim_dp:
            check_budget(self.sim_epsilon, self.sim_delta, source="run config",
                         keys=("sim-epsilon", "sim-delta"))
            _check_finite(self.sim_epsilon, "sim-epsilon")
        try:
            partners = self.partners
        except ValueError as exc:
            if not self.data_spec:
                raise
            raise type(exc)(f"{exc} (run config key 'data-spec')") from None
        for name, (eps, delta) in parse_budgets(self.sim_budgets, self.sim_delta).items():
            if name not in partners:
                raise ValueError(f"sim-budgets names unknown partner {name!r}; partners of "
                                 f"{self.partners_source} are {partners} "
                                 f"(run config key 'sim-budgets')")
            check_budget(eps, delta, source="run config",
                         keys=(f"sim-budgets[{name}]", f"sim-budgets[{name}]"))
            _check_finite(eps, "sim-budgets", f"[{name}]")


def _check_finite(epsilon: float, key: str, which: str = "") -> None:
    """A privacy budget must be finite: ε = inf promises nothing and no noise can be calibrated
    to it."""
    if math.isinf(epsilon):
        raise ValueError(f"epsilon{which} must be a finite number > 0, got {epsilon} (run config "
                         f"key '{key}')")


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Convert a Flower config value to the field's type, naming the key on failure."""
    try:
        if annotation == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return value.lower() == "true"
            return bool(value)
        if isinstance(value, bool):
            raise ValueError
        if annotation == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"run config key '{key}' must be {annotation}, got {value!r}") from None


def _optional_number(node: Mapping[str, Any], key: str, default: Any) -> Any:
    """The node config number at `key`, or `default` when the key is absent."""
    return _node_number(node, key) if key in node else default


def node_flag(node: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """An optional true/false node config key (a bool, or the text true/false)."""
    value = node.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"node config key '{key}' must be true or false, got {value!r}")


def _node_number(node: Mapping[str, Any], key: str) -> float:
    value = node[key]
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"node config key '{key}' must be a number, got {value!r}") from None


def parse_budgets(text: str, default_delta: float) -> dict[str, tuple[float, float]]:
    """Parse 'lender=1.0,bank=3:1e-6' into {partner: (epsilon, delta)}."""
    budgets: dict[str, tuple[float, float]] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"sim-budgets entry {item!r} must look like partner=epsilon"
                             f"[:delta] (run config key 'sim-budgets')")
        eps_text, _, delta_text = value.partition(":")
        try:
            budgets[name.strip()] = (float(eps_text),
                                     float(delta_text) if delta_text else default_delta)
        except ValueError:
            raise ValueError(f"sim-budgets entry {item!r}: epsilon and delta must be numbers "
                             f"(run config key 'sim-budgets')") from None
    return budgets


NODE_PARTNER = "partner"
"""Node config key naming a deployed partner (its presence marks one)."""
NODE_PARTITION = "partition-id"
"""Node config key of a simulated partner: its partition of the scenario."""


@dataclass(frozen=True)
class PartnerConfig:
    """A partner's own settings, from its node config: who it is, its data, its budget.

    In deployment: `partner`, `epsilon`, `delta`, `data-path`, `schema-path`, `ledger-path`,
    `signing-key`, `odometer-path` and `lifetime-epsilon` (optionally `count-epsilon-share`,
    `test-fraction`, `release-metrics`, `local-report-path`, the bounds of `common.limits`; a
    vertical party also `id-column`,
    the column of its CSV holding the customer IDs the PSI aligns on, which its table needs) are
    node config keys the partner's SuperNode sets; the coordinator's run config cannot change
    any of them. In
    simulation the partner is taken from `partition-id` via the scenario, its budget from the
    `sim-*` run config keys, and its ledger from `sim-ledger-dir` / `sim-keys-dir`.
    """

    partner: str
    epsilon: float | None
    delta: float | None
    data_path: str = ""
    schema_path: str = ""
    partition_id: int = -1
    ledger_path: str = ""
    signing_key: str = ""
    release_metrics: bool = True
    limits: PartnerLimits = field(default_factory=PartnerLimits.none)
    count_epsilon_share: float = COUNT_EPSILON_SHARE
    odometer_path: str = ""
    lifetime_epsilon: float | None = None
    test_fraction: float | None = None
    local_report_path: str = ""
    id_column: str = ""

    @property
    def deployed(self) -> bool:
        """Whether this partner runs on its own SuperNode (node config `partner`), not as a
        simulated partition of a scenario."""
        return self.partition_id < 0

    @property
    def private(self) -> bool:
        """Whether this partner trains with DP (always, outside simulation)."""
        return self.epsilon is not None

    @classmethod
    def _deployed(cls, node: Mapping[str, Any], run: RunConfig) -> PartnerConfig:
        """A deployed partner from its own node config; no run config key changes it."""
        # A vertical party's releases are not (yet) composed into a lifetime odometer.
        lifetime_keys = () if run.vertical else ("odometer-path", "lifetime-epsilon")
        paths = ("data-path", "schema-path", "ledger-path", "signing-key",
                 *lifetime_keys[:1])
        missing = [k for k in ("epsilon", "delta", *paths, *lifetime_keys[1:]) if k not in node]
        if missing:
            raise ValueError(f"node config of partner {node['partner']!r} lacks {missing} "
                             f"(a deployed partner keeps a signed ledger of each run and a "
                             f"lifetime odometer of its data set)")
        empty = [k for k in paths if not str(node[k]).strip()]
        if empty:
            raise ValueError(f"node config of partner {node['partner']!r} sets {empty} to an "
                             f"empty value (its data, ledger, signing key and odometer must be "
                             f"real files)")
        if "allow-evaluate" in node:
            raise ValueError("node config key 'allow-evaluate' was replaced by "
                             "'release-metrics' (default false: no training loss, evaluation "
                             "metric or test-set size leaves the partner)")
        epsilon, delta = _node_number(node, "epsilon"), _node_number(node, "delta")
        check_budget(epsilon, delta, source="node config")
        share = _optional_number(node, "count-epsilon-share", COUNT_EPSILON_SHARE)
        if not 0.0 < share <= 0.5:
            raise ValueError(f"count-epsilon-share must be in (0, 0.5], got {share} (node "
                             f"config key 'count-epsilon-share')")
        lifetime = _optional_number(node, "lifetime-epsilon", None)
        if lifetime is not None and (not lifetime > 0 or math.isinf(lifetime)):
            raise ValueError(f"lifetime-epsilon must be a finite number > 0, got {lifetime} "
                             f"(node config key 'lifetime-epsilon')")
        test_fraction = _optional_number(node, "test-fraction", RunConfig.test_fraction)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test-fraction must be in (0, 1), got {test_fraction} (node "
                             f"config key 'test-fraction')")
        return cls(partner=str(node["partner"]), epsilon=epsilon, delta=delta,
                   data_path=str(node["data-path"]), schema_path=str(node["schema-path"]),
                   ledger_path=str(node["ledger-path"]), signing_key=str(node["signing-key"]),
                   count_epsilon_share=share, odometer_path=str(node.get("odometer-path", "")),
                   lifetime_epsilon=lifetime, test_fraction=test_fraction,
                   release_metrics=node_flag(node, "release-metrics"),
                   limits=PartnerLimits.from_node_config(node),
                   local_report_path=str(node.get("local-report-path", "")).strip(),
                   id_column=str(node.get("id-column", "")).strip())

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any], run: RunConfig) -> PartnerConfig:
        """Resolve the partner from its node config (deployment) or partition id (simulation)."""
        if NODE_PARTNER in node:
            return cls._deployed(node, run)
        if NODE_PARTITION not in node:
            raise ValueError("node config has neither 'partner' (deployment) nor "
                             "'partition-id' (simulation)")
        partition_id = int(node[NODE_PARTITION])
        partners = run.partners
        if not 0 <= partition_id < len(partners):
            raise ValueError(f"partition-id {partition_id} out of range: {run.partners_source} "
                             f"has {len(partners)} partners")
        name = partners[partition_id]
        if not run.sim_dp:
            return cls(partner=name, epsilon=None, delta=None, partition_id=partition_id)
        epsilon, delta = parse_budgets(run.sim_budgets, run.sim_delta).get(
            name, (run.sim_epsilon, run.sim_delta))
        ledger_path = signing_key = ""
        if run.sim_ledger_dir:
            ledger_path = str(ledger_file(run.sim_ledger_dir, name))
            signing_key = str(Path(run.sim_keys_dir) / f"{name}.key")
        return cls(partner=name, epsilon=epsilon, delta=delta, partition_id=partition_id,
                   ledger_path=ledger_path, signing_key=signing_key)
