"""End-to-end encrypted, authenticated channels between vertical parties, through the coordinator.

The coordinator relays every party-to-party payload but must neither read nor substitute it.
Each pair of parties (the lender and one passive party) shares a channel, set up inside the PSI
messages the coordinator already relays (no extra message round):

1. Each party draws a fresh X25519 key for this run and signs its public half with its Ed25519
   ledger key over (`VERSION`, the run id, its party name, the public key): a `signed key` of
   `SIGNED_KEY_BYTES` bytes (public key, then signature).
2. The receiver checks the signature against the sender's public key in the federation's keys
   (`<party>.pub`): a coordinator cannot substitute a key it can sign, and a key of another run or
   party does not verify.
3. Both derive the pair's key: HKDF-SHA256 over the X25519 shared secret, with info binding the
   version, the run id and both (party name, public key) pairs in name order.
4. A payload is sealed with ChaCha20-Poly1305 under a random 96-bit nonce, with associated data
   binding the version, run id, sender, recipient, stage, mode and a per-direction counter. The
   sealed blob is counter (8 bytes) | nonce (12) | ciphertext and tag. The recipient accepts a
   counter only above the last it accepted from that sender, so a coordinator cannot redirect a
   blob to another party, present it as another stage, replay it or deliver an older one after a
   newer one. It can still drop or delay messages, and it sees each blob's size and counter.

Payloads are named numpy arrays (`pack_arrays`), strings included as unicode arrays; nothing is
pickled. This module never imports flwr; `Channels.to_state` is what a party keeps in its Flower
Context between messages.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import ChannelError, CryptoError
from common.privacy.crypto import PUBLIC_SUFFIX, load_private_key, load_public_key, sign, verify

VERSION = b"fedcredit-vertical-channel-v1"
PUBLIC_KEY_BYTES, SIGNATURE_BYTES = 32, 64
SIGNED_KEY_BYTES = PUBLIC_KEY_BYTES + SIGNATURE_BYTES
COUNTER_BYTES, NONCE_BYTES, TAG_BYTES = 8, 12, 16
HEADER_BYTES = COUNTER_BYTES + NONCE_BYTES
KEY_BYTES = 32


def _fields(*parts: bytes | str) -> bytes:
    """Unambiguous encoding of several fields: each one length-prefixed."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


@dataclass(frozen=True)
class ChannelKeys:
    """What a party needs to open channels: its name, its Ed25519 ledger key, and the ledger
    public keys of the federation's parties by name."""

    party: str
    signing_key: Ed25519PrivateKey
    trusted: Mapping[str, Ed25519PublicKey]


def load_channel_keys(
    party: str, signing_key: str, public_keys: str, parties: tuple[str, ...]
) -> ChannelKeys:
    """Read `party`'s signing key and `<p>.pub` for every p of `parties` from `public_keys`."""
    if not signing_key or not public_keys:
        raise ChannelError(
            f"{party} has no channel keys (its signing key and the federation's "
            "public keys are needed)"
        )
    try:
        trusted = {p: load_public_key(Path(public_keys) / f"{p}{PUBLIC_SUFFIX}") for p in parties}
        return ChannelKeys(party, load_private_key(Path(signing_key)), trusted)
    except CryptoError as exc:
        raise ChannelError(f"{party}: the channel keys are unreadable ({exc})") from exc


def _key_statement(run_id: str, party: str, public: bytes) -> bytes:
    return _fields(VERSION, "ephemeral-key", run_id, party, public)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes_raw()


def signed_public_key(ephemeral: X25519PrivateKey, *, run_id: str, keys: ChannelKeys) -> bytes:
    """`keys.party`'s ephemeral public key with its Ed25519 signature (step 1)."""
    public = _raw(ephemeral.public_key())
    return public + sign(keys.signing_key, _key_statement(run_id, keys.party, public))


