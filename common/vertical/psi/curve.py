"""Curve25519 arithmetic of the PSI: hash an ID to a curve point, blind points with a key.

"a·Q" is `X25519PrivateKey.exchange`: the Montgomery ladder with the clamped scalar a on the
u-coordinate of Q. IDs hash to points on the curve (never its twist, never of low order) so that
no value sent says anything about the ID; a received low-order point raises `PsiError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.errors import PsiError
from common.vertical.psi.ids import check_run_id

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


def point_hasher(run_id: str) -> Callable[[str], bytes]:
    """hash_to_point for one run, with the domain-separated prefix hashed once."""
    run = check_run_id(run_id)
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
    return point_hasher(run_id)(customer)


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


def raw_key(key: X25519PrivateKey) -> bytes:
    """The 32 secret bytes of `key` (to keep a session between messages)."""
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
