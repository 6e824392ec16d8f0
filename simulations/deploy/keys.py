"""Key custody of a real federation: each partner makes its own keys on its own machine
(`fedcredit keys new`) and hands the coordinator only their public halves, which
`fedcredit federation init` reads here.

Whoever holds a partner's ledger key can sign as that partner: its ledger, its odometer, its
channel keys and vouchers (vertical), and derive its secret train/test split. So the coordinator
must never hold one, and `federation init` refuses anything but a public key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import CryptoError
from common.privacy.crypto import (
    fingerprint,
    generate_signing_key,
    sha256_hex,
    write_key_pair,
)
from simulations.deploy.pki import write_supernode_auth_keys

SUPERNODE_AUTH = "supernode-auth"
"""A partner's SuperNode authentication key pair: `supernode-auth` and `supernode-auth.pub`."""
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Flower 1.41 registers EC keys on these curves (flwr.supercore.primitives.asymmetric).
_NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def new_partner_keys(partner: str, out: Path, *, supernode_auth: bool) -> list[Path]:
    """A party's own keys, made on its own machine: `<partner>.key`/`.pub` (Ed25519 ledger key)
    and, with `supernode_auth`, its SuperNode authentication pair. Refuses (CryptoError) before
    writing anything if any of them exists; returns the files written."""
    planned = [out / f"{partner}.key", out / f"{partner}.pub"]
    if supernode_auth:
        planned += [out / SUPERNODE_AUTH, out / f"{SUPERNODE_AUTH}.pub"]
    existing = [p for p in planned if p.exists()]
    if existing:
        raise CryptoError(f"{existing[0]} exists; refusing to overwrite a key")
    private, public = write_key_pair(generate_signing_key(), out, partner)
    if not supernode_auth:
        return [private, public]
    write_supernode_auth_keys(out / SUPERNODE_AUTH, out / f"{SUPERNODE_AUTH}.pub")
    return [private, public, out / SUPERNODE_AUTH, out / f"{SUPERNODE_AUTH}.pub"]


@dataclass(frozen=True)
class PartnerPublicKeys:
    """What a partner hands the coordinator: the public halves of its ledger key and of its
    SuperNode authentication key."""

    ledger: Ed25519PublicKey
    supernode: ec.EllipticCurvePublicKey

    def ledger_pem(self) -> bytes:
        """`<partner>.pub` as `fedcredit keys new` writes it (PEM)."""
        return self.ledger.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def supernode_openssh(self) -> bytes:
        """`supernode-auth.pub` as `flwr supernode register` reads it (OpenSSH)."""
        return self.supernode.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )

    def fingerprints(self) -> str:
        """Both keys' fingerprints, as `fedcredit keys new` printed them to the partner."""
        return (
            f"ledger key {fingerprint(self.ledger)}, SuperNode key "
            f"{supernode_fingerprint(self.supernode)}"
        )


def supernode_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """'sha256:<hex>' of a SuperNode public key's DER encoding."""
    return "sha256:" + sha256_hex(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def public_key_lines(written: Sequence[Path]) -> list[str]:
    """What `fedcredit keys new` tells its owner about the keys it wrote: which files never
    leave the machine, which it hands over, and each public key's fingerprint."""
    lines = []
    for path in written:
        if path.suffix != ".pub":
            lines.append(f"private key: {path} (mode 0600: it never leaves this machine)")
        elif path.name == f"{SUPERNODE_AUTH}.pub":
            key = supernode_fingerprint(load_supernode_public_key(path))
            lines.append(f"public key:  {path} (hand it over; fingerprint {key})")
        else:
            key = fingerprint(load_ledger_public_key(path))
            lines.append(f"public key:  {path} (hand it over; fingerprint {key})")
    return [*lines, "Confirm each fingerprint out of band with whoever registers the key."]


def _read_public(path: Path, public_file: str) -> bytes:
    """The bytes of a public key file; ValueError (naming the file) if it is missing,
    unreadable or holds a private key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise ValueError(
            f"{path} holds a PRIVATE key: pass the public one ({public_file}); a "
            "private key never leaves its owner's machine"
        )
    return data


def load_ledger_public_key(path: Path) -> Ed25519PublicKey:
    """A partner's Ed25519 ledger public key (`<partner>.pub`, PEM); ValueError otherwise."""
    data = _read_public(path, "<partner>.pub")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"{path} is not a PEM public key (`fedcredit keys new` writes <partner>.pub)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(
            f"{path} is not an Ed25519 public key (`fedcredit keys new` writes <partner>.pub)"
        )
    return key


