"""Privacy accounting, in the style of Google's dp_accounting: events, ε, calibration, slack.

What happened is one frozen `SubsampledGaussianEvent` (Poisson sample rate q, noise multiplier σ,
steps, clipping norm C): a DP-SGD run, or a one-shot Gaussian release (q = 1, one step). How it
is counted is kept apart: `rdp_epsilon` composes events with the RDP of the subsampled Gaussian
from Opacus' analysis (Mironov et al. 2019) and a named RDP-to-(ε, δ) conversion.
`calibrate_noise_multiplier` is the one σ calibration, and `within_budget` the one comparison of
a composed ε with a budget.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Opacus' default RDP orders, extended for very small and very large budgets.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512])

ACCOUNTANT_NAME = "rdp (opacus.accountants.analysis.rdp)"
CONVERSIONS = ("balle2020", "classic")
"""`balle2020`: Balle et al. 2020 Thm. 21, Opacus 1.6's default; `classic`: Mironov 2017 Prop. 3."""
CONVERSION = "balle2020"
"""The conversion every partner and party of this project accounts with."""

EPSILON_SLACK = 1e-9
"""Relative float round-off allowed when comparing a composed ε with a budget."""

MAX_NOISE_MULTIPLIER = 1e5
"""Calibration gives up when σ would have to exceed this: the target is out of reach."""


def check_budget(epsilon: float, delta: float, *, source: str = "node config",
                 keys: tuple[str, str] = ("epsilon", "delta")) -> None:
    """Raise a ValueError naming the key when (ε, δ) is not a valid budget."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon} ({source} key '{keys[0]}')")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta} ({source} key '{keys[1]}')")


def within_budget(epsilon: float, budget: float) -> bool:
    """Whether a composed ε stays within `budget`, up to float round-off (`EPSILON_SLACK`)."""
    return epsilon <= budget * (1 + EPSILON_SLACK)


@dataclass(frozen=True)
class SubsampledGaussianEvent:
    """`steps` Gaussian steps, each on a Poisson sample of the rows at rate q.

    Each step adds N(0, (σ·C)²) noise to a sum of contributions clipped to L2 norm C (the clipping
    norm, or the L2 sensitivity of a one-shot release). ε depends on q, σ and steps only.
    """

    sample_rate: float
    noise_multiplier: float
    steps: int
    clipping_norm: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.noise_multiplier < 0.0:
            raise ValueError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.clipping_norm > 0.0:
            raise ValueError(f"clipping norm must be > 0, got {self.clipping_norm}")


def rdp_curve(events: Iterable[SubsampledGaussianEvent],
              orders: tuple[float, ...] = RDP_ORDERS) -> list[float]:
    """Total RDP at each order: the sum over all composed events.

    RDP composes additively and is linear in steps, so events with the same (q, σ) are merged
    before the (costly) per-order computation.
    """
    steps_by_mechanism: dict[tuple[float, float], int] = {}
    for event in events:
        if event.steps == 0:
            continue
        if event.noise_multiplier == 0.0:
            return [math.inf] * len(orders)
        key = (event.sample_rate, event.noise_multiplier)
        steps_by_mechanism[key] = steps_by_mechanism.get(key, 0) + event.steps
    total = [0.0] * len(orders)
    for (sample_rate, noise_multiplier), steps in steps_by_mechanism.items():
        per_step = _rdp_per_step(sample_rate, noise_multiplier, orders)
        total = [t + steps * r for t, r in zip(total, per_step, strict=True)]
    return total


@functools.cache
def _opacus_rdp():
    """Opacus' RDP analysis module (`opacus.accountants.analysis.rdp`: math, numpy, scipy only),
    loaded from its file on first use. Importing it through the package would first run
    `opacus/__init__`, which loads the privacy engine, torch.distributed and scipy.stats: about a
    second that every partner message that does not train would pay for nothing."""
    package = importlib.util.find_spec("opacus")
    if package is None or not package.submodule_search_locations:
        raise ImportError("opacus is not installed")
    path = Path(package.submodule_search_locations[0]) / "accountants" / "analysis" / "rdp.py"
    spec = importlib.util.spec_from_file_location("fedcredit_opacus_rdp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=256)
def _rdp_per_step(sample_rate: float, noise_multiplier: float,
                  orders: tuple[float, ...]) -> tuple[float, ...]:
    """RDP of one subsampled Gaussian step at each order (a pure function, so memoised)."""
    rdp = _opacus_rdp().compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                    orders=list(orders))
    return tuple(float(r) for r in rdp)


def rdp_epsilon(events: Iterable[SubsampledGaussianEvent], *, delta: float,
                conversion: str = CONVERSION, orders: tuple[float, ...] = RDP_ORDERS) -> float:
    """ε at `delta` of all `events` composed, via RDP and the named conversion."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if conversion not in CONVERSIONS:
        raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
    curve = rdp_curve(events, orders)
    if all(r == 0.0 for r in curve):
        return 0.0
    best = math.inf
    for order, rdp in zip(orders, curve, strict=True):
        if math.isinf(rdp):
            return math.inf
        if conversion == "classic":
            eps = rdp + math.log(1.0 / delta) / (order - 1.0)
        else:
            eps = (rdp - (math.log(delta) + math.log(order)) / (order - 1.0)
                   + math.log((order - 1.0) / order))
        best = min(best, eps)
    return max(best, 0.0)


def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sample_rate: float,
                               steps: int, prior: Sequence[SubsampledGaussianEvent] = (),
                               conversion: str = CONVERSION, tolerance: float = 1e-3) -> float:
    """Smallest σ (within `tolerance`) such that the `prior` events, then `steps` steps at rate q
    and noise multiplier σ, compose to at most `target_epsilon`.

    Bisection: σ = 1, 2, 4, ... until the target is met, then halve [low, high] until it is
    narrower than `tolerance`; returns `high`, which always meets the target. DP-SGD calls it with
    its (q, steps), a one-shot release with q = 1 and one step.
    """
    if not target_epsilon > 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if prior:
        already = rdp_epsilon(prior, delta=delta, conversion=conversion)
        if already >= target_epsilon:
            raise ValueError(f"earlier events already spend epsilon {already:.4g} >= "
                             f"{target_epsilon}: no budget left for this mechanism")

    def spent(noise_multiplier: float) -> float:
        event = SubsampledGaussianEvent(sample_rate, noise_multiplier, steps)
        return rdp_epsilon([*prior, event], delta=delta, conversion=conversion)

    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, high * 2.0
        if high > MAX_NOISE_MULTIPLIER:
            raise ValueError(f"cannot reach epsilon {target_epsilon} with {steps} steps at "
                             f"sample rate {sample_rate}"
                             + (" after the earlier events" if prior else "")
                             + f" (noise multiplier would exceed {MAX_NOISE_MULTIPLIER:g})")
    while high - low > tolerance:
        mid = (low + high) / 2.0
        low, high = (mid, high) if spent(mid) > target_epsilon else (low, mid)
    return high
