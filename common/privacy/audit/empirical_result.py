"""Signed result documents an auditor's report reads: an empirical-audit result (`fedcredit
audit empirical --out --signing-key`) and a replay result (`fedcredit audit replay --out
--signing-key`, `common.privacy.audit.replay.REPLAY`). Each carries its kind and format number,
the fedcredit version, a UTC timestamp and the signer's key fingerprint beside its content, signed
with Ed25519 like a ledger entry; read back and verified for `audit.html` by one implementation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import AuditInputError, CryptoError
from common.privacy.audit.empirical import EmpiricalAudit, reading

RESULT_KIND = "fedcredit-empirical-audit"
RESULT_FORMAT = 1
SIGNED_FIELDS = ("kind", "format", "fedcredit_version", "created_utc", "parameters", "result",
                 "reading", "signer")
"""Every field of a signed result but `signature`; all of them are signed."""


@dataclass(frozen=True)
class SignedKind:
    """One kind of signed result document: its `kind` string, format number, every field but
    `signature` (all signed), and how messages name it."""

    kind: str
    format: int
    fields: tuple[str, ...]
    label: str

    @property
    def a_label(self) -> str:
        return ("an " if self.label[:1] in "aeiou" else "a ") + self.label


EMPIRICAL = SignedKind(RESULT_KIND, RESULT_FORMAT, SIGNED_FIELDS, "empirical-audit result")
HEADER_FIELDS = ("kind", "format", "fedcredit_version", "created_utc", "signer")
"""The fields `sign_document` adds to every kind's content."""


def _fedcredit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedcredit")
    except PackageNotFoundError:
        return "unknown"


def sign_document(spec: SignedKind, key, content: dict[str, Any]) -> dict[str, Any]:
    """A signed document of kind `spec`: `content` (its fields but the header) plus kind,
    format, fedcredit version, UTC timestamp and the signer's key fingerprint, with an Ed25519
    signature (base64) of `key` over the canonical JSON of all of them
    (`common.privacy.ledger.sign_entry`)."""
    from common.privacy.crypto import fingerprint
    from common.privacy.ledger import sign_entry, utc_now

    body = {"kind": spec.kind, "format": spec.format,
            "fedcredit_version": _fedcredit_version(), "created_utc": utc_now(), **content,
            "signer": fingerprint(key.public_key())}
    if set(body) != set(spec.fields):
        raise ValueError(f"{spec.a_label} has the fields {sorted(spec.fields)}, not "
                         f"{sorted(body)}")
    return sign_entry(json.loads(json.dumps(body, allow_nan=False)), key)


def sign_result(result: EmpiricalAudit, key, parameters: dict[str, Any]) -> dict[str, Any]:
    """The signed empirical-audit result: the audit's fields, its reading and the command's
    `parameters` (`sign_document`)."""
    return sign_document(EMPIRICAL, key, {"parameters": parameters, "result": result.to_dict(),
                                          "reading": reading(result)})


def write_result(path: Path, document: dict[str, Any]) -> None:
    """Write a signed result as indented JSON (its signature covers the canonical encoding, so
    the layout of the file does not matter)."""
    Path(path).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n",
                          encoding="utf-8")


def load_result(path: Path, spec: SignedKind = EMPIRICAL) -> dict[str, Any]:
    """Read a result document; AuditInputError when it is unreadable or not a JSON object.
    Nothing in it is trusted before `verify_result`."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AuditInputError(f"{path}: cannot read {spec.a_label} ({exc})") from exc
    if not isinstance(document, dict):
        raise AuditInputError(f"{path}: not {spec.a_label} (not a JSON object)")
    return document


def verify_result(document: dict[str, Any], public_key, spec: SignedKind = EMPIRICAL) -> None:
    """Raise CryptoError unless `document` is a complete signed document of kind `spec` whose
    signature verifies under `public_key`: any changed, added or removed field fails."""
    from common.privacy.crypto import fingerprint
    from common.privacy.ledger import verify_entry_signature

    if document.get("kind") != spec.kind or document.get("format") != spec.format:
        raise CryptoError(f"not a signed {spec.label} (kind {document.get('kind')!r}, "
                          f"format {document.get('format')!r})")
    fields = set(document) - {"signature"}
    if fields != set(spec.fields) or "signature" not in document:
        missing = sorted(set(spec.fields) - fields) + ([] if "signature" in document
                                                       else ["signature"])
        extra = sorted(fields - set(spec.fields))
        raise CryptoError(f"signed result has missing fields {missing} or unknown ones {extra}")
    expected = fingerprint(public_key)
    if document.get("signer") != expected:
        raise CryptoError(f"signed by {document.get('signer')!r}, not by the given key "
                          f"{expected}")
    try:
        verify_entry_signature(document, public_key)
    except CryptoError:
        raise
    except ValueError as exc:  # canonical encoding of a forged NaN etc.
        raise CryptoError(f"signature does not verify ({exc})") from exc


@dataclass(frozen=True)
class CheckedResult:
    """A result file as an auditor's report shows it: its (untrusted) document and whether its
    signature verified. `status`: "verified", "invalid" (signature, signer or fields do not
    verify: tampered, or signed by another key) or "unverified" (no public key to check it)."""

    path: str
    document: dict[str, Any]
    status: str
    detail: str
    key_name: str | None = None

    @property
    def verified(self) -> bool:
        return self.status == "verified"


def check_result(path: Path, *, key=None, key_name: str | None = None,
                 known_keys: dict[str, tuple[str, Any]] | None = None,
                 spec: SignedKind = EMPIRICAL) -> CheckedResult:
    """Load and verify one result file of kind `spec`: under `key` when given, else under the
    key of `known_keys` ({fingerprint: (name, key)}, e.g. `load_public_keys(--keys)`) whose
    fingerprint the result names. Never raises for a bad signature (that is the status);
    AuditInputError when the file cannot be read as JSON."""
    document = load_result(path, spec)
    signer = document.get("signer")
    if key is None and known_keys and isinstance(signer, str) and signer in known_keys:
        key_name, key = known_keys[signer]
    if key is None:
        return CheckedResult(str(path), document, "unverified",
                             f"no public key given for its signer {signer!r}", None)
    try:
        verify_result(document, key, spec)
    except CryptoError as exc:
        return CheckedResult(str(path), document, "invalid", str(exc), key_name)
    return CheckedResult(str(path), document, "verified",
                         f"signature verifies under {key_name or 'the given key'}", key_name)
