"""The one training loop and the one evaluation routine, used by clients, baselines and tests.

With `dp` (a `SubsampledGaussianEvent`) training is DP-SGD via Opacus: each of its steps draws a
Poisson sample of the training rows at rate q (every row independently), computes per-sample
gradients, clips each to the norm C, sums, adds Gaussian noise N(0, σ²C²) and divides by the
expected batch size (q·n, or the public value the caller passes: a horizontal partner's q·ñ).
Without `dp` it is ordinary minibatch training on shuffled data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import OPTIMIZERS
from common.data.tables import Split
from common.learning.metrics import credit_metrics
from common.learning.steps import num_steps, steps_per_epoch
from common.privacy.accounting import SubsampledGaussianEvent

POISSON_MASK_MAX_ROWS = 65_536
"""Up to this many rows a DP-SGD step draws its Poisson sample as one uniform per row (row kept
if u < q); above it, as geometric gaps between kept rows: the same distribution in O(q·n) work
instead of O(n) (on a 10^6-row partner the per-row mask dominated a step)."""
SAMPLERS = ("mask", "gaps-v1")
"""The two ways of drawing the same Poisson sample (different draws from the same seed): a
replayed round must use the one it ran with (`common.replay.replay_settings` commits it)."""
GAP_BLOCK_MIN = 64
"""Uniforms drawn at once by the gap sampler beyond the expected sample (more blocks follow
when a block's gaps end before the last row)."""
PREDICT_BATCH_ROWS = 65_536
"""`predict` scores at most this many rows at a time (one batch for smaller inputs)."""


def sampler_for(rows: int) -> str:
    """The sampler DP-SGD uses on `rows` training rows (see `POISSON_MASK_MAX_ROWS`)."""
    return SAMPLERS[0] if rows <= POISSON_MASK_MAX_ROWS else SAMPLERS[1]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one local training call."""

    epochs: float = 1.0
    batch_size: int = 64
    learning_rate: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


@dataclass(frozen=True)
class TrainOutcome:
    """What a training call did: steps taken, examples seen, mean loss, and the DP mechanism."""

    steps: int
    num_examples: int
    mean_loss: float
    dp: SubsampledGaussianEvent | None


def _make_optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.learning_rate,
                                weight_decay=settings.weight_decay)
    return torch.optim.SGD(params, lr=settings.learning_rate, momentum=0.9,
                           weight_decay=settings.weight_decay)


@contextmanager
def reproducible_cpu() -> Iterator[None]:
    """Pin what makes a CPU DP-SGD run bit-reproducible (so a round can be replayed from its
    seed, `common.privacy.audit.replay`): one intra-op thread (parallel reductions sum in an
    order that depends on the thread count) and PyTorch's deterministic algorithms; restored
    afterwards. Same inputs, seed and software stack (torch, Opacus, CPU kind) give the same
    bits."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


def train(model: nn.Module, data: Split, settings: TrainSettings, *, seed: int,
          dp: SubsampledGaussianEvent | None = None,
          expected_batch_size: int | None = None, sampler: str | None = None) -> TrainOutcome:
    """Train `model` in place on `data`; returns what was done.

    Without `dp`: `settings.epochs` epochs of shuffled minibatches. With `dp`: exactly `dp.steps`
    DP-SGD steps at its q, σ and clipping norm (the privacy layer's authorized mechanism);
    `settings` then gives only the optimiser, and the noisy sum is divided by
    `expected_batch_size` (default q·len(data); pass a public value when len(data) is private).
    Sampling and noise use two independent streams
    derived from `seed`; whoever knows `seed` can reproduce both, so a deployed partner passes
    fresh OS randomness (see `common.partner.round_seed`). `sampler` (`SAMPLERS`) picks how the
    Poisson sample is drawn (default `sampler_for(len(data))`; a replay passes the one logged).
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty data split")
    features, labels = _as_tensor(data.features), _as_tensor(data.labels)
    sampling_seed, noise_seed = (int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
                                 for s in np.random.SeedSequence(seed).spawn(2))
    sampling = torch.Generator().manual_seed(sampling_seed)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    model.train()
    if dp is None:
        per_epoch = steps_per_epoch(len(data), batch_size=settings.batch_size)
        total = num_steps(settings.epochs, per_epoch)
        optimizer = _make_optimizer(list(model.parameters()), settings)
        losses = []
        order = torch.randperm(len(data), generator=sampling)
        for step in range(total):
            position = step % per_epoch
            if position == 0 and step > 0:
                order = torch.randperm(len(data), generator=sampling)
            batch = order[position * settings.batch_size:(position + 1) * settings.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(features[batch]), labels[batch]) / len(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return TrainOutcome(steps=total, num_examples=len(data),
                            mean_loss=float(np.mean(losses)), dp=None)

    with reproducible_cpu():
        return _train_dp(model, features, labels, settings, dp,
                         poisson_sampler(len(labels), dp.sample_rate, sampling, sampler),
                         noise_seed, expected_batch_size)


def _train_dp(model: nn.Module, features: torch.Tensor, labels: torch.Tensor,
              settings: TrainSettings, dp: SubsampledGaussianEvent,
              draw_sample: Callable[[], torch.Tensor], noise_seed: int,
              expected_batch_size: int | None) -> TrainOutcome:
    """`train`'s DP-SGD branch (see there)."""
    # Opacus loads only when a DP round trains (its package import takes about a second).
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        private = GradSampleModule(model, loss_reduction="sum")
        optimizer = DPOptimizer(
            _make_optimizer(list(private.parameters()), settings),
            noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.clipping_norm,
            expected_batch_size=(expected_batch_size
                                 or max(1, round(dp.sample_rate * len(labels)))),
            loss_reduction="mean", generator=torch.Generator().manual_seed(noise_seed))
    losses = []
    try:
        for _ in range(dp.steps):
            batch = draw_sample()
            optimizer.zero_grad()
            loss = loss_fn(private(features[batch]), labels[batch])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            _zero_non_finite(private)
            optimizer.step()
            if len(batch):
                losses.append(loss.item() / len(batch))
    finally:
        private._close()
    return TrainOutcome(steps=dp.steps, num_examples=len(labels),
                        mean_loss=float(np.mean(losses)) if losses else float("nan"), dp=dp)


def _zero_non_finite(model: nn.Module) -> None:
    """Set every non-finite entry of every per-sample gradient to 0, before clipping.

    A coordinator chooses the weights, so it can send a model whose forward pass overflows on
    one target record only; that record's gradient is then NaN, clipping cannot bound it, and
    the NaN would survive the noise into the update (a membership test through "did the update
    diverge"). Zeroing those entries keeps every record's clipped contribution a finite vector
    of norm at most C, which is what the DP guarantee assumes; finite gradients are untouched.
    """
    for param in model.parameters():
        samples = getattr(param, "grad_sample", None)
        for grad in samples if isinstance(samples, list) else [samples]:
            if grad is not None:
                torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)


