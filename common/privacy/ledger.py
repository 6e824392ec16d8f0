"""Signed, hash-chained JSON Lines logs: a partner's privacy ledger and the coordinator's receipts.

Every line is one entry: a JSON object whose `signature` is an Ed25519 signature (by the key named
in `key_fingerprint`) over the canonical encoding of all its other fields, and whose
`prev_entry_sha256` is the SHA-256 of the canonical encoding of the previous entry (signature
included); the first entry points to `GENESIS`. `seq` counts entries from 0. Flipping a byte,
dropping, reordering, duplicating or splicing in entries breaks a signature, the chain or `seq`.

A ledger entry records one release: the partner's noisy training-set size (event `count`, a Gaussian
mechanism logged as q = 1, one step, clipping norm = sensitivity 1; once per run, before its first
round), or one round it trained in (or refused): the DP mechanism it ran (Poisson sample rate q,
noise multiplier σ, steps, clipping norm), δ, its budget and its cumulative ε with the accountant
named, the calibrated plan (including the released count ñ), plus hashes of the model it received
and the update it sent; a trained round also its `replay_commitment` (a salted, hiding commitment
to the round's seed, training rows and settings, whose opening the partner keeps: see
`common.privacy.audit.replay`). A receipt records one update the coordinator accepted, naming
the partner's ledger entry by hash. `check_log` is the one integrity check, used by the partner at
start-up and by the auditor.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import CryptoError, LedgerError
from common.privacy.accounting import ACCOUNTANT_NAME, CONVERSION, SubsampledGaussianEvent
from common.privacy.budget import COUNT_SENSITIVITY, PrivacyPlan
from common.privacy.crypto import fingerprint, sha256_hex, sign, verify

GENESIS = "0" * 64
LEDGER_KIND = "fedcredit-privacy-ledger/2"
RECEIPT_KIND = "fedcredit-receipt/1"
COUNT_EVENT = "count"
"""Event of the entry that releases the noisy training-set size."""
MECHANISM = "subsampled_gaussian"
SAMPLING = "poisson"
LEDGER_FIELDS = {"kind", "seq", "run_id", "round", "partner", "key_fingerprint", "timestamp",
                 "event", "mechanism", "delta", "epsilon_budget", "epsilon_cumulative",
                 "accountant", "conversion", "calibration", "model_received_sha256",
                 "update_sent_sha256", "refusal_reason", "prev_entry_sha256", "signature"}
LEDGER_OPTIONAL_FIELDS = {"replay_commitment"}
"""Fields a ledger entry may carry: a `train` entry's `replay_commitment` (SHA-256 hex of a
salted commitment to the round's randomness seed, training rows and settings, see
`common.replay.replay_commitment`); ledgers written before it verify without it."""
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "seq": int, "round": int, "run_id": str, "partner": str, "key_fingerprint": str,
    "timestamp": str, "prev_entry_sha256": str, "signature": str, "event": str,
    "mechanism": dict, "calibration": dict, "delta": (int, float), "epsilon_budget": (int, float),
    "epsilon_cumulative": (int, float), "ledger_entry_sha256": str, "update_sha256": str,
    "model_received_sha256": str, "refusal_reason": str, "replay_commitment": str}
RECEIPT_FIELDS = {"kind", "seq", "run_id", "round", "partner", "key_fingerprint", "timestamp",
                  "ledger_entry_sha256", "update_sha256", "prev_entry_sha256", "signature"}


def has_fields(entry: dict[str, Any], kind: str) -> bool:
    """Whether `entry` holds exactly the fields of a `kind` entry (a ledger entry may also hold
    `LEDGER_OPTIONAL_FIELDS`) and names that kind."""
    keys = set(entry)
    if kind == LEDGER_KIND:
        fits = LEDGER_FIELDS <= keys <= LEDGER_FIELDS | LEDGER_OPTIONAL_FIELDS
    else:
        fits = keys == RECEIPT_FIELDS
    return fits and entry.get("kind") == kind


def canonical_bytes(payload: dict[str, Any]) -> bytes:
    """Deterministic JSON encoding: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical encoding, signature included."""
    return sha256_hex(canonical_bytes(entry))


def utc_now() -> str:
    """ISO 8601 UTC timestamp."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sign_entry(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """`body` plus its base64 Ed25519 signature over the canonical encoding of `body`."""
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    signature = base64.b64encode(sign(key, canonical_bytes(unsigned))).decode("ascii")
    return {**unsigned, "signature": signature}


def verify_entry_signature(entry: dict[str, Any], key: Ed25519PublicKey) -> None:
    """Raise CryptoError unless the entry's signature verifies under `key`."""
    unsigned = {k: v for k, v in entry.items() if k != "signature"}
    text = str(entry.get("signature", ""))
    try:
        signature = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise CryptoError("signature is not valid base64") from exc
    if base64.b64encode(signature).decode("ascii") != text:
        # Decoders ignore unused padding bits: several strings decode to one signature.
        raise CryptoError("signature is not canonical base64 (its bytes were altered)")
    verify(key, signature, canonical_bytes(unsigned))


