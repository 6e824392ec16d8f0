"""Private set intersection (ECDH-PSI over X25519) to line up customer rows for vertical training.

One party, the lender (it holds the label), learns which customers every party knows; each other
("passive") party learns only the order in which to line up its own rows. Messages are frozen
dataclasses of bytes and ints; `message_to_record` turns one into a flat dict that a Flower
ConfigRecord can carry. This module never imports flwr: `run_psi_in_memory` drives the parties in
one process and keeps a transcript of every record sent.

Protocol, for each passive party P with the lender L (P's IDs Y, L's IDs X, run id r):

1. Both hash every ID to a point of Curve25519: H(id) = the first SHA-256 digest of
   (domain tag, r, counter, id) that is the u-coordinate of a point on the curve (not on its twist,
   not of low order). L draws a fresh X25519 key a_P for this run and this partner only.
2. L -> P  `BlindedSet`: a_P·H(x) for every x in X, in a random order.
3. P draws a fresh key b for this run. P -> L  `PassiveReply`: b·H(y) for every y in Y, in an
   order P shuffles and keeps secret, and b·(a_P·H(x)) for every item of step 2, in step 2's order.
4. L computes a_P·(b·H(y)) = b·(a_P·H(x)) exactly when x = y, so it learns X ∩ Y and, for each
   common customer, the position of its item in P's step-3 list.
5. After all partners: L keeps the customers common to all of them, puts them in a random order
   and sends each P an `Alignment`: for row k, the position in P's own step-3 list. P maps the
   positions back through its secret shuffle to its own rows.

"a·Q" is `X25519PrivateKey.exchange`: the Montgomery ladder with the clamped scalar a on the
u-coordinate of Q. Clamped scalars are multiples of 8, so a·H(x) lies in the prime-order subgroup,
and a·(b·Q) = b·(a·Q) (tested in tests/test_psi.py). IDs hash to curve points only so that every
value sent lies on the curve: were half of them on the twist, that bit would be a public function
of the ID, one bit a receiver could test candidate IDs against. A received value of low order
makes `exchange` fail (all-zero result); we raise `PsiError` naming the sender and position.
Twist points from a dishonest peer are not rejected (checking costs ~30 µs per item): they reveal
nothing of our key, because clamping kills the twist's 4-torsion and Curve25519 is twist-secure
(discrete logs in its twist's prime-order subgroup cost ~2^126).

Security model: semi-honest parties (they follow the protocol, then try to learn more from what
they saw), secrecy under decisional Diffie-Hellman in Curve25519's prime-order subgroup with
SHA-256 as a random oracle. Keys and shuffles are fresh per run (`secrets`), so blinded values of
two runs cannot be linked. What each party learns:

- the lender: the customers common to all parties (as its own IDs); for each partner, the pairwise
  intersection X ∩ Y and |Y| (pairwise PSI; a lender running the sessions needs them);
- a passive party: |X|, the size of the final intersection and which of ITS OWN rows are in it,
  in the aligned order (inherent to alignment); nothing about the other partners' IDs;
- no message holds an ID, or a hash of one anyone can compute without a key: only values blinded
  by at least one fresh secret key. A customer outside the intersection appears only blinded under
  a key its receiver does not hold.

Not covered: malicious parties (a lender could put guessed IDs in X and learn whether P knows
them, as with any PSI; nobody proves it followed the protocol), set sizes (no padding), and
timing side channels in the hashing of one's own IDs.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.errors import PsiError

logger = logging.getLogger(__name__)

DOMAIN_TAG = b"fedcredit-psi/v1"
POINT_SIZE = 32

_P = 2**255 - 19  # Curve25519 field prime
_A = 486662  # Montgomery coefficient: v^2 = u^3 + A u^2 + u
_U_MASK = (1 << 255) - 1
# u-coordinates of the points of order 1, 2, 4 and 8 (RFC 7748 section 7, cr.yp.to/ecdh.html):
# a scalar multiple of these is the point at infinity, which X25519 returns as all zeros.
LOW_ORDER_U = frozenset({
    0,
    1,
    _P - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
})
_MAX_TRIES = 256

_SYSTEM_RANDOM = random.SystemRandom()



# ---------------------------------------------------------------------------- inputs and helpers


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


def _check_run_id(run_id: str) -> bytes:
    if not isinstance(run_id, str) or not run_id:
        raise PsiError(f"run_id must be a non-empty str, got {run_id!r}")
    encoded = run_id.encode()
    if len(encoded) > 0xFFFF:
        raise PsiError("run_id is longer than 65535 bytes")
    return encoded


# ---------------------------------------------------------------------------- curve arithmetic


def _jacobi(a: int, n: int) -> int:
    """Jacobi symbol (a/n) for odd n > 0 (binary algorithm); for prime n, the Legendre symbol."""
    a %= n
    result = 1
    while a:
        zeros = (a & -a).bit_length() - 1
        if zeros:
            a >>= zeros
            if zeros & 1 and n & 7 in (3, 5):
                result = -result
        if a & 3 == 3 and n & 3 == 3:
            result = -result
        a, n = n % a, a
    return result if n == 1 else 0


def is_on_curve(u: int) -> bool:
    """Whether u (0 <= u < p) is the u-coordinate of a point of Curve25519 rather than its twist."""
    return _jacobi((u * u * u + _A * u * u + u) % _P, _P) == 1


def _acceptable_u(u: int) -> bool:
    return u < _P and u not in LOW_ORDER_U and is_on_curve(u)


def _point_hasher(run_id: str) -> Callable[[str], bytes]:
    """hash_to_point for one run, with the domain-separated prefix hashed once."""
    run = _check_run_id(run_id)
    prefix = hashlib.sha256(DOMAIN_TAG + b"|" + len(run).to_bytes(2, "big") + run)

    def hash_one(customer: str) -> bytes:
        encoded = customer.encode()
        for counter in range(_MAX_TRIES):
            digest = prefix.copy()
            digest.update(bytes((counter,)) + encoded)
            u = int.from_bytes(digest.digest(), "little") & _U_MASK
            if _acceptable_u(u):
                return u.to_bytes(POINT_SIZE, "little")
        raise PsiError(f"no curve point for an ID after {_MAX_TRIES} tries")  # p ~ 2^-256

    return hash_one


def hash_to_point(customer: str, run_id: str) -> bytes:
    """The 32-byte u-coordinate of H(customer): a curve point of large order, fixed per run.

    Hash input: DOMAIN_TAG | 2-byte length of run_id | run_id | 1-byte counter | UTF-8 ID. The
    length prefix makes (run_id, ID) pairs unambiguous. Never sent: anyone could recompute it.
    """
    return _point_hasher(run_id)(customer)


def generate_blinding_key() -> X25519PrivateKey:
    """A fresh X25519 key: the secret scalar of one party in one PSI session."""
    return X25519PrivateKey.generate()


def blind(key: X25519PrivateKey, points: Sequence[bytes], *, source: str = "input") -> list[bytes]:
    """key·Q for each 32-byte u-coordinate Q; PsiError on a malformed or low-order point."""
    exchange = key.exchange
    from_bytes = X25519PublicKey.from_public_bytes
    blinded = []
    for position, point in enumerate(points):
        if len(point) != POINT_SIZE or point[-1] & 0x80 or int.from_bytes(point, "little") >= _P:
            raise PsiError(f"item {position} from {source} is not a canonical 32-byte "
                           "u-coordinate")
        try:
            blinded.append(exchange(from_bytes(point)))
        except ValueError as exc:  # OpenSSL refuses an all-zero shared secret
            raise PsiError(f"item {position} from {source} is a low-order point") from exc
    return blinded


def _raw_key(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


# ---------------------------------------------------------------------------- messages


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


# ---------------------------------------------------------------------------- parties


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
        _check_run_id(run_id)
        self.name = name
        self.run_id = run_id
        self.ids = validate_ids(ids, party=name)
        self._points: list[bytes] | None = None
        self.aligned_rows: list[int] | None = None

    def prepare(self) -> None:
        """Hash the party's IDs to curve points (done on first use if not called)."""
        if self._points is None:
            hash_one = _point_hasher(self.run_id)
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
        return BlindedSet(self.run_id, self.name, partner, tuple(items))

    def session_state(self) -> dict[str, bytes | list[int]]:
        """The open sessions (secret keys, sent order) as plain values, to keep between messages
        (a Flower ClientApp's Context state); secret: it never leaves the lender."""
        state: dict[str, bytes | list[int]] = {}
        for partner, session in self._sessions.items():
            if session.matches is not None:
                raise PsiError(f"{self.name}: session with {partner!r} already answered")
            state[f"key.{partner}"] = _raw_key(session.key)
            state[f"rows.{partner}"] = list(session.sent_rows)
        return state

    def restore_sessions(self, state: Mapping[str, Any]) -> None:
        """Reopen the sessions saved by `session_state`."""
        for partner in self.partners:
            if f"key.{partner}" in state:
                self._sessions[partner] = _Session(
                    key=X25519PrivateKey.from_private_bytes(bytes(state[f"key.{partner}"])),
                    sent_rows=[int(r) for r in state[f"rows.{partner}"]])

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


