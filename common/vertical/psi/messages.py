"""PSI messages: frozen dataclasses of bytes and ints, and the flat records Flower carries."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import PsiError
from common.vertical.psi.curve import POINT_SIZE


@dataclass(frozen=True)
class BlindedSet:
    """Lender -> passive party: the lender's IDs blinded with its key for this partner."""

    run_id: str
    sender: str
    recipient: str
    items: tuple[bytes, ...]


@dataclass(frozen=True)
class PassiveReply:
    """Passive party -> lender: its own IDs blinded (its secret order), and the lender's items
    blinded once more (the lender's order)."""

    run_id: str
    sender: str
    recipient: str
    items: tuple[bytes, ...]
    reblinded: tuple[bytes, ...]


@dataclass(frozen=True)
class Alignment:
    """Lender -> passive party: for aligned row k, the position in the party's `items`."""

    run_id: str
    sender: str
    recipient: str
    indices: tuple[int, ...]


PsiMessage = BlindedSet | PassiveReply | Alignment
_KINDS: dict[str, type[PsiMessage]] = {
    "psi-blinded-set": BlindedSet, "psi-passive-reply": PassiveReply, "psi-alignment": Alignment,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def pack_points(points: Sequence[bytes]) -> bytes:
    """Points concatenated into one bytes value (compact on the wire)."""
    return b"".join(points)


def unpack_points(blob: bytes) -> tuple[bytes, ...]:
    """Inverse of `pack_points`; PsiError unless the length is a multiple of 32."""
    if len(blob) % POINT_SIZE:
        raise PsiError(f"packed points have {len(blob)} bytes, not a multiple of {POINT_SIZE}")
    return tuple(blob[i:i + POINT_SIZE] for i in range(0, len(blob), POINT_SIZE))


def message_to_record(message: PsiMessage) -> dict[str, str | bytes | list[int]]:
    """A flat dict of str, bytes and list[int] values (what a Flower ConfigRecord holds)."""
    record: dict[str, str | bytes | list[int]] = {
        "kind": _KIND_OF[type(message)], "run_id": message.run_id,
        "sender": message.sender, "recipient": message.recipient,
    }
    if isinstance(message, Alignment):
        record["indices"] = list(message.indices)
    else:
        record["items"] = pack_points(message.items)
    if isinstance(message, PassiveReply):
        record["reblinded"] = pack_points(message.reblinded)
    return record


TRANSCRIPT_TAG = b"fedcredit-psi-transcript-v1"
TRANSCRIPT_BYTES = 32


def _fields(*parts: bytes | str) -> bytes:
    """Unambiguous encoding of several fields: each one length-prefixed."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out += len(data).to_bytes(8, "big") + data
    return bytes(out)


def transcript_digest(message: PsiMessage, previous: bytes = b"") -> bytes:
    """SHA-256 of one PSI session so far: `previous` (this digest of the earlier messages, empty
    before the first) chained with `message`. Both ends of a session chain the same messages
    (blinded set, reply, alignment), so the lender can vouch, sealed, for exactly what it sent
    and received, and a passive party can tell whether the relay changed any of it."""
    if isinstance(message, Alignment):
        body = [b"".join(int(i).to_bytes(8, "big", signed=True) for i in message.indices)]
    else:
        body = [pack_points(message.items)]
    if isinstance(message, PassiveReply):
        body.append(pack_points(message.reblinded))
    head = (_KIND_OF[type(message)], message.run_id, message.sender, message.recipient)
    return hashlib.sha256(_fields(TRANSCRIPT_TAG, previous, *head, *body)).digest()


def message_from_record(record: Mapping[str, Any]) -> PsiMessage:
    """Inverse of `message_to_record`; PsiError on an unknown kind or a missing field."""
    kind = record.get("kind")
    if kind not in _KINDS:
        raise PsiError(f"not a PSI message: kind {kind!r}")
    try:
        head = (str(record["run_id"]), str(record["sender"]), str(record["recipient"]))
        if kind == "psi-alignment":
            return Alignment(*head, indices=tuple(int(i) for i in record["indices"]))
        items = unpack_points(bytes(record["items"]))
        if kind == "psi-blinded-set":
            return BlindedSet(*head, items=items)
        return PassiveReply(*head, items=items, reblinded=unpack_points(bytes(record["reblinded"])))
    except KeyError as exc:
        raise PsiError(f"{kind} record lacks field {exc}") from exc
