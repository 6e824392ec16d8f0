"""Private set intersection (ECDH-PSI over X25519) to line up customer rows for vertical training.

One party, the lender (it holds the label), learns which customers every party knows; each other
("passive") party learns only the order in which to line up its own rows. Messages are frozen
dataclasses of bytes and ints; `message_to_record` turns one into a flat dict that a Flower
ConfigRecord can carry. This package never imports flwr: `run_psi_in_memory` drives the parties in
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
6. Both ends chain the session's three messages into one digest (`transcript_digest`: SHA-256 of
   the blinded set, then the reply, then the alignment, each as its sender built it). The PSI
   messages travel in clear through the coordinator, so they are authenticated by that digest
   (`auth`): the lender signs its digest after the blinded set, P its digest after the reply,
   each with its Ed25519 ledger key, and the receiver checks the signature against the sender's
   public key in the federation's keys before it blinds (P) or matches (L) a single value. The
   lender sends its digest after the alignment inside the sealed, authenticated split
   (`common.vertical.channel`), and P refuses the alignment unless it matches its own: a relay
   that made up or rewrote the blinded set or the reply is refused before it is used, one that
   rewrote the alignment (reordered it, put in a row outside the intersection) before any
   aligned row is used.

"a·Q" is `X25519PrivateKey.exchange`: the Montgomery ladder with the clamped scalar a on the
u-coordinate of Q. Clamped scalars are multiples of 8, so a·H(x) lies in the prime-order subgroup,
and a·(b·Q) = b·(a·Q) (tested in tests/common/vertical/test_psi.py). IDs hash to curve points only
so that every value sent lies on the curve: were half of them on the twist, that bit would be a
public function of the ID, one bit a receiver could test candidate IDs against. A received value of
low order makes `exchange` fail (all-zero result); we raise `PsiError` naming the sender and
position. Twist points from a dishonest peer are not rejected (checking costs ~30 µs per item): they
reveal nothing of our key, because clamping kills the twist's 4-torsion and Curve25519 is
twist-secure (discrete logs in its twist's prime-order subgroup cost ~2^126).

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

What P can check of its alignment: that the lender sent exactly it for this session (step 6), and
that every position names a distinct item of P's own reply, so every aligned row is one of P's
rows that took part, each at most once. What P cannot check: that a position is in the
intersection, or that the order is random; only the lender learns which items matched.

Not covered: malicious parties (a lender could put guessed IDs in X and learn whether P knows
them, as with any PSI; it could align any of P's positions, in any order; nobody proves it
followed the protocol; a relay colluding with the lender can do what the lender can), set sizes
(no padding), and timing side channels in the hashing of one's own IDs. A relay that makes up
or alters a blinded set or a reply gets a refusal, not an answer (step 6): it cannot probe a
party's customer set with IDs it guesses. It can still drop, delay or replay a signed message:
one verifies only for the partner and session it was signed for (a replayed blinded set, even
into a later run, is the lender's genuine one, meaningless without that session's key), and each
party answers or matches once per run.

Modules: `ids` (inputs), `curve` (hashing and blinding), `messages` (what crosses), `auth` (the
signatures of step 6), `parties` (the lender and a passive party), `in_memory` (all parties in
one process, no relay, so nothing to sign).
"""

from common.vertical.psi.auth import sign_session, verify_session
from common.vertical.psi.curve import (
    DOMAIN_TAG,
    LOW_ORDER_U,
    POINT_SIZE,
    blind,
    generate_blinding_key,
    hash_to_point,
    is_on_curve,
)
from common.vertical.psi.ids import customer_id, new_run_id, sample_known_ids, validate_ids
from common.vertical.psi.in_memory import PsiRun, run_psi_in_memory
from common.vertical.psi.messages import (
    Alignment,
    BlindedSet,
    PassiveReply,
    PsiMessage,
    message_from_record,
    message_to_record,
    pack_points,
    transcript_digest,
    unpack_points,
)
from common.vertical.psi.parties import LenderParty, PassiveParty

__all__ = [
    "DOMAIN_TAG", "LOW_ORDER_U", "POINT_SIZE", "Alignment", "BlindedSet", "LenderParty",
    "PassiveParty", "PassiveReply", "PsiMessage", "PsiRun", "blind", "customer_id",
    "generate_blinding_key", "hash_to_point", "is_on_curve", "message_from_record",
    "message_to_record", "new_run_id", "pack_points", "run_psi_in_memory", "sample_known_ids",
    "sign_session", "transcript_digest", "unpack_points", "validate_ids", "verify_session",
]