def load_supernode_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A partner's SuperNode authentication public key (OpenSSH, EC on a NIST curve, as
    `flwr supernode register` accepts); ValueError otherwise."""
    data = _read_public(path, f"{SUPERNODE_AUTH}.pub")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"{path} is not an OpenSSH public key (`fedcredit keys new "
            "--supernode-auth` writes supernode-auth.pub)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _NIST_CURVES):
        raise ValueError(
            f"{path} is not an EC public key on a NIST curve, which Flower's "
            "SuperNode authentication needs (`fedcredit keys new --supernode-auth` "
            "writes one)"
        )
    return key


def parse_key_options(values: Sequence[str], option: str) -> dict[str, Path]:
    """`NAME=PATH` options (in order) as {name: path}; ValueError on a bad or repeated name."""
    paths: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name = name.strip()
        if not sep or not path.strip():
            raise ValueError(f"{option} takes NAME=PATH, got {value!r}")
        if not NAME.match(name) or name == "coordinator":
            raise ValueError(
                f"{option}: partner names are lower-case [a-z0-9_-] (at most 32) "
                f"and not 'coordinator'; got {name!r}"
            )
        if name in paths:
            raise ValueError(f"{option} names {name!r} twice")
        paths[name] = Path(path.strip())
    return paths


def read_partner_keys(
    ledger: Sequence[str], supernode: Sequence[str]
) -> dict[str, PartnerPublicKeys]:
    """The partners' public keys from `--partner-key NAME=PATH` and `--supernode-key NAME=PATH`
    (each partner needs both), in the order of `--partner-key`; ValueError naming the problem."""
    ledger_paths = parse_key_options(ledger, "--partner-key")
    supernode_paths = parse_key_options(supernode, "--supernode-key")
    if not ledger_paths:
        raise ValueError(
            "at least one partner is needed: pass --partner-key NAME=PATH and "
            "--supernode-key NAME=PATH for each, the public keys it made with "
            "`fedcredit keys new --supernode-auth`"
        )
    for have, lack, option in (
        (ledger_paths, supernode_paths, "--supernode-key"),
        (supernode_paths, ledger_paths, "--partner-key"),
    ):
        missing = [name for name in have if name not in lack]
        if missing:
            raise ValueError(
                f"no {option} for {', '.join(missing)}: every partner hands over "
                "both its ledger and its SuperNode public key"
            )
    keys = {}
    for name in ledger_paths:
        try:
            ledger_key = load_ledger_public_key(ledger_paths[name])
        except ValueError as exc:
            raise ValueError(f"--partner-key {name}: {exc}") from None
        try:
            supernode_key = load_supernode_public_key(supernode_paths[name])
        except ValueError as exc:
            raise ValueError(f"--supernode-key {name}: {exc}") from None
        keys[name] = PartnerPublicKeys(ledger_key, supernode_key)
    for attribute in ("ledger_pem", "supernode_openssh"):
        seen: dict[bytes, str] = {}
        for name, key in keys.items():
            raw = getattr(key, attribute)()
            if raw in seen:
                raise ValueError(
                    f"{seen[raw]} and {name} hand over the same public key: each "
                    "partner makes its own"
                )
            seen[raw] = name
    return keys
