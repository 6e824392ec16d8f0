"""Privacy accounting, in the style of Google's dp_accounting: events, ε, calibration, slack.

What happened is one frozen `SubsampledGaussianEvent` (Poisson sample rate q, noise multiplier σ,
steps, clipping norm C): a DP-SGD run, or a one-shot Gaussian release (q = 1, one step). How it
is counted is kept apart, by a named accountant (`ACCOUNTANTS`):

- `rdp`: the RDP of the subsampled Gaussian from Opacus' analysis (Mironov et al. 2019) over
  `RDP_ORDERS`, with a named RDP-to-(ε, δ) conversion (`rdp_epsilon`). The accountant of every
  ledger written before the `prv` one existed.
- `prv` (`ACCOUNTANT`, what every partner and party calibrates and enforces with):
  min(`rdp`, `prv_epsilon`), where `prv_epsilon` is Opacus' privacy-loss-random-variable
  accountant (Gopi et al. 2021, Opacus 1.6's default) taken at its upper bound `eps_upper`,
  which includes its discretisation error (`PRV_EPS_ERROR`, `PRV_DELTA_ERROR`). Both are valid
  upper bounds on ε, so their minimum is one: never worse than RDP, 6-8% less noise for the same
  budget in this project's regime (q ≈ 0.05, 1000+ steps, ε 1-10).

`composed_epsilon` composes events by the accountant named, `calibrate_noise_multiplier` is the
one σ calibration, and `within_budget` the one comparison of a composed ε with a budget.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
import types
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Opacus' default RDP orders, extended for very small and very large budgets.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512])

OPACUS_ALPHAS: tuple[float, ...] = tuple(
    [1.0 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)])
"""Opacus' `RDPAccountant.DEFAULT_ALPHAS`: the orders its PRV accountant sizes its domain with."""

PRV_EPS_ERROR = 0.01
"""PRV: the discretisation's error in ε (Opacus' default); `eps_upper` = estimate + this."""
PRV_DELTA_ERROR = 1e-3
"""PRV: the error allowed in δ, as a fraction of δ (Opacus' default, δ/1000)."""
PRV_MAX_POINTS = 1 << 20
"""PRV is not computed (taken as inf, so `prv` falls back to RDP, which is valid) when its
discretisation would need more points than this: σ so small that ε is in the hundreds."""

RDP_ACCOUNTANT_NAME = "rdp (opacus.accountants.analysis.rdp)"
PRV_ACCOUNTANT_NAME = (f"min(rdp, prv) (opacus.accountants.analysis.rdp, orders RDP_ORDERS; "
                       f"opacus.accountants.analysis.prv eps_upper, eps_error={PRV_EPS_ERROR:g}, "
                       f"delta_error=delta*{PRV_DELTA_ERROR:g})")
ACCOUNTANT_NAMES = {"rdp": RDP_ACCOUNTANT_NAME, "prv": PRV_ACCOUNTANT_NAME}
"""Each accountant by its short name, and the name a ledger or odometer entry records."""
ACCOUNTANTS = tuple(ACCOUNTANT_NAMES)
ACCOUNTANT = "prv"
"""The accountant every partner and party of this project calibrates and enforces with."""
ACCOUNTANT_NAME = ACCOUNTANT_NAMES[ACCOUNTANT]
"""What a ledger or odometer entry written now records in its `accountant` field."""
CONVERSIONS = ("balle2020", "classic")
"""`balle2020`: Balle et al. 2020 Thm. 21, Opacus 1.6's default; `classic`: Mironov 2017 Prop. 3."""
CONVERSION = "balle2020"
"""The conversion every partner and party of this project accounts with."""

EPSILON_SLACK = 1e-9
"""Relative float round-off allowed when comparing a composed ε with a budget."""

DELTA_MIN = 1e-10
"""The smallest δ a budget may have: the validated range's lower end. Between about 1e-14 and
5e-14 Opacus 1.6's PRV `eps_upper` falls under a lower bound on the true ε, and at 2e-14
dp_accounting's pessimistic PLD certifies no finite ε for the default plan; at 1e-6, 1e-9 and
1e-10 the `prv` claim is at least the pessimistic PLD (`python -m simulations.bench.delta_range`
prints the table; `tests/common/privacy/test_accounting.py` checks the lower end). 1e-12 also
passed there but is left out as margin. A δ must also stay below 1/ñ, the partner's noisy count
(`common.privacy.budget.calibrate_plan`)."""