class PassiveParty(_Party):
    """A feature holder (no label): answers the lender, then reorders its rows as told."""

    def __init__(self, name: str, ids: Sequence[str], *, run_id: str, lender: str) -> None:
        super().__init__(name, ids, run_id=run_id)
        self.lender = lender
        self._key = generate_blinding_key()
        self._sent_rows: list[int] | None = None  # message position -> our row

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
        return PassiveReply(self.run_id, self.name, self.lender, tuple(items), tuple(reblinded))

    def sent_order(self) -> list[int]:
        """Our secret order of the reply (what `align` needs), to keep between messages."""
        if self._sent_rows is None:
            raise PsiError(f"{self.name}: nothing sent yet")
        return list(self._sent_rows)

    def restore_sent_order(self, rows: Sequence[int]) -> None:
        """Resume after `respond` from `sent_order` (the key is no longer needed)."""
        self._sent_rows = [int(r) for r in rows]

    def align(self, message: Alignment) -> list[int]:
        """Our row indices in the aligned order (row k is the lender's row k)."""
        _check_addressed(message, run_id=self.run_id, me=self.name, sender=self.lender)
        if self._sent_rows is None:
            raise PsiError(f"{self.name}: alignment before we answered the lender")
        sent = self._sent_rows
        if len(set(message.indices)) != len(message.indices):
            raise PsiError(f"{self.name}: alignment repeats a position")
        if any(not 0 <= i < len(sent) for i in message.indices):
            raise PsiError(f"{self.name}: alignment position outside 0..{len(sent) - 1}")
        self.aligned_rows = [sent[i] for i in message.indices]
        return self.aligned_rows