def verified_public_key(
    signed: bytes, *, party: str, run_id: str, keys: ChannelKeys
) -> X25519PublicKey:
    """`party`'s ephemeral key from its signed form; ChannelError unless `party`'s ledger key
    signed it for this run (step 2)."""
    if party not in keys.trusted:
        raise ChannelError(f"no public key of {party!r} in the federation's keys")
    if not isinstance(signed, bytes) or len(signed) != SIGNED_KEY_BYTES:
        raise ChannelError(f"{party}'s channel key is malformed")
    public, signature = signed[:PUBLIC_KEY_BYTES], signed[PUBLIC_KEY_BYTES:]
    try:
        verify(keys.trusted[party], signature, _key_statement(run_id, party, public))
    except CryptoError as exc:
        raise ChannelError(
            f"{party}'s channel key is not signed by {party}'s ledger key for this run"
        ) from exc
    return X25519PublicKey.from_public_bytes(public)


def pair_key(
    own: X25519PrivateKey, own_party: str, peer: X25519PublicKey, peer_party: str, run_id: str
) -> bytes:
    """The pair's 32-byte key: HKDF-SHA256 over the X25519 secret (step 3)."""
    try:
        secret = own.exchange(peer)
    except ValueError as exc:  # a low-order peer key gives an all-zero secret
        raise ChannelError(f"{peer_party}'s channel key is of low order") from exc
    ends = sorted([(own_party, _raw(own.public_key())), (peer_party, _raw(peer))])
    info = _fields(VERSION, "pair-key", run_id, *(part for end in ends for part in end))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def _associated_data(
    run_id: str, sender: str, recipient: str, stage: str, mode: str, counter: int
) -> bytes:
    return _fields(
        VERSION,
        "message",
        run_id,
        sender,
        recipient,
        stage,
        mode,
        counter.to_bytes(COUNTER_BYTES, "big"),
    )


def pack_arrays(arrays: Mapping[str, np.ndarray | str]) -> bytes:
    """Named arrays (strings become unicode arrays) as bytes; `unpack_arrays` reads them."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def unpack_arrays(payload: bytes) -> dict[str, np.ndarray]:
    """The named arrays of `pack_arrays`; no pickled object is ever loaded."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ChannelError("a sealed payload does not hold named arrays") from exc


_RUN, _PARTY, _EPHEMERAL = "run", "party", "ephemeral"
_KEY, _SENT, _RECEIVED = "key.", "sent.", "received."