@dataclass(frozen=True)
class Finding:
    """One verification problem: where it is, a short code, and what is wrong."""

    path: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: [{self.code}] {self.message}"


def read_lines(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[Finding]]:
    """Parse a JSON Lines log into (line number, entry) pairs plus findings for bad lines."""
    entries, findings = [], []
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return [], [Finding(str(path), 0, "unreadable", str(exc))]
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
            canonical = canonical_bytes(entry)
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            findings.append(Finding(str(path), number, "malformed", f"not a JSON entry: {exc}"))
            continue
        if canonical != line:
            # Signatures cover the canonical encoding, so bytes that parse to the same values
            # (say 1e-05 written 1E-05) would still verify: any other encoding is tampering.
            findings.append(Finding(str(path), number, "not-canonical",
                                    "line is not the canonical encoding of its entry: its bytes "
                                    "were altered"))
        entries.append((number, entry))
    if raw and not raw.endswith(b"\n"):
        findings.append(Finding(str(path), raw.count(b"\n") + 1, "truncated",
                                "last line is incomplete (no newline): the log was cut"))
    return entries, findings


def signed_link_problems(entry: dict[str, Any], keys: dict[str, tuple[str, Ed25519PublicKey]],
                         wanted_signer: str | None, position: int,
                         previous_hash: str) -> list[tuple[str, str]]:
    """The checks every signed, chained log shares, as (code, message): a known key (named
    `wanted_signer` when given) whose signature verifies, the link to the previous entry, and
    `seq` equal to the entry's position."""
    problems: list[tuple[str, str]] = []
    signer = keys.get(entry["key_fingerprint"])
    if signer is None:
        problems.append(("unknown-key", f"signed by unknown key {entry['key_fingerprint']}"))
    else:
        name, public_key = signer
        if wanted_signer is not None and name != wanted_signer:
            problems.append(("foreign-key", f"entry of {entry['partner']!r} is signed with the "
                                            f"key of {name!r}"))
        try:
            verify_entry_signature(entry, public_key)
        except CryptoError:
            problems.append(("bad-signature", "signature does not verify: the entry was altered "
                                              "after signing or signed by another key"))
    if entry["prev_entry_sha256"] != previous_hash:
        problems.append(("broken-chain", "prev_entry_sha256 does not match the previous entry: "
                                         "an entry was removed, reordered, inserted or altered"))
    if entry["seq"] != position:
        problems.append(("seq", f"seq {entry['seq']} where {position} was expected (entries "
                                f"missing, duplicated or reordered)"))
    return problems


def check_log(path: Path, entries: list[tuple[int, dict[str, Any]]],
              keys: dict[str, tuple[str, Ed25519PublicKey]], *, kind: str,
              expected_signer: str | None = None) -> list[Finding]:
    """Integrity of a ledger or receipts log: fields, signatures, chain, seq, run, round order.

    `keys` maps fingerprint -> (name, public key). For a ledger the signing key's name must equal
    the entry's partner (or `expected_signer` when given).
    """
    fields = LEDGER_FIELDS if kind == LEDGER_KIND else RECEIPT_FIELDS
    allowed = fields | (LEDGER_OPTIONAL_FIELDS if kind == LEDGER_KIND else set())
    findings: list[Finding] = []
    previous_hash, previous_round, run_id = GENESIS, 0, None
    previous_was_count = False
    for position, (line, entry) in enumerate(entries):
        def problem(code: str, message: str, line: int = line) -> None:
            findings.append(Finding(str(path), line, code, message))

        if not has_fields(entry, kind):
            missing, extra = sorted(fields - set(entry)), sorted(set(entry) - allowed)
            problem("fields", f"not a {kind} entry (missing {missing}, unexpected {extra})")
            previous_hash = entry_hash(entry)
            continue
        mistyped = sorted(k for k in set(entry) & set(_FIELD_TYPES)
                          if not isinstance(entry[k], _FIELD_TYPES[k])
                          or isinstance(entry[k], bool))
        if mistyped:
            problem("fields", f"fields of the wrong type: {mistyped}")
            previous_hash = entry_hash(entry)
            continue
        wanted = expected_signer or (entry["partner"] if kind == LEDGER_KIND else None)
        for code, message in signed_link_problems(entry, keys, wanted, position, previous_hash):
            problem(code, message)
        if run_id is None:
            run_id = entry["run_id"]
        elif entry["run_id"] != run_id:
            problem("foreign-run", f"entry from run {entry['run_id']!r} in a log of run "
                                   f"{run_id!r} (replayed from another run)")
        if kind == LEDGER_KIND:
            is_count = entry["event"] == COUNT_EVENT
            if is_count and position != 0:
                problem("count-order", "a count entry that is not the ledger's first entry: a "
                                       "partner releases its noisy count once, before its "
                                       "first round")
            # The first round's entry shares its round with the count released before it.
            follows_count = position == 1 and previous_was_count
            if not (entry["round"] >= previous_round if follows_count
                    else entry["round"] > previous_round):
                problem("round-order", f"round {entry['round']} does not follow round "
                                       f"{previous_round}")
            previous_was_count = is_count
        previous_round = max(previous_round, int(entry["round"]))
        previous_hash = entry_hash(entry)
    return findings