# ---------------------------------------------------------------------------- in-memory driver


@dataclass
class PsiRun:
    """Outcome of `run_psi_in_memory`: each party's rows in aligned order, the lender's view of
    the intersection, every record sent (in order), and wall time per step in seconds."""

    run_id: str
    aligned_rows: dict[str, list[int]]
    intersection: list[str]
    transcript: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_psi_in_memory(ids_by_party: Mapping[str, Sequence[str]], *, lender: str = "lender",
                      run_id: str | None = None) -> PsiRun:
    """Run the PSI among `ids_by_party` (the lender and its partners) in this process.

    Every message crosses as a record (`message_to_record` -> `message_from_record`), as it
    would through Flower, and the records are kept in the transcript.
    """
    if lender not in ids_by_party:
        raise PsiError(f"lender {lender!r} is not among the parties {list(ids_by_party)}")
    run_id = new_run_id() if run_id is None else run_id
    partners = [name for name in ids_by_party if name != lender]
    timings: dict[str, float] = {}
    transcript: list[dict[str, Any]] = []

    def timed(label: str, step: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = step()
        timings[label] = time.perf_counter() - start
        return result

    def send(message: PsiMessage) -> PsiMessage:
        record = message_to_record(message)
        transcript.append(record)
        return message_from_record(record)

    the_lender = LenderParty(lender, ids_by_party[lender], run_id=run_id, partners=partners)
    passives = {name: PassiveParty(name, ids_by_party[name], run_id=run_id, lender=lender)
                for name in partners}
    timed(f"{lender}.hash", the_lender.prepare)
    for name, party in passives.items():
        timed(f"{name}.hash", party.prepare)
    for name, party in passives.items():
        opening = timed(f"{lender}.open[{name}]", lambda n=name: the_lender.open_session(n))
        received = send(opening)
        reply = timed(f"{name}.respond", lambda p=party, m=received: p.respond(m))
        answered = send(reply)
        timed(f"{lender}.receive[{name}]", lambda m=answered: the_lender.receive(m))
    alignments = timed(f"{lender}.finish", the_lender.finish)
    for alignment in alignments:
        message = send(alignment)
        timed(f"{alignment.recipient}.align", lambda m=message: passives[m.recipient].align(m))
    aligned = {lender: the_lender.aligned_rows or []}
    aligned.update({name: party.aligned_rows or [] for name, party in passives.items()})
    return PsiRun(run_id=run_id, aligned_rows=aligned, intersection=the_lender.intersection or [],
                  transcript=transcript, timings=timings)