MAX_NOISE_MULTIPLIER = 1e5
"""Calibration gives up when σ would have to exceed this: the target is out of reach."""


def check_budget(epsilon: float, delta: float, *, source: str = "node config",
                 keys: tuple[str, str] = ("epsilon", "delta")) -> None:
    """Raise a ValueError naming the key when (ε, δ) is not a valid budget."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon} ({source} key '{keys[0]}')")
    if not DELTA_MIN <= delta < 1:
        raise ValueError(f"delta must be in [{DELTA_MIN:g}, 1), got {delta} ({source} key "
                         f"'{keys[1]}'): below {DELTA_MIN:g} the accountant's epsilon is not "
                         f"validated as an upper bound")


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


def accountant_of(name: str) -> str | None:
    """The short name of the accountant a ledger entry names (None if it names no known one)."""
    return next((short for short, full in ACCOUNTANT_NAMES.items() if full == name), None)


def _opacus_dir() -> Path:
    package = importlib.util.find_spec("opacus")
    if package is None or not package.submodule_search_locations:
        raise ImportError("opacus is not installed")
    return Path(package.submodule_search_locations[0])


@functools.cache
def _opacus_rdp():
    """Opacus' RDP analysis module (`opacus.accountants.analysis.rdp`: math, numpy, scipy only),
    loaded from its file on first use. Importing it through the package would first run
    `opacus/__init__`, which loads the privacy engine, torch.distributed and scipy.stats: about a
    second that every partner message that does not train would pay for nothing."""
    path = _opacus_dir() / "accountants" / "analysis" / "rdp.py"
    spec = importlib.util.spec_from_file_location("fedcredit_opacus_rdp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _UnusedRdpAccountant:
    """Stands in for `opacus.accountants.rdp.RDPAccountant`, which the PRV analysis imports (for
    `compute_safe_domain_size`, which `prv_epsilon` replaces with the same computation on the
    memoised RDP) and which would load the privacy engine and torch."""

    def __init__(self) -> None:
        raise NotImplementedError("fedcredit sizes the PRV domain itself (_prv_domain_size)")


@functools.cache
def _opacus_prv():
    """Opacus' PRV analysis package (`opacus.accountants.analysis.prv`: numpy and scipy only),
    loaded from its files under a private package name, like `_opacus_rdp`: its relative
    imports resolve to the file-loaded RDP analysis and to `_UnusedRdpAccountant`."""
    root, base = _opacus_dir() / "accountants" / "analysis" / "prv", "fedcredit_opacus"
    for name in (base, f"{base}.accountants", f"{base}.accountants.analysis"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
    sys.modules.setdefault(f"{base}.accountants.analysis.rdp", _opacus_rdp())
    if f"{base}.accountants.rdp" not in sys.modules:
        shim = types.ModuleType(f"{base}.accountants.rdp")
        shim.RDPAccountant = _UnusedRdpAccountant
        sys.modules[shim.__name__] = shim
    name = f"{base}.accountants.analysis.prv"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
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


Merged = tuple[tuple[float, float, int], ...]


def _merged(events: Iterable[SubsampledGaussianEvent]) -> Merged | None:
    """(q, σ, steps) of each distinct mechanism that ran steps, sorted (composition commutes);
    None when one of them adds no noise (ε = inf)."""
    steps_by_mechanism: dict[tuple[float, float], int] = {}
    for event in events:
        if event.steps == 0:
            continue
        if event.noise_multiplier == 0.0:
            return None
        key = (event.sample_rate, event.noise_multiplier)
        steps_by_mechanism[key] = steps_by_mechanism.get(key, 0) + event.steps
    return tuple(sorted((q, sigma, n) for (q, sigma), n in steps_by_mechanism.items()))


def prv_epsilon(events: Iterable[SubsampledGaussianEvent], *, delta: float) -> float:
    """ε at `delta` of all `events` composed by Opacus' PRV accountant, at its upper bound
    `eps_upper` (estimate + `PRV_EPS_ERROR`, δ error `PRV_DELTA_ERROR`·δ): exactly what
    `opacus.accountants.PRVAccountant().get_epsilon(delta)` returns for the same steps. inf
    when it cannot be computed within `PRV_MAX_POINTS` (the `prv` accountant then uses RDP)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    merged = _merged(events)
    if merged is None:
        return math.inf
    return _prv_epsilon(merged, float(delta)) if merged else 0.0


