"""The PSI's two roles: the lender (label holder) and a passive party (feature holder)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.errors import PsiError
from common.vertical.psi.curve import blind, generate_blinding_key, point_hasher, raw_key
from common.vertical.psi.ids import check_run_id, validate_ids
from common.vertical.psi.messages import (
    Alignment,
    BlindedSet,
    PassiveReply,
    PsiMessage,
    transcript_digest,
)

logger = logging.getLogger(__name__)

_SYSTEM_RANDOM = random.SystemRandom()


def _check_addressed(message: PsiMessage, *, run_id: str, me: str, sender: str) -> None:
    if message.run_id != run_id:
        raise PsiError(f"{me}: message of run {message.run_id!r}, expected run {run_id!r}")
    if message.recipient != me:
        raise PsiError(f"{me}: message addressed to {message.recipient!r}")
    if message.sender != sender:
        raise PsiError(f"{me}: message from {message.sender!r}, expected {sender!r}")


class _Party:
    """IDs, run id and the hashed points of one party (hashed once, on first use)."""

    def __init__(self, name: str, ids: Sequence[str], *, run_id: str) -> None:
        if not isinstance(name, str) or not name:
            raise PsiError(f"party name must be a non-empty str, got {name!r}")
        check_run_id(run_id)
        self.name = name
        self.run_id = run_id
        self.ids = validate_ids(ids, party=name)
        self._points: list[bytes] | None = None
        self.aligned_rows: list[int] | None = None

    def prepare(self) -> None:
        """Hash the party's IDs to curve points (done on first use if not called)."""
        if self._points is None:
            hash_one = point_hasher(self.run_id)
            self._points = [hash_one(customer) for customer in self.ids]

    @property
    def points(self) -> list[bytes]:
        self.prepare()
        assert self._points is not None
        return self._points


@dataclass
class _Session:
    key: X25519PrivateKey
    sent_rows: list[int]  # message position -> lender row
    matches: dict[int, int] | None = None  # lender row -> position in the partner's items
    transcript: bytes = b""  # `transcript_digest` of the messages sent and received so far


class LenderParty(_Party):
    """The label holder: runs one PSI session per partner and decides the aligned order."""

    def __init__(self, name: str, ids: Sequence[str], *, run_id: str,
                 partners: Sequence[str]) -> None:
        super().__init__(name, ids, run_id=run_id)
        partners = list(partners)
        if not partners or len(set(partners)) != len(partners) or name in partners:
            raise PsiError(f"partners must be distinct names other than {name!r}, got {partners}")
        self.partners = partners
        self._sessions: dict[str, _Session] = {}
        self.intersection: list[str] | None = None

    def open_session(self, partner: str) -> BlindedSet:
        """The first message to `partner`: our IDs under a fresh key, in a random order."""
        if partner not in self.partners:
            raise PsiError(f"{self.name}: unknown partner {partner!r}; expected {self.partners}")
        if partner in self._sessions:
            raise PsiError(f"{self.name}: session with {partner!r} already opened")
        rows = list(range(len(self.ids)))
        _SYSTEM_RANDOM.shuffle(rows)
        session = _Session(key=generate_blinding_key(), sent_rows=rows)
        points = self.points
        items = blind(session.key, [points[row] for row in rows])
        self._sessions[partner] = session
        message = BlindedSet(self.run_id, self.name, partner, tuple(items))
        session.transcript = transcript_digest(message)
        return message

    def session_state(self) -> dict[str, bytes | list[int]]:
        """The open sessions (secret keys, sent order) as plain values, to keep between messages
        (a Flower ClientApp's Context state); secret: it never leaves the lender."""
        state: dict[str, bytes | list[int]] = {}
        for partner, session in self._sessions.items():
            if session.matches is not None:
                raise PsiError(f"{self.name}: session with {partner!r} already answered")
            state[f"key.{partner}"] = raw_key(session.key)
            state[f"rows.{partner}"] = list(session.sent_rows)
            state[f"transcript.{partner}"] = session.transcript
        return state

    def restore_sessions(self, state: Mapping[str, Any]) -> None:
        """Reopen the sessions saved by `session_state`."""
        for partner in self.partners:
            if f"key.{partner}" in state:
                self._sessions[partner] = _Session(
                    key=X25519PrivateKey.from_private_bytes(bytes(state[f"key.{partner}"])),
                    sent_rows=[int(r) for r in state[f"rows.{partner}"]],
                    transcript=bytes(state[f"transcript.{partner}"]))

    def receive(self, reply: PassiveReply) -> None:
        """Match the partner's items against ours: which of our rows it knows, and where."""
        session = self._sessions.get(reply.sender)
        if session is None:
            raise PsiError(f"{self.name}: reply from {reply.sender!r} without an open session")
        _check_addressed(reply, run_id=self.run_id, me=self.name, sender=reply.sender)
        if session.matches is not None:
            raise PsiError(f"{self.name}: second reply from {reply.sender!r}")
        if len(reply.reblinded) != len(session.sent_rows):
            raise PsiError(f"{self.name}: {reply.sender!r} re-blinded {len(reply.reblinded)} "
                           f"items, we sent {len(session.sent_rows)}")
        theirs = blind(session.key, reply.items, source=reply.sender)
        position_of = {value: position for position, value in enumerate(theirs)}
        if len(position_of) != len(theirs):
            raise PsiError(f"{self.name}: {reply.sender!r} sent repeated items")
        session.matches = {
            session.sent_rows[k]: position_of[value]
            for k, value in enumerate(reply.reblinded) if value in position_of
        }
        session.transcript = transcript_digest(reply, session.transcript)
        logger.debug("%s: %d of our IDs in common with %s", self.name, len(session.matches),
                     reply.sender)

    def finish(self) -> list[Alignment]:
        """The customers every partner knows, in a random order; one Alignment per partner."""
        missing = [p for p in self.partners
                   if p not in self._sessions or self._sessions[p].matches is None]
        if missing:
            raise PsiError(f"{self.name}: no reply yet from {missing}")
        matches = [self._sessions[p].matches for p in self.partners]
        common = set.intersection(*(set(m) for m in matches if m is not None))
        rows = sorted(common)
        _SYSTEM_RANDOM.shuffle(rows)  # the aligned order reveals nothing of our row order
        self.aligned_rows = rows
        self.intersection = [self.ids[row] for row in rows]
        if not rows:
            logger.warning("%s: the parties have no customer in common", self.name)
        return [Alignment(self.run_id, self.name, partner,
                          tuple(self._sessions[partner].matches[row] for row in rows))
                for partner in self.partners]

    def session_digest(self, partner: str) -> bytes:
        """The digest of `partner`'s session so far: after `open_session`, what we sign with the
        blinded set; before `receive`, what the partner's signed digest of its reply chains onto."""
        session = self._sessions.get(partner)
        if session is None:
            raise PsiError(f"{self.name}: no open session with {partner!r}")
        return session.transcript

    def transcript(self, alignment: Alignment) -> bytes:
        """The digest of the recipient's whole session: our blinded set, its reply as we received
        it and `alignment` as we send it (the one to vouch for, sealed, to that partner)."""
        session = self._sessions.get(alignment.recipient)
        if session is None or session.matches is None:
            raise PsiError(f"{self.name}: no answered session with {alignment.recipient!r}")
        return transcript_digest(alignment, session.transcript)