def poisson_sampler(rows: int, sample_rate: float, generator: torch.Generator,
                    sampler: str | None = None,
                    block: int | None = None) -> Callable[[], torch.Tensor]:
    """A function that draws one Poisson sample: the ascending indices of the rows kept, each of
    `rows` rows independently with probability `sample_rate`, from `generator` alone.

    `mask` (the default up to `POISSON_MASK_MAX_ROWS` rows): one uniform u per row, kept if
    u < q (in buffers reused across steps). `gaps-v1` (the default above): the gaps between kept
    rows of a Bernoulli(q) sequence are independent Geometric(q) variables,
    G = floor(log(1 - u) / log(1 - q)) + 1 with P(G > k) = (1 - q)^k, so the kept rows are the
    partial sums of such gaps below `rows`: the same distribution. `block`: uniforms drawn at
    once (default: the expected sample plus 6 standard deviations plus `GAP_BLOCK_MIN`).
    """
    sampler = sampler or sampler_for(rows)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown Poisson sampler {sampler!r}; known: {SAMPLERS}")
    if sampler == "mask":
        uniform = torch.empty(rows)
        mask = torch.empty(rows, dtype=torch.bool)

        def by_mask() -> torch.Tensor:
            torch.lt(torch.rand(rows, generator=generator, out=uniform), sample_rate, out=mask)
            return mask.nonzero().squeeze(1)
        return by_mask
    if sample_rate >= 1.0:
        return lambda: torch.arange(rows)
    log_skip = math.log1p(-sample_rate)
    expected = sample_rate * rows
    block = block or int(expected + 6.0 * math.sqrt(expected) + GAP_BLOCK_MIN)

    def by_gaps() -> torch.Tensor:
        pieces, last = [], -1.0
        while last < rows:
            gaps = torch.floor(torch.log1p(-torch.rand(block, generator=generator,
                                                        dtype=torch.float64)) / log_skip) + 1
            pieces.append(last + torch.cumsum(gaps, 0))
            last = float(pieces[-1][-1])
        kept = torch.cat(pieces)
        return kept[kept < rows].long()
    return by_gaps


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """`array` as a float32 tensor, sharing its memory where it is float32 already (a read-only
    memory map included: training and scoring only read it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array, dtype=torch.float32)


@torch.no_grad()
def predict(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Predicted probability of 'bad' for each row (scored `PREDICT_BATCH_ROWS` at a time)."""
    model.eval()
    scores = np.empty(len(features), dtype=np.float64)
    for start in range(0, len(features), PREDICT_BATCH_ROWS):
        logits = model(_as_tensor(features[start:start + PREDICT_BATCH_ROWS]))
        scores[start:start + PREDICT_BATCH_ROWS] = torch.sigmoid(logits).numpy()
    return scores


def evaluate(model: nn.Module, data: Split) -> dict[str, float]:
    """Credit metrics and mean log-loss of `model` on `data`."""
    scores = predict(model, data.features)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    log_loss = float(-np.mean(data.labels * np.log(clipped)
                              + (1 - data.labels) * np.log(1 - clipped)))
    return {**credit_metrics(data.labels, scores), "log_loss": log_loss}
