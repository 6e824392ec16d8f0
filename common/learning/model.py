"""The shared credit-risk network: a small tabular MLP that Opacus accepts."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


class CreditRiskMLP(nn.Module):
    """Feed-forward network from encoded features to one logit (log-odds of 'bad')."""

    def __init__(self, num_features: int, hidden: tuple[int, ...] = (32,)) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch,)."""
        return self.net(features).squeeze(-1)


def build_model(num_features: int, hidden: tuple[int, ...], seed: int) -> CreditRiskMLP:
    """A freshly initialised model; the same seed gives the same weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return CreditRiskMLP(num_features, hidden)
    finally:
        torch.random.set_rng_state(generator_state)


def get_weights(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The model's state_dict as numpy arrays (a copy)."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy arrays into the model, checking keys and shapes exactly."""
    expected = model.state_dict()
    if set(weights) != set(expected):
        raise ValueError(f"weight keys differ: missing {sorted(set(expected) - set(weights))}, "
                         f"unexpected {sorted(set(weights) - set(expected))}")
    state = OrderedDict()
    for key, ref in expected.items():
        array = np.asarray(weights[key])
        if tuple(array.shape) != tuple(ref.shape):
            raise ValueError(f"weight {key!r} has shape {array.shape}, expected {tuple(ref.shape)}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"weight {key!r} contains NaN or Inf")
        state[key] = torch.as_tensor(array, dtype=ref.dtype)
    model.load_state_dict(state)
