"""How many optimiser steps an epoch takes: plain arithmetic, shared by training and the privacy
plans (which must count steps without loading torch)."""

from __future__ import annotations

import math


def steps_per_epoch(num_rows: int, *, batch_size: int | None = None,
                    sample_rate: float | None = None) -> int:
    """Steps in one (expected) pass over `num_rows` rows."""
    if sample_rate is not None:
        return max(1, round(1.0 / sample_rate))
    assert batch_size is not None
    return max(1, math.ceil(num_rows / batch_size))


def num_steps(epochs: float, per_epoch: int) -> int:
    """Total steps for a possibly fractional number of epochs (at least one)."""
    return max(1, round(epochs * per_epoch))
