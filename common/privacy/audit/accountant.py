"""The auditor's recomputation of ε: Google's `dp_accounting`, not the code that wrote the ledger.

Both its RDP accountant (the same RDP-to-(ε, δ) conversion as the ledger's claim, so an honest
claim matches within 1%) and its PLD accountant (a tighter ε, reported for information).

Numerical agreement with the ledger's claim (`common.privacy.accounting.rdp_epsilon`: Opacus' RDP
analysis, Balle et al. 2020 conversion, the same bound as `dp_accounting.rdp.compute_epsilon`),
δ = 1e-5, grid q 0.04-0.08, σ 1.2-9, steps 1-1500:
- dp_accounting's DEFAULT orders differ by up to +29% (q=0.04 σ=4 1 step: 0.1068 vs 0.0829;
  σ=9 100 steps: 0.1674 vs 0.1603): at small ε the best order lies between 63 and 128, where
  the defaults have none. Honest ledgers would be flagged, so the audit uses the union of both
  order lists (`AUDIT_RDP_ORDERS`); the conversion bound holds at every order, so extra orders
  only tighten the recomputed ε.
- With `AUDIT_RDP_ORDERS` the worst case is +0.64% (q=0.08 σ=1.2 1000 steps, ε≈14.9); typical
  cases agree to 4 digits (q=0.04 σ=2 1500 steps: 3.9096 both). The residue comes from
  fractional orders (integer orders agree to all digits; at α=2.3 dp_accounting's RDP is ~1%
  above Opacus'). Beyond the grid (σ < 1, ε > 25) it exceeds the 1% tolerance, e.g. +8% at
  q=0.08 σ=0.7 1500 steps (ε≈58), where an honest claim would be flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

from common.privacy.accounting import RDP_ORDERS

AUDIT_RDP_ORDERS: tuple[float, ...] = tuple(sorted({float(o) for o in DEFAULT_RDP_ORDERS}
                                                   | {float(o) for o in RDP_ORDERS}))
PLD_DISCRETIZATION = 1e-3
MechanismRound = tuple[float, float, int]
"""(q, σ, steps) of one ledger entry; a budget refusal logs (and composes) zero steps."""


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class IndependentAccountant:
    """ε of composed DP-SGD rounds from Google's dp_accounting: RDP and PLD, per ledger entry.

    Results are remembered per instance for a sequence of rounds, so verifying the same ledger
    again (a report after a verify, many tampered copies in a test) costs nothing.
    """

    def __init__(self, *, rdp_orders: Sequence[float] = AUDIT_RDP_ORDERS,
                 pld_discretization: float = PLD_DISCRETIZATION) -> None:
        if not pld_discretization > 0:
            raise ValueError(f"pld_discretization must be > 0, got {pld_discretization}")
        self.rdp_orders = tuple(float(o) for o in rdp_orders)
        self.pld_discretization = float(pld_discretization)
        self.library = f"dp-accounting {_package_version('dp-accounting')}"
        self._memo: dict[tuple[tuple[MechanismRound, ...], tuple[float, ...]],
                         list[tuple[float, float]]] = {}

    def describe(self) -> dict[str, Any]:
        """What recomputes ε, for the report."""
        return {"library": self.library,
                "rdp": f"dp_accounting.rdp.RdpAccountant ({len(self.rdp_orders)} orders, "
                       f"{self.rdp_orders[0]:g}..{self.rdp_orders[-1]:g})",
                "pld": f"dp_accounting.pld.PLDAccountant (value discretization "
                       f"{self.pld_discretization:g}, pessimistic, add-or-remove-one neighbours)",
                "event": "SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), "
                         "steps) per round, composed over every trained round"}

    @staticmethod
    def event(sample_rate: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
        """The dp_accounting event of one round: `steps` Poisson-subsampled Gaussian steps."""
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)

    def cumulative(self, rounds: Sequence[MechanismRound],
                   deltas: Sequence[float]) -> list[tuple[float, float]]:
        """(RDP ε, PLD ε) after each round, every round before it composed, at its δ."""
        if len(rounds) != len(deltas):
            raise ValueError(f"{len(rounds)} rounds but {len(deltas)} deltas")
        key = (tuple(rounds), tuple(deltas))
        if key not in self._memo:
            rdp_accountant = rdp.RdpAccountant(orders=list(self.rdp_orders))
            pld_accountant = pld.PLDAccountant(
                value_discretization_interval=self.pld_discretization)
            values = []
            # dp_accounting warns (through absl) when a fractional order's series does not
            # converge (large σ with q near 0.5) and drops that order: ε is then minimised over
            # fewer orders, never understated. Keep those warnings out of the auditor's output.
            absl_logger, level = logging.getLogger("absl"), logging.getLogger("absl").level
            absl_logger.setLevel(logging.ERROR)
            try:
                for (sample_rate, noise_multiplier, steps), delta in zip(rounds, deltas,
                                                                         strict=True):
                    if steps > 0:
                        event = self.event(sample_rate, noise_multiplier, steps)
                        rdp_accountant.compose(event)
                        pld_accountant.compose(event)
                    values.append((float(rdp_accountant.get_epsilon(delta)),
                                   float(pld_accountant.get_epsilon(delta))))
            finally:
                absl_logger.setLevel(level)
            self._memo[key] = values
        return list(self._memo[key])
