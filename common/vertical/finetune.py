"""Non-private joint fine-tuning, both sides: exact embeddings forward, exact gradients back.

`FinetuneTop` (lender) and `FinetuneBottom` (passive party) keep their model and Adam state as
arrays between messages; `finetune_batches` is the lender's minibatch schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.learning.model import build_model, get_weights, set_weights
from common.learning.steps import num_steps, steps_per_epoch
from common.learning.training import TrainSettings
from common.vertical.stages import TopModel


def finetune_batches(num_rows: int, settings: TrainSettings, seed: int) -> list[np.ndarray]:
    """The lender's minibatch schedule of joint fine-tuning: a fresh permutation per epoch."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = steps_per_epoch(num_rows, batch_size=settings.batch_size)
    batches = []
    for step in range(num_steps(settings.epochs, per_epoch)):
        if step % per_epoch == 0:
            order = torch.randperm(num_rows, generator=generator)
        start = (step % per_epoch) * settings.batch_size
        batches.append(order[start:start + settings.batch_size].numpy())
    return batches


def optimizer_arrays(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """An optimizer's state as named arrays (to keep it between messages)."""
    return {f"{index}.{name}": value.detach().numpy().copy()
            for index, state in optimizer.state_dict()["state"].items()
            for name, value in state.items()}


def load_optimizer_arrays(optimizer: torch.optim.Optimizer,
                          arrays: Mapping[str, np.ndarray]) -> None:
    """Inverse of `optimizer_arrays` (nothing to load before the first step)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = torch.tensor(np.asarray(value))
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})


class FinetuneTop:
    """Lender side of joint fine-tuning: the top model and its Adam state.

    `step` takes the exact embeddings of one batch and returns the exact gradient of the
    lender's loss w.r.t. each; `arrays`/`from_arrays` keep the state between messages.
    """

    def __init__(self, top: TopModel, settings: TrainSettings) -> None:
        self.weights = torch.tensor(top.weights, dtype=torch.float32, requires_grad=True)
        self.bias = torch.tensor([top.bias], dtype=torch.float32, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.weights, self.bias], lr=settings.learning_rate)

    def step(self, own: np.ndarray, labels: np.ndarray,
             embeddings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One Adam step of the top model on a batch; the gradients to send back."""
        received = [torch.tensor(e, dtype=torch.float32, requires_grad=True) for e in embeddings]
        inputs = torch.cat([torch.as_tensor(own, dtype=torch.float32),
                            torch.stack(received, dim=1)], dim=1)
        self.optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            inputs @ self.weights + self.bias, torch.as_tensor(labels, dtype=torch.float32))
        loss.backward()
        self.optimizer.step()
        return [emb.grad.numpy().copy() for emb in received]

    def top(self) -> TopModel:
        """The current top model."""
        return TopModel(self.weights.detach().numpy().astype(np.float64), float(self.bias.item()))

    def arrays(self) -> dict[str, np.ndarray]:
        """Weights and optimizer state."""
        return {"top.weights": self.weights.detach().numpy().copy(),
                "top.bias": self.bias.detach().numpy().copy(),
                **{f"adam.{k}": v for k, v in optimizer_arrays(self.optimizer).items()}}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray],
                    settings: TrainSettings) -> FinetuneTop:
        """Inverse of `arrays`."""
        tuner = cls(TopModel(np.asarray(arrays["top.weights"], dtype=np.float64),
                             float(np.asarray(arrays["top.bias"])[0])), settings)
        load_optimizer_arrays(tuner.optimizer, {k[5:]: v for k, v in arrays.items()
                                                if k.startswith("adam.")})
        return tuner


class FinetuneBottom:
    """Passive side of joint fine-tuning: its bottom model and the bottom's Adam state."""

    def __init__(self, bottom: nn.Module, settings: TrainSettings) -> None:
        self.bottom = bottom
        self.optimizer = torch.optim.Adam(bottom.parameters(), lr=settings.learning_rate)

    def forward(self, features: np.ndarray) -> np.ndarray:
        """Exact embeddings of a batch (what the party sends)."""
        with torch.no_grad():
            self.bottom.train()
            return self.bottom(torch.as_tensor(features, dtype=torch.float32)).numpy().copy()

    def backward(self, features: np.ndarray, grad: np.ndarray) -> None:
        """One Adam step from the lender's gradient w.r.t. this batch's embeddings (the bottom
        is unchanged since `forward`, so recomputing the batch gives the same graph)."""
        self.bottom.train()
        self.optimizer.zero_grad()
        outputs = self.bottom(torch.as_tensor(features, dtype=torch.float32))
        outputs.backward(torch.as_tensor(grad, dtype=torch.float32))
        self.optimizer.step()

    def arrays(self) -> dict[str, np.ndarray]:
        """Weights and optimizer state."""
        return {**{f"bottom.{k}": v for k, v in get_weights(self.bottom).items()},
                **{f"adam.{k}": v for k, v in optimizer_arrays(self.optimizer).items()}}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray],
                    settings: TrainSettings) -> FinetuneBottom:
        """Inverse of `arrays`."""
        weights = {k[7:]: np.asarray(v) for k, v in arrays.items() if k.startswith("bottom.")}
        bottom = build_model(weights["net.0.weight"].shape[1], (), 0)
        set_weights(bottom, weights)
        tuner = cls(bottom, settings)
        load_optimizer_arrays(tuner.optimizer, {k[5:]: v for k, v in arrays.items()
                                                if k.startswith("adam.")})
        return tuner