@dataclass
class Channels:
    """One party's channels to its peers in one run: the pair keys and the counters of each
    direction. `ephemeral` is its own X25519 key while a peer's key is still to come."""

    party: str
    run_id: str
    ephemeral: bytes = b""
    keys: dict[str, bytes] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)

    def start(self, keys: ChannelKeys) -> bytes:
        """Draw this run's ephemeral key (once) and return it signed, for the coordinator to
        relay to the peers."""
        if self.ephemeral or self.keys:
            raise ChannelError(f"{self.party} already started its channels in this run")
        ephemeral = X25519PrivateKey.generate()
        self.ephemeral = ephemeral.private_bytes_raw()
        return signed_public_key(ephemeral, run_id=self.run_id, keys=keys)

    def connect(self, peer: str, signed: bytes, keys: ChannelKeys) -> None:
        """Open the channel to `peer` from its signed ephemeral key (once per peer and run)."""
        if not self.ephemeral:
            raise ChannelError(f"{self.party} has no ephemeral key to connect to {peer}")
        if peer in self.keys or peer == self.party:
            raise ChannelError(f"{self.party} already has a channel to {peer} in this run")
        public = verified_public_key(signed, party=peer, run_id=self.run_id, keys=keys)
        own = X25519PrivateKey.from_private_bytes(self.ephemeral)
        self.keys[peer] = pair_key(own, self.party, public, peer, self.run_id)
        self.sent[peer] = self.received[peer] = 0

    def forget_ephemeral(self) -> None:
        """Drop the ephemeral key once every peer is connected (no later channel is opened)."""
        self.ephemeral = b""

    def _cipher(self, peer: str) -> ChaCha20Poly1305:
        if peer not in self.keys:
            raise ChannelError(f"{self.party} has no channel to {peer} in this run")
        return ChaCha20Poly1305(self.keys[peer])

    def seal(self, recipient: str, payload: bytes, *, stage: str, mode: str) -> bytes:
        """`payload` encrypted and authenticated for `recipient` as this `stage` and `mode`."""
        cipher = self._cipher(recipient)
        counter = self.sent[recipient] + 1
        self.sent[recipient] = counter
        nonce = os.urandom(NONCE_BYTES)
        associated = _associated_data(self.run_id, self.party, recipient, stage, mode, counter)
        return (
            counter.to_bytes(COUNTER_BYTES, "big")
            + nonce
            + cipher.encrypt(nonce, payload, associated)
        )

    def open_sealed(self, sender: str, sealed: bytes, *, stage: str, mode: str) -> bytes:
        """The payload `sender` sealed for this party as this `stage` and `mode`; ChannelError
        if it was altered, meant for another party, stage or mode, or is not newer than the last
        one accepted from `sender`."""
        cipher = self._cipher(sender)
        if not isinstance(sealed, bytes) or len(sealed) < HEADER_BYTES + TAG_BYTES:
            raise ChannelError(f"a sealed message from {sender} is malformed")
        counter = int.from_bytes(sealed[:COUNTER_BYTES], "big")
        if counter <= self.received[sender]:
            raise ChannelError(f"a sealed message from {sender} is replayed or out of order")
        associated = _associated_data(self.run_id, sender, self.party, stage, mode, counter)
        try:
            payload = cipher.decrypt(
                sealed[COUNTER_BYTES:HEADER_BYTES], sealed[HEADER_BYTES:], associated
            )
        except InvalidTag as exc:
            raise ChannelError(
                f"a sealed message from {sender} failed authentication (altered, "
                "or meant for another party, stage or mode)"
            ) from exc
        self.received[sender] = counter
        return payload

    def seal_arrays(
        self, recipient: str, arrays: Mapping[str, np.ndarray | str], *, stage: str, mode: str
    ) -> bytes:
        """`seal` of `pack_arrays(arrays)`."""
        return self.seal(recipient, pack_arrays(arrays), stage=stage, mode=mode)

    def open_arrays(
        self, sender: str, sealed: bytes, *, stage: str, mode: str
    ) -> dict[str, np.ndarray]:
        """`unpack_arrays` of `open_sealed`."""
        return unpack_arrays(self.open_sealed(sender, sealed, stage=stage, mode=mode))

    def to_state(self) -> dict[str, str | bytes | int]:
        """A flat dict of plain values (what a Flower ConfigRecord holds)."""
        state: dict[str, str | bytes | int] = {
            _RUN: self.run_id,
            _PARTY: self.party,
            _EPHEMERAL: self.ephemeral,
        }
        for peer, key in self.keys.items():
            state.update(
                {
                    _KEY + peer: key,
                    _SENT + peer: self.sent[peer],
                    _RECEIVED + peer: self.received[peer],
                }
            )
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> Channels:
        """The channels `to_state` saved."""
        peers = [name[len(_KEY) :] for name in state if name.startswith(_KEY)]
        return cls(
            party=str(state[_PARTY]),
            run_id=str(state[_RUN]),
            ephemeral=bytes(state[_EPHEMERAL]),  # type: ignore[arg-type]
            keys={p: bytes(state[_KEY + p]) for p in peers},  # type: ignore[arg-type]
            sent={p: int(state[_SENT + p]) for p in peers},  # type: ignore[call-overload]
            received={
                p: int(state[_RECEIVED + p])  # type: ignore[call-overload]
                for p in peers
            },
        )