def _prv_domain_size(merged: Merged, delta_error: float) -> float:
    """Half-width L of the PRV domain: Opacus' `compute_safe_domain_size` (Gopi et al. remark
    5.6), on the memoised per-step RDP at Opacus' default orders."""
    import numpy as np

    analysis, orders = _opacus_rdp(), list(OPACUS_ALPHAS)
    total = sum(n for _, _, n in merged)
    per_step = [np.array(_rdp_per_step(q, sigma, OPACUS_ALPHAS)) for q, sigma, _ in merged]
    composed = sum(n * rdp for (_, _, n), rdp in zip(merged, per_step, strict=True))
    bound = analysis.get_privacy_spent(orders=orders, rdp=composed, delta=delta_error / 4)[0]
    for rdp in per_step:
        bound = max(bound, analysis.get_privacy_spent(orders=orders, rdp=rdp,
                                                      delta=delta_error / (8 * total))[0])
    return float(max(bound, PRV_EPS_ERROR) + 3)


@functools.lru_cache(maxsize=1024)
def _prv_epsilon(merged: Merged, delta: float) -> float:
    """Opacus' `PRVAccountant._get_dprv` and `get_epsilon`, step by step (memoised)."""
    import numpy as np

    prv = _opacus_prv()
    delta_error = delta * PRV_DELTA_ERROR
    total = sum(n for _, _, n in merged)
    mesh = PRV_EPS_ERROR / math.sqrt(total * math.log(12 / delta_error) / 2)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # log(1 - q) = -inf at q = 1; scipy's quad accuracy; Opacus' "optimal order is the
        # largest alpha" while sizing the domain (a larger domain, only slower)
        warnings.simplefilter("ignore")
        half_width = _prv_domain_size(merged, delta_error)
        if not math.isfinite(half_width) or 2 * half_width / mesh > PRV_MAX_POINTS:
            return math.inf
        try:
            domain = prv.Domain.create_aligned(-half_width, half_width, mesh)
            dprvs = [prv.discretize(prv.TruncatedPrivacyRandomVariable(
                prv.PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max), domain)
                for q, sigma, _ in merged]
            composed = prv.compose_heterogeneous(dprvs=dprvs,
                                                 num_self_compositions=[n for _, _, n in merged])
            upper = float(composed.compute_epsilon(delta, delta_error, PRV_EPS_ERROR)[2])
        except (RuntimeError, ValueError, FloatingPointError):
            return math.inf
    return max(upper, 0.0) if not math.isnan(upper) else math.inf


