"""Ed25519 keys and signatures, SHA-256 hashes: small verb-named functions over bytes.

Library exceptions are turned into `CryptoError` at this boundary. No primitive is home-made:
signing and verification are pyca/cryptography's Ed25519.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import CryptoError

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"



def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """'sha256:<hex>' of the raw public key: how ledgers and receipts name their signer."""
    return "sha256:" + hashlib.sha256(public_key_bytes(key)).hexdigest()


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature of `message`."""
    return key.sign(message)


def verify(key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise CryptoError unless `signature` is `key`'s signature of `message`."""
    try:
        key.verify(signature, message)
    except InvalidSignature as exc:
        raise CryptoError("signature does not verify") from exc


def write_key_pair(key: Ed25519PrivateKey, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (PKCS#8 PEM, mode 0600) and `<name>.pub` (PEM) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{name}{PRIVATE_SUFFIX}"
    public_path = out_dir / f"{name}{PUBLIC_SUFFIX}"
    if private_path.exists():
        raise CryptoError(f"{private_path} exists; refusing to overwrite a private key")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CryptoError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CryptoError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise CryptoError(f"cannot read public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CryptoError(f"{path} is not an Ed25519 public key")
    return key


def load_public_keys(directory: Path) -> dict[str, tuple[str, Ed25519PublicKey]]:
    """Every `<name>.pub` in `directory`, indexed by fingerprint: {fingerprint: (name, key)}."""
    keys = {}
    for path in sorted(Path(directory).glob(f"*{PUBLIC_SUFFIX}")):
        key = load_public_key(path)
        keys[fingerprint(key)] = (path.stem, key)
    return keys


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def hash_weights(weights: dict[str, np.ndarray]) -> str:
    """SHA-256 over a model's arrays in key order (name, dtype, shape, little-endian bytes)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        array = np.ascontiguousarray(np.asarray(weights[name]))
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{name}|{little.dtype.str}|{list(little.shape)}|".encode())
        digest.update(little.tobytes())
    return digest.hexdigest()
