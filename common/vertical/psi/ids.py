"""PSI inputs: customer IDs, the run id that separates one run's hashes from another's."""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from typing import Any

from common.errors import PsiError


def customer_id(row: int) -> str:
    """The bundled scenario's customer ID of row `row`: 'cust-000042'."""
    return f"cust-{row:06d}"


def sample_known_ids(n_rows: int, *, seed: int,
                     fraction_range: tuple[float, float] = (0.85, 0.95)) -> list[str]:
    """IDs of a random `fraction_range` share of customers 0..n_rows-1, in row order (seeded)."""
    low, high = fraction_range
    if not 0 < low <= high <= 1:
        raise PsiError(f"fraction_range must satisfy 0 < low <= high <= 1, got {fraction_range}")
    rng = random.Random(seed)
    count = round(rng.uniform(low, high) * n_rows)
    return [customer_id(row) for row in sorted(rng.sample(range(n_rows), count))]


def new_run_id() -> str:
    """A fresh random run id (hex); it separates the hashes of one run from any other's."""
    return secrets.token_hex(16)


def validate_ids(ids: Sequence[Any], *, party: str) -> list[str]:
    """`ids` as a list; PsiError if it is empty or holds a non-str, empty or repeated ID."""
    if isinstance(ids, str | bytes):
        raise PsiError(f"{party}: ids must be a sequence of strings, got one {type(ids).__name__}")
    ids = list(ids)
    if not ids:
        raise PsiError(f"{party}: the ID list is empty; PSI needs at least one customer ID")
    seen: dict[str, int] = {}
    for position, value in enumerate(ids):
        if not isinstance(value, str):
            raise PsiError(f"{party}: ID at position {position} is a {type(value).__name__}, "
                           "not a str; convert IDs to strings first")
        if not value:
            raise PsiError(f"{party}: ID at position {position} is the empty string")
        if value in seen:
            raise PsiError(f"{party}: duplicate ID at positions {seen[value]} and {position}; "
                           "each customer must appear once")
        seen[value] = position
    return ids


def check_run_id(run_id: str) -> bytes:
    """`run_id` encoded for hashing; PsiError unless it is a non-empty str of <= 65535 bytes."""
    if not isinstance(run_id, str) or not run_id:
        raise PsiError(f"run_id must be a non-empty str, got {run_id!r}")
    encoded = run_id.encode()
    if len(encoded) > 0xFFFF:
        raise PsiError("run_id is longer than 65535 bytes")
    return encoded