class PassiveParty(_Party):
    """A feature holder (no label): answers the lender, then reorders its rows as told."""

    def __init__(self, name: str, ids: Sequence[str], *, run_id: str, lender: str) -> None:
        super().__init__(name, ids, run_id=run_id)
        self.lender = lender
        self._key = generate_blinding_key()
        self._sent_rows: list[int] | None = None  # message position -> our row
        self.transcript = b""  # `transcript_digest` of the messages received and sent so far

    def respond(self, message: BlindedSet) -> PassiveReply:
        """Our IDs blinded in a secret random order, and the lender's items blinded again."""
        _check_addressed(message, run_id=self.run_id, me=self.name, sender=self.lender)
        if self._sent_rows is not None:
            raise PsiError(f"{self.name}: already answered the lender in this run")
        rows = list(range(len(self.ids)))
        _SYSTEM_RANDOM.shuffle(rows)
        points = self.points
        items = blind(self._key, [points[row] for row in rows])
        reblinded = blind(self._key, message.items, source=message.sender)
        self._sent_rows = rows
        reply = PassiveReply(self.run_id, self.name, self.lender, tuple(items), tuple(reblinded))
        self.transcript = transcript_digest(reply, transcript_digest(message))
        return reply

    def sent_order(self) -> list[int]:
        """Our secret order of the reply (what `align` needs), to keep between messages."""
        if self._sent_rows is None:
            raise PsiError(f"{self.name}: nothing sent yet")
        return list(self._sent_rows)

    def restore_sent_order(self, rows: Sequence[int], transcript: bytes) -> None:
        """Resume after `respond` from `sent_order` and `transcript` (the key is no longer
        needed)."""
        self._sent_rows = [int(r) for r in rows]
        self.transcript = bytes(transcript)

    def align(self, message: Alignment) -> list[int]:
        """Our row indices in the aligned order (row k is the lender's row k). Each position
        must name a distinct item of our reply, so every aligned row is one of ours that took
        part; whether it is in the intersection only the lender knows. Whether the lender sent
        this very alignment is for `transcript` to settle, against the lender's sealed one."""
        _check_addressed(message, run_id=self.run_id, me=self.name, sender=self.lender)
        if self._sent_rows is None:
            raise PsiError(f"{self.name}: alignment before we answered the lender")
        sent = self._sent_rows
        if len(set(message.indices)) != len(message.indices):
            raise PsiError(f"{self.name}: alignment repeats a position")
        if any(not 0 <= i < len(sent) for i in message.indices):
            raise PsiError(f"{self.name}: alignment position outside 0..{len(sent) - 1}")
        self.aligned_rows = [sent[i] for i in message.indices]
        self.transcript = transcript_digest(message, self.transcript)
        return self.aligned_rows
