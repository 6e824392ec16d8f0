"""What a deployed partner lets the coordinator ask of it: its own bounds, from its node config.

The coordinator chooses the learning rate, the model's shape (and so its size), the local epochs
and the number of rounds. None of them can raise what a partner's DP releases cost (the partner
calibrates once and refuses a round that would overspend), but a hostile coordinator can still
use them to waste a partner's budget on a useless model, to run huge models on its machine, or
to shape a probe. So each partner bounds them itself and refuses, before it reads its data, an
instruction outside its bounds, with a reason that names the bound (a fixed text: bounds are the
partner's own settings, not data). A simulated partner has no bounds (`PartnerLimits.none()`):
the analyst is the coordinator there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LIMIT_KEYS = (
    "min-learning-rate",
    "max-learning-rate",
    "max-model-parameters",
    "max-local-epochs",
    "max-rounds",
)
"""The node config keys of a partner's bounds (each optional; the defaults below apply)."""
WHOLE_NUMBER_KEYS = ("max-model-parameters", "max-rounds")


@dataclass(frozen=True)
class PartnerLimits:
    """A partner's bounds on what the coordinator may ask; each field is the node config key
    of the same name in kebab case. The defaults admit fedcredit's run config defaults and the
    documented settings with room to spare."""

    min_learning_rate: float = 1e-6
    max_learning_rate: float = 1.0
    max_model_parameters: int = 100_000
    max_local_epochs: float = 10.0
    max_rounds: int = 500

    @classmethod
    def none(cls) -> PartnerLimits:
        """No bounds at all (a simulated partner)."""
        return cls(0.0, math.inf, 2**62, math.inf, 2**62)

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> PartnerLimits:
        """The partner's bounds, validated; a ValueError names the offending key."""
        values: dict[str, float | int] = {}
        for key in LIMIT_KEYS:
            if key not in node:
                continue
            raw = node[key]
            try:
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"node config key '{key}' must be a number, got {raw!r}") from None
            if not value > 0 or math.isnan(value):
                raise ValueError(f"node config key '{key}' must be > 0, got {raw!r}")
            if key in WHOLE_NUMBER_KEYS:
                if not value.is_integer():
                    raise ValueError(f"node config key '{key}' must be a whole number, got {raw!r}")
                value = int(value)
            values[key.replace("-", "_")] = value
        limits = cls(**{**cls().__dict__, **values})
        if limits.min_learning_rate > limits.max_learning_rate:
            raise ValueError(
                f"node config keys 'min-learning-rate' ({limits.min_learning_rate:g}) and "
                f"'max-learning-rate' ({limits.max_learning_rate:g}) leave no learning rate"
            )
        return limits

    def refusal(
        self,
        *,
        learning_rate: float,
        local_epochs: float,
        planned_rounds: int,
        server_round: int,
        model_parameters: int,
    ) -> str:
        """Why the partner refuses an instruction asking for these values ('' if it accepts).
        The text names the bound and the value asked, both the coordinator's to know."""
        if not self.min_learning_rate <= learning_rate <= self.max_learning_rate:
            return (
                f"the learning rate asked for ({learning_rate:g}) is outside this partner's "
                f"bounds [{self.min_learning_rate:g}, {self.max_learning_rate:g}] (its node "
                f"config keys 'min-learning-rate', 'max-learning-rate')"
            )
        if not local_epochs <= self.max_local_epochs:
            return (
                f"the local epochs asked for ({local_epochs:g}) exceed this partner's bound "
                f"{self.max_local_epochs:g} (its node config key 'max-local-epochs')"
            )
        if not max(planned_rounds, server_round) <= self.max_rounds:
            return (
                f"the run plans {planned_rounds} rounds (this is round {server_round}); this "
                f"partner takes part in at most {self.max_rounds:g} (its node config key "
                f"'max-rounds')"
            )
        if not model_parameters <= self.max_model_parameters:
            return (
                f"the model sent has {model_parameters} parameters; this partner trains at "
                f"most {self.max_model_parameters:g} (its node config key "
                f"'max-model-parameters')"
            )
        return ""