def composed_epsilon(events: Iterable[SubsampledGaussianEvent], *, delta: float,
                     accountant: str = ACCOUNTANT, conversion: str = CONVERSION) -> float:
    """ε at `delta` of all `events` composed by the named accountant (`ACCOUNTANTS`): `rdp`, or
    `prv` = min(RDP ε, PRV upper ε), both valid upper bounds."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    events = list(events)
    by_rdp = rdp_epsilon(events, delta=delta, conversion=conversion)
    if accountant == "rdp" or by_rdp == 0.0 or math.isinf(by_rdp):
        return by_rdp
    return min(by_rdp, prv_epsilon(events, delta=delta))


def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sample_rate: float,
                               steps: int, prior: Sequence[SubsampledGaussianEvent] = (),
                               accountant: str = ACCOUNTANT, conversion: str = CONVERSION,
                               tolerance: float = 1e-3) -> float:
    """Smallest σ (within `tolerance`) such that the `prior` events, then `steps` steps at rate q
    and noise multiplier σ, compose to at most `target_epsilon` under `accountant`.

    `rdp`: bisection, σ = 1, 2, 4, ... until the target is met, then halve [low, high] until it
    is narrower than `tolerance`. `prv`: its ε is at most RDP's, so the RDP σ meets the target;
    the search steps down from it by 10% until the target is missed, then probes either side of
    the secant's root until [low, high] is narrower than `tolerance` (4-6 PRV evaluations).
    Either way returns `high`, which always meets the target. DP-SGD calls it with its
    (q, steps), a one-shot release with q = 1 and one step.
    """
    if not target_epsilon > 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    return _calibrate(float(target_epsilon), float(delta), float(sample_rate), int(steps),
                      tuple(prior), accountant, conversion, float(tolerance))


@functools.lru_cache(maxsize=256)
def _calibrate(target_epsilon: float, delta: float, sample_rate: float, steps: int,
               prior: tuple[SubsampledGaussianEvent, ...], accountant: str, conversion: str,
               tolerance: float) -> float:
    """`calibrate_noise_multiplier` on checked arguments (a pure function, so memoised: a
    partner's count and plan, a restarted partner's, the plan check's)."""
    if prior:
        already = composed_epsilon(prior, delta=delta, accountant=accountant,
                                   conversion=conversion)
        if already >= target_epsilon:
            raise ValueError(f"earlier events already spend epsilon {already:.4g} >= "
                             f"{target_epsilon}: no budget left for this mechanism")

    def spent_by(by: str):
        def spent(noise_multiplier: float) -> float:
            event = SubsampledGaussianEvent(sample_rate, noise_multiplier, steps)
            return composed_epsilon([*prior, event], delta=delta, accountant=by,
                                    conversion=conversion)
        return spent

    unreachable = (f"cannot reach epsilon {target_epsilon} with {steps} steps at sample rate "
                   f"{sample_rate}" + (" after the earlier events" if prior else "")
                   + f" (noise multiplier would exceed {MAX_NOISE_MULTIPLIER:g})")
    if accountant == "rdp":
        return _bisect(spent_by("rdp"), target_epsilon, tolerance, unreachable)
    try:
        start = _bisect(spent_by("rdp"), target_epsilon, tolerance, unreachable)
    except ValueError:
        if not prior or rdp_epsilon(prior, delta=delta, conversion=conversion) < target_epsilon:
            raise  # out of reach: RDP's σ at MAX_NOISE_MULTIPLIER is PRV's within a few %
        start = None  # the prior alone exceeds the target under RDP, not under PRV
    if start is None:
        start = _bisect(spent_by(accountant), target_epsilon, tolerance, unreachable)
    return _search_below(spent_by(accountant), target_epsilon, tolerance, start)


def _bisect(spent, target: float, tolerance: float, unreachable: str) -> float:
    """Smallest σ within `tolerance` with spent(σ) <= target, by doubling then bisection."""
    low, high = 0.0, 1.0
    while spent(high) > target:
        low, high = high, high * 2.0
        if high > MAX_NOISE_MULTIPLIER:
            raise ValueError(unreachable)
    while high - low > tolerance:
        mid = (low + high) / 2.0
        low, high = (mid, high) if spent(mid) > target else (low, mid)
    return high


PRV_SEARCH_STEP = 0.9
"""The `prv` calibration steps down from the RDP σ by this factor until the target is missed."""


def _search_below(spent, target: float, tolerance: float, high: float) -> float:
    """Smallest σ within `tolerance` with spent(σ) <= target, given that spent(high) <= target:
    a bracket found by stepping down, then probes just either side of the secant's root (each
    probe shrinks [low, high] by at least tolerance/4; bisection after 12 probes)."""
    f_high = spent(high) - target
    low = high
    while True:
        low *= PRV_SEARCH_STEP
        if low < tolerance:
            return _bisect_between(spent, target, tolerance, 0.0, high)
        f_low = spent(low) - target
        if f_low > 0:
            break
        high, f_high = low, f_low
    above = True
    probes = 0
    while high - low > tolerance:
        probes += 1
        if probes <= 12 and math.isfinite(f_low) and f_low != f_high:
            root = high - f_high * (high - low) / (f_high - f_low)
            probe = root + (tolerance / 2 if above else -tolerance / 2)
            probe = min(max(probe, low + tolerance / 4), high - tolerance / 4)
        else:
            probe = (low + high) / 2.0
        value = spent(probe) - target
        if value > 0:
            low, f_low, above = probe, value, True
        else:
            high, f_high, above = probe, value, False
    return high


def _bisect_between(spent, target: float, tolerance: float, low: float, high: float) -> float:
    while high - low > tolerance:
        mid = (low + high) / 2.0
        low, high = (mid, high) if spent(mid) > target else (low, mid)
    return high
