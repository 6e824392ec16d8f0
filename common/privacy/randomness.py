"""Where a partner's Poisson sampling, DP noise and train/test split get their randomness: one
policy for every mode."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

SPLIT_KEY_INFO = b"fedcredit train/test split key v1"


def noise_seed(*, deployed: bool, simulated: int) -> int:
    """The seed of a partner's sampling and noise.

    A deployed partner draws it from the operating system: the coordinator sets the run seed, and
    whoever knows the seed can recompute the noise and subtract it from a release. A simulated
    partner uses `simulated` (derived from the run seed), so a simulation is reproducible; the
    analyst holds all the data there anyway.
    """
    return secrets.randbits(63) if deployed else simulated


def split_key(*, partner: str, signing_key: str | Path = "", seed: int = 0,
              deployed: bool = False) -> bytes:
    """The secret key of a partner's train/test split (`common.data.tables.record_in_test`) and
    of its records' digests, by which its lifetime odometer recognises its data set
    (`common.data.tables.record_digest`).

    A partner with a signing key derives it from that key with HKDF, so only the partner can
    compute which of its records are test rows, and the split is stable across runs and restarts
    whatever seed the coordinator sets. A simulated partner without one derives it from the run
    seed and its name, so a simulation is reproducible and seeds vary the split. A deployed
    partner must have a signing key: the coordinator sets the seed.
    """
    if deployed and not signing_key:
        raise ValueError("a deployed partner's split key derives from its signing key, and none "
                         "is configured (node config key 'signing-key')")
    if signing_key:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        from common.privacy.crypto import load_private_key

        secret = load_private_key(Path(signing_key)).private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=SPLIT_KEY_INFO).derive(secret)
    return hashlib.sha256(SPLIT_KEY_INFO + f"|{seed}|{partner}".encode()).digest()
