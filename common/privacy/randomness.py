"""Where a partner's Poisson sampling and DP noise get their seed: one policy for every mode."""

from __future__ import annotations

import secrets


def noise_seed(*, deployed: bool, simulated: int) -> int:
    """The seed of a partner's sampling and noise.

    A deployed partner draws it from the operating system: the coordinator sets the run seed, and
    whoever knows the seed can recompute the noise and subtract it from a release. A simulated
    partner uses `simulated` (derived from the run seed), so a simulation is reproducible; the
    analyst holds all the data there anyway.
    """
    return secrets.randbits(63) if deployed else simulated