def _append_durably(path: Path, line: bytes) -> None:
    """Append and fsync before anything is replied: a logged entry survives a crash."""
    with path.open("ab") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def ledger_event(entry: dict[str, Any]) -> SubsampledGaussianEvent:
    """The mechanism event an entry records (zero steps for a refusal)."""
    mechanism = entry["mechanism"]
    return SubsampledGaussianEvent(float(mechanism["sample_rate"]),
                                   float(mechanism["noise_multiplier"]), int(mechanism["steps"]),
                                   float(mechanism["clipping_norm"]))


def mechanism_fields(event: SubsampledGaussianEvent) -> dict[str, Any]:
    """An entry's `mechanism`: the event in ledger terms (inverse of `ledger_event`)."""
    return {"name": MECHANISM, "sampling": SAMPLING, "sample_rate": event.sample_rate,
            "noise_multiplier": event.noise_multiplier, "steps": int(event.steps),
            "clipping_norm": event.clipping_norm}


class SignedLog:
    """A signed, hash-chained JSON Lines log of one run: verified on open, appended durably."""

    kind = ""
    consequence = ""

    def __init__(self, path: Path, key: Ed25519PrivateKey, run_id: str, signer: str,
                 expected_signer: str | None) -> None:
        self.path, self.key, self.run_id = Path(path), key, run_id
        self.fingerprint = fingerprint(key.public_key())
        self.entries: list[dict[str, Any]] = []
        if not self.path.exists():
            return
        lines, findings = read_lines(self.path)
        findings += check_log(self.path, lines, {self.fingerprint: (signer, key.public_key())},
                              kind=self.kind, expected_signer=expected_signer)
        findings += [Finding(str(self.path), line, "foreign-run",
                             f"entry of run {e.get('run_id')!r}, this is run {run_id!r}")
                     for line, e in lines if e.get("run_id") != run_id]
        if findings:
            raise LedgerError(f"{self.path} failed verification{self.consequence}: "
                              + "; ".join(str(f) for f in findings[:5]))
        self.entries = [entry for _, entry in lines]

    @property
    def last_hash(self) -> str:
        """Hash of the last entry (GENESIS when empty)."""
        return entry_hash(self.entries[-1]) if self.entries else GENESIS

    def _append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Number, timestamp, chain, sign and durably append one entry."""
        body = {"kind": self.kind, "seq": len(self.entries), "run_id": self.run_id,
                "key_fingerprint": self.fingerprint, "timestamp": utc_now(), **fields,
                "prev_entry_sha256": self.last_hash}
        entry = sign_entry(body, self.key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _append_durably(self.path, canonical_bytes(entry) + b"\n")
        self.entries.append(entry)
        return entry


class PartnerLedger(SignedLog):
    """A partner's own ledger file: one entry per round it trains in or refuses."""

    kind = LEDGER_KIND
    consequence = "; refusing to train rather than under-count privacy spent"

    def __init__(self, path: Path, key: Ed25519PrivateKey, partner: str, run_id: str) -> None:
        self.partner = partner
        super().__init__(path, key, run_id, signer=partner, expected_signer=None)

    def events(self) -> list[SubsampledGaussianEvent]:
        """Every round's mechanism event that ran steps, in order; a round whose training
        diverged is logged as a refusal but its steps still count. The count is `count_event`."""
        return [ledger_event(e) for e in self.entries
                if e["event"] != COUNT_EVENT and int(e["mechanism"]["steps"]) > 0]

    def count_event(self) -> SubsampledGaussianEvent | None:
        """The noisy count's release, once logged (None before it)."""
        return next((ledger_event(e) for e in self.entries if e["event"] == COUNT_EVENT), None)

    def plan(self) -> PrivacyPlan | None:
        """The calibrated plan recorded in the ledger (None before the first entry)."""
        if not self.entries:
            return None
        last = self.entries[-1]
        return plan_from_calibration(last["calibration"], epsilon_budget=last["epsilon_budget"],
                                     delta=last["delta"])

    def append_count(self, *, server_round: int, plan: PrivacyPlan, epsilon_cumulative: float,
                     model_received_sha256: str) -> dict[str, Any]:
        """Sign and append the release of the noisy count (before the first round trains)."""
        return self._entry(server_round, plan, COUNT_EVENT, plan.count_event,
                           epsilon_cumulative, model_received_sha256, None, "")

    def append(self, *, server_round: int, plan: PrivacyPlan, steps: int,
               epsilon_cumulative: float, model_received_sha256: str,
               update_sent_sha256: str | None, refusal_reason: str = "",
               replay_commitment: str = "") -> dict[str, Any]:
        """Sign and append one round (trained, or refused if `refusal_reason`); a trained
        round may carry its `replay_commitment` (signed with the rest)."""
        return self._entry(server_round, plan, "refusal" if refusal_reason else "train",
                           replace(plan.round_event, steps=int(steps)), epsilon_cumulative,
                           model_received_sha256, update_sent_sha256, refusal_reason,
                           replay_commitment)

    def _entry(self, server_round: int, plan: PrivacyPlan, event: str,
               mechanism: SubsampledGaussianEvent, epsilon_cumulative: float,
               model_received_sha256: str, update_sent_sha256: str | None,
               refusal_reason: str, replay_commitment: str = "") -> dict[str, Any]:
        optional = {"replay_commitment": replay_commitment} if replay_commitment else {}
        return self._append({
            "round": int(server_round), "partner": self.partner, "event": event,
            "mechanism": mechanism_fields(mechanism),
            "delta": plan.delta, "epsilon_budget": plan.epsilon_budget,
            "epsilon_cumulative": float(epsilon_cumulative),
            "accountant": ACCOUNTANT_NAME, "conversion": CONVERSION,
            "calibration": calibration_fields(plan),
            "model_received_sha256": model_received_sha256,
            "update_sent_sha256": update_sent_sha256, "refusal_reason": refusal_reason,
            **optional,
        })


