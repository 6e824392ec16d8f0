"""Signed PSI sessions: a party blinds or matches a relayed PSI value only if its sender signed it.

The coordinator relays the blinded set and the reply in clear, and each is used before a sealed
channel is open both ways (the lender's channel key travels with its blinded sets, a passive
party's comes back with its reply). A blinded set the coordinator made up (c·H(g) for IDs g it
guesses, under its own key c) would turn a passive party's reply into a membership oracle on that
party's customers; a reply it made up would do the same with the aligned count the lender
reports. So each sender signs, with its Ed25519 ledger key, the `transcript_digest` of its session
up to and including the message it sends: the lender its blinded set, a passive party the blinded
set it answers chained with its reply. The receiver recomputes that digest from what it received
(the lender: chained onto what it sent) and checks the signature against the sender's public key
in the federation's keys before it blinds or matches anything. The digest names the message kind,
run id, sender and recipient, so a signed message verifies for no other partner, as no other kind
and as the answer to no other blinded set. Replayed whole (an earlier run's blinded set, say) it
is still the lender's genuine set, whose values mean nothing without that session's key.
"""

from __future__ import annotations

from common.errors import CryptoError, PsiError
from common.privacy.crypto import sign, verify
from common.vertical.channel import ChannelKeys
from common.vertical.psi.messages import TRANSCRIPT_BYTES

SIGNATURE_TAG = b"fedcredit-psi-session-signature-v1"
SIGNATURE_BYTES = 64


def _statement(signer: str, digest: bytes) -> bytes:
    """What is signed: the tag, the signer's name (length-prefixed) and the session digest."""
    name = signer.encode()
    return SIGNATURE_TAG + len(name).to_bytes(2, "big") + name + digest


def sign_session(keys: ChannelKeys, digest: bytes) -> bytes:
    """`keys.party`'s signature of its PSI session digest (sent with the message it ends on)."""
    if len(digest) != TRANSCRIPT_BYTES:
        raise PsiError(f"a PSI session digest has {TRANSCRIPT_BYTES} bytes, got {len(digest)}")
    return sign(keys.signing_key, _statement(keys.party, digest))


def verify_session(keys: ChannelKeys, signer: str, digest: bytes, signature: object) -> None:
    """PsiError unless `signature` is `signer`'s signature of `digest` under `signer`'s key in the
    federation's keys: the message was made up, altered, redirected or is of another session."""
    if signer not in keys.trusted:
        raise PsiError(f"no public key of {signer!r} in the federation's keys")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise PsiError(f"the PSI message relayed as {signer}'s carries no valid signature")
    try:
        verify(keys.trusted[signer], signature, _statement(signer, digest))
    except CryptoError as exc:
        raise PsiError(f"the PSI message relayed as {signer}'s is not signed by {signer}") from exc
