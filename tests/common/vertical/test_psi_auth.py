"""Signed PSI sessions (common.vertical.psi.auth): a blinded set or reply verifies only under its
sender's ledger key, for exactly the session digest it was signed for."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.errors import PsiError
from common.privacy.crypto import generate_signing_key, write_key_pair
from common.vertical.channel import ChannelKeys, load_channel_keys
from common.vertical.psi import (
    LenderParty,
    PassiveParty,
    sign_session,
    transcript_digest,
    verify_session,
)

PARTIES = ("lender", "ecommerce", "bank")
RUN = "run-1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ChannelKeys]:
    """Each party's keys from a federation's key directory, plus a coordinator's own key."""
    directory = tmp_path_factory.mktemp("keys")
    for name in (*PARTIES, "coordinator"):
        write_key_pair(generate_signing_key(), directory, name)
    return {
        name: load_channel_keys(name, str(directory / f"{name}.key"), str(directory), PARTIES)
        for name in (*PARTIES, "coordinator")
    }


def test_both_ends_sign_and_check_the_session_they_share(keys: dict[str, ChannelKeys]) -> None:
    """The lender signs its blinded set's digest, the bank its reply chained onto it; each
    verifies with the other's public key from the digest it computes itself."""
    lender = LenderParty("lender", ["a", "b", "c"], run_id=RUN, partners=["bank"])
    bank = PassiveParty("bank", ["b", "c", "d"], run_id=RUN, lender="lender")
    opening = lender.open_session("bank")
    signature = sign_session(keys["lender"], lender.session_digest("bank"))
    verify_session(keys["bank"], "lender", transcript_digest(opening), signature)
    reply = bank.respond(opening)
    answer = sign_session(keys["bank"], bank.transcript)
    verify_session(
        keys["lender"], "bank", transcript_digest(reply, lender.session_digest("bank")), answer
    )
    lender.receive(reply)
    assert len(lender.finish()[0].indices) == 2


def test_a_made_up_altered_or_redirected_message_does_not_verify(
    keys: dict[str, ChannelKeys],
) -> None:
    """The coordinator's own key, another party's, a changed item, another recipient or run, a
    missing or truncated signature: every one is refused."""
    lender = LenderParty("lender", ["a", "b"], run_id=RUN, partners=["bank", "ecommerce"])
    opening = lender.open_session("bank")
    digest = transcript_digest(opening)
    genuine = sign_session(keys["lender"], digest)
    forged = [
        (digest, sign_session(keys["coordinator"], digest)),
        (digest, sign_session(keys["ecommerce"], digest)),
        (transcript_digest(replace(opening, items=opening.items[::-1])), genuine),
        (transcript_digest(replace(opening, recipient="ecommerce")), genuine),
        (transcript_digest(replace(opening, run_id="run-2")), genuine),
        (digest, None),
        (digest, genuine[:-1]),
    ]
    for candidate, signature in forged:
        with pytest.raises(PsiError, match="lender"):
            verify_session(keys["bank"], "lender", candidate, signature)
    with pytest.raises(PsiError, match="no public key of 'coordinator'"):
        verify_session(keys["bank"], "coordinator", digest, genuine)
    with pytest.raises(PsiError, match="32 bytes"):
        sign_session(keys["lender"], b"short")