def calibration_fields(plan: PrivacyPlan) -> dict[str, Any]:
    """An entry's `calibration`: the whole plan, so a restarted partner restores it exactly."""
    planned, count = plan.round_event, plan.count_event
    return {"planned_rounds": plan.planned_rounds, "steps_per_round": planned.steps,
            "sample_rate": planned.sample_rate, "noise_multiplier": planned.noise_multiplier,
            "clipping_norm": planned.clipping_norm, "released_rows": plan.released_rows,
            "count_noise_multiplier": count.noise_multiplier}


def plan_from_calibration(calibration: dict[str, Any], *, epsilon_budget: float,
                          delta: float) -> PrivacyPlan:
    """Inverse of `calibration_fields` (raises LedgerError when a field is missing)."""
    try:
        return PrivacyPlan(
            epsilon_budget=float(epsilon_budget), delta=float(delta),
            round_event=SubsampledGaussianEvent(
                float(calibration["sample_rate"]), float(calibration["noise_multiplier"]),
                int(calibration["steps_per_round"]), float(calibration["clipping_norm"])),
            planned_rounds=int(calibration["planned_rounds"]),
            count_event=SubsampledGaussianEvent(
                1.0, float(calibration["count_noise_multiplier"]), 1, COUNT_SENSITIVITY),
            released_rows=int(calibration["released_rows"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"the ledger's calibration does not describe a plan ({exc!r})") from exc


class ReceiptLog(SignedLog):
    """The coordinator's receipts: one signed entry per accepted update."""

    kind = RECEIPT_KIND

    def __init__(self, path: Path, key: Ed25519PrivateKey, run_id: str) -> None:
        super().__init__(path, key, run_id, signer="coordinator", expected_signer="coordinator")

    def append(self, *, server_round: int, partner: str, ledger_entry_sha256: str,
               update_sha256: str) -> dict[str, Any]:
        """Sign and append a receipt for one accepted update."""
        return self._append({"round": int(server_round), "partner": partner,
                             "ledger_entry_sha256": ledger_entry_sha256,
                             "update_sha256": update_sha256})
