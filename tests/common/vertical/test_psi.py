"""ECDH-PSI over X25519 (common.vertical.psi): correct intersection and alignment, a transcript
with no ID nor anything a receiver could match alone, fresh keys per run, commutative blinding,
and clear errors on bad input. Sets are small (a few hundred to 2,000 IDs); the 100k timing is
simulations/bench/psi.py's job."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.errors import PsiError
from common.vertical.psi import (
    DOMAIN_TAG,
    LOW_ORDER_U,
    POINT_SIZE,
    Alignment,
    BlindedSet,
    LenderParty,
    PassiveParty,
    PassiveReply,
    PsiMessage,
    PsiRun,
    blind,
    customer_id,
    generate_blinding_key,
    hash_to_point,
    is_on_curve,
    message_from_record,
    message_to_record,
    run_psi_in_memory,
    sample_known_ids,
    transcript_digest,
    validate_ids,
)

P = 2**255 - 19
RUN = "test-run"


def _euler_on_curve(u: int) -> bool:
    """Independent of the module's Jacobi code: Euler's criterion on u^3 + A u^2 + u."""
    return pow((u**3 + 486662 * u**2 + u) % P, (P - 1) // 2, P) == 1


def _known_overlap(seed: int, *, n_common: int = 150) -> tuple[dict[str, list[str]], set[str]]:
    """Three random ID sets sharing exactly `n_common` IDs; each also has IDs of its own and
    IDs it shares with only one other party (those must not count)."""
    rng = random.Random(seed)
    pool = [f"id-{seed}-{rng.getrandbits(64):016x}" for _ in range(n_common + 6 * 60)]
    common, rest = pool[:n_common], pool[n_common:]
    own = {name: rest[i * 60:(i + 1) * 60] for i, name in enumerate(["lender", "ecom", "bank"])}
    pairs = {"lender-ecom": rest[180:240], "lender-bank": rest[240:300], "ecom-bank": rest[300:]}
    sets = {name: common + own[name] + [x for pair, xs in pairs.items() if name in pair for x in xs]
            for name in own}
    for ids in sets.values():
        rng.shuffle(ids)
    return sets, set(common)


def _run_parties(sets: dict[str, list[str]], run_id: str = RUN
                 ) -> tuple[LenderParty, dict[str, PassiveParty], list[PsiMessage]]:
    """The protocol step by step, returning the party objects (their keys) and the messages."""
    lender = LenderParty("lender", sets["lender"], run_id=run_id, partners=["ecom", "bank"])
    passives = {name: PassiveParty(name, sets[name], run_id=run_id, lender="lender")
                for name in ("ecom", "bank")}
    messages: list[PsiMessage] = []
    for name, party in passives.items():
        opening = lender.open_session(name)
        reply = party.respond(opening)
        lender.receive(reply)
        messages += [opening, reply]
    for alignment in lender.finish():
        passives[alignment.recipient].align(alignment)
        messages.append(alignment)
    return lender, passives, messages


# ---------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_intersection_is_exactly_the_ids_all_three_parties_share(seed: int) -> None:
    sets, common = _known_overlap(seed)
    run = run_psi_in_memory(sets)
    assert set(run.intersection) == common
    assert len(run.intersection) == len(common)


@pytest.mark.parametrize("seed", [0, 1])
def test_reordered_rows_line_up_the_same_customer_in_every_party(seed: int) -> None:
    sets, common = _known_overlap(seed)
    run = run_psi_in_memory(sets)
    lined_up = {name: [sets[name][row] for row in rows] for name, rows in run.aligned_rows.items()}
    assert lined_up["lender"] == lined_up["ecom"] == lined_up["bank"] == run.intersection
    assert set(lined_up["lender"]) == common


def test_scenario_ids_with_2000_customers_align() -> None:
    n = 2000
    sets = {"lender": [customer_id(i) for i in range(n)],
            "ecommerce": sample_known_ids(n, seed=1), "bank": sample_known_ids(n, seed=2)}
    run = run_psi_in_memory(sets)
    expected = set(sets["ecommerce"]) & set(sets["bank"])
    assert set(run.intersection) == expected
    for name, rows in run.aligned_rows.items():
        assert [sets[name][row] for row in rows] == run.intersection


def test_aligned_order_is_shuffled_not_the_lender_row_order() -> None:
    sets, _ = _known_overlap(5, n_common=300)
    first = run_psi_in_memory(sets).aligned_rows["lender"]
    second = run_psi_in_memory(sets).aligned_rows["lender"]
    assert first != sorted(first)
    assert first != second and sorted(first) == sorted(second)


def test_no_common_customer_gives_empty_alignments() -> None:
    sets = {"lender": ["a", "b"], "ecom": ["a", "c"], "bank": ["b", "d"]}
    run = run_psi_in_memory(sets)
    assert run.intersection == []
    assert run.aligned_rows == {"lender": [], "ecom": [], "bank": []}


def test_sample_known_ids_draws_a_seeded_share_in_range() -> None:
    ids = sample_known_ids(1000, seed=7)
    assert ids == sample_known_ids(1000, seed=7)
    assert ids != sample_known_ids(1000, seed=8)
    assert 850 <= len(ids) <= 950
    assert ids == sorted(set(ids)) and ids[0].startswith("cust-")
    with pytest.raises(PsiError, match="fraction_range"):
        sample_known_ids(10, seed=0, fraction_range=(0.9, 0.8))


# ---------------------------------------------------------------------------- transcript


def _candidate_hashes(ids: list[str], run_id: str) -> set[bytes]:
    """Unkeyed hashes a receiver can compute from a guessed ID: plain SHA-256, SHA-256 of the
    tagged input for the first counters, and the curve point H(id) itself."""
    run = run_id.encode()
    prefix = DOMAIN_TAG + b"|" + len(run).to_bytes(2, "big") + run
    found = set()
    for customer in ids:
        data = customer.encode()
        found.add(hashlib.sha256(data).digest())
        found.update(hashlib.sha256(prefix + bytes((c,)) + data).digest() for c in range(4))
        found.add(hashlib.sha256(DOMAIN_TAG + b"|" + run + b"|" + data).digest())
        found.add(hash_to_point(customer, run_id))
    return found


def _leaks(transcript: list[dict], ids: list[str], run_id: str) -> list[str]:
    """Every clear ID or unkeyed hash of an ID found anywhere in the records' values."""
    hashes = _candidate_hashes(ids, run_id)
    found = []
    for number, record in enumerate(transcript):
        for key, value in record.items():
            if not isinstance(value, bytes | str):
                continue
            blob = value.encode() if isinstance(value, str) else value
            found += [f"record {number} {key}: ID {c!r}" for c in ids if c.encode() in blob]
            if isinstance(value, bytes):
                chunks = {blob[i:i + 32] for i in range(0, len(blob) - 31)}
                found += [f"record {number} {key}: unkeyed hash" for _ in chunks & hashes]
    return found


def test_transcript_holds_no_id_and_no_unkeyed_hash() -> None:
    sets, _ = _known_overlap(11, n_common=40)
    run = run_psi_in_memory(sets, run_id=RUN)
    universe = sorted(set().union(*sets.values()))
    assert {record["kind"] for record in run.transcript} == {
        "psi-blinded-set", "psi-passive-reply", "psi-alignment"}
    assert _leaks(run.transcript, universe, RUN) == []


def test_transcript_check_catches_an_id_or_a_plain_hash() -> None:
    # the leak check itself can fail: put a plain hash and a clear ID into a copied transcript
    sets, _ = _known_overlap(12, n_common=20)
    run = run_psi_in_memory(sets, run_id=RUN)
    victim = sets["ecom"][0]
    planted = [dict(record) for record in run.transcript]
    planted[1]["items"] = planted[1]["items"] + hashlib.sha256(victim.encode()).digest()
    assert _leaks(planted, [victim], RUN) == ["record 1 items: unkeyed hash"]
    planted = [dict(record) for record in run.transcript]
    planted[0]["sender"] = victim
    assert _leaks(planted, [victim], RUN) == [f"record 0 sender: ID {victim!r}"]


def test_receivers_cannot_match_what_they_get_without_the_senders_key() -> None:
    sets, common = _known_overlap(13, n_common=50)
    lender, passives, messages = _run_parties(sets)
    universe = sorted(set().union(*sets.values())) + [f"outsider-{i}" for i in range(50)]
    points = {customer: hash_to_point(customer, RUN) for customer in universe}

    def computable_by(key: X25519PrivateKey) -> dict[bytes, str]:
        """What a receiver holding `key` can compute for every guessed ID: H(id) and key·H(id)."""
        ids = list(points)
        table = dict(zip(blind(key, list(points.values())), ids, strict=True))
        table.update({points[c]: c for c in ids})
        return table

    for message in messages:
        if isinstance(message, BlindedSet):  # received by a passive party
            guess = computable_by(passives[message.recipient]._key)
            assert not set(message.items) & set(guess)
            # control: the sender's key does turn every guess of a lender ID into a match
            sender_view = computable_by(lender._sessions[message.recipient].key)
            assert {sender_view[i] for i in message.items} == set(sets["lender"])
        elif isinstance(message, PassiveReply):  # received by the lender
            guess = computable_by(lender._sessions[message.sender].key)
            assert not set(message.items) & set(guess)
            assert not set(message.reblinded) & set(guess)
            sender_view = computable_by(passives[message.sender]._key)
            assert {sender_view[i] for i in message.items} == set(sets[message.sender])
            # the one thing the lender can match: our key on their items = their key on ours
            ours = set(blind(lender._sessions[message.sender].key, message.items))
            matched = len(ours & set(message.reblinded))
            assert matched == len(set(sets["lender"]) & set(sets[message.sender]))
        else:  # an alignment: positions into the receiver's own items, one per common customer
            assert isinstance(message, Alignment)
            assert len(message.indices) == len(common)
            mine = passives[message.recipient]
            assert {mine.ids[row] for row in mine.aligned_rows} == common


def test_every_value_sent_is_on_the_curve_so_curve_or_twist_says_nothing() -> None:
    sets, _ = _known_overlap(14, n_common=30)
    run = run_psi_in_memory(sets, run_id=RUN)
    values = [blob[i:i + POINT_SIZE] for record in run.transcript
              for key in ("items", "reblinded") if key in record
              for blob in [record[key]] for i in range(0, len(blob), POINT_SIZE)]
    assert len(values) > 1000
    assert all(_euler_on_curve(int.from_bytes(v, "little")) for v in values)


def test_both_ends_chain_the_same_session_digest_and_any_change_shows() -> None:
    """Step 6: the lender's digest of a partner's session (blinded set, reply, alignment) is the
    partner's own, also after the lender's state round trip; a reordered alignment, or a blinded
    set or reply changed on the way, gives another."""
    sets, _ = _known_overlap(0, n_common=20)
    lender = LenderParty("lender", sets["lender"], run_id=RUN, partners=["bank"])
    bank = PassiveParty("bank", sets["bank"], run_id=RUN, lender="lender")
    opening = lender.open_session("bank")
    resumed = LenderParty("lender", sets["lender"], run_id=RUN, partners=["bank"])
    resumed.restore_sessions(lender.session_state())
    reply = bank.respond(opening)
    resumed.receive(reply)
    (alignment,) = resumed.finish()
    session = bank.transcript
    bank.align(alignment)
    assert len(bank.transcript) == 32 and bank.transcript == resumed.transcript(alignment)
    assert resumed.transcript(replace(alignment, indices=alignment.indices[::-1])) != (
        bank.transcript
    )
    swapped = (reply.items[1], reply.items[0], *reply.items[2:])
    changed = [
        transcript_digest(reply, transcript_digest(replace(opening, items=opening.items[1:]))),
        transcript_digest(replace(reply, items=swapped), transcript_digest(opening)),
    ]
    assert session not in changed


# ---------------------------------------------------------------------------- keys and blinding


def test_two_runs_over_the_same_ids_share_no_blinded_value() -> None:
    sets, _ = _known_overlap(21, n_common=60)
    first = run_psi_in_memory(sets, run_id=RUN)
    second = run_psi_in_memory(sets, run_id=RUN)  # same run id: same H(id), so only keys differ

    def values(run: PsiRun) -> set[bytes]:
        return {blob[i:i + POINT_SIZE] for record in run.transcript
                for key in ("items", "reblinded") if key in record
                for blob in [record[key]] for i in range(0, len(blob), POINT_SIZE)}

    assert len(values(first)) > 1000
    assert not values(first) & values(second)
    assert set(first.intersection) == set(second.intersection)


def test_run_id_separates_the_hashes() -> None:
    assert hash_to_point("cust-000001", "run-a") != hash_to_point("cust-000001", "run-b")
    assert hash_to_point("cust-000001", "run-a") == hash_to_point("cust-000001", "run-a")
    # length-prefixed: moving a character between run id and ID changes the hash
    assert hash_to_point("|x", "run") != hash_to_point("x", "run|")


def test_hashed_points_are_on_the_curve_and_not_of_low_order() -> None:
    for i in range(300):
        u = int.from_bytes(hash_to_point(customer_id(i), RUN), "little")
        assert u < P and u not in LOW_ORDER_U and _euler_on_curve(u)


def test_on_curve_check_agrees_with_eulers_criterion() -> None:
    rng = random.Random(3)
    values = [rng.randrange(P) for _ in range(400)] + [2, 9, P - 2]
    results = [is_on_curve(u) for u in values]
    assert results == [_euler_on_curve(u) for u in values]
    assert 0.35 < sum(results) / len(results) < 0.65  # about half the field is on the curve
    assert is_on_curve(9)  # Curve25519's base point


def test_blinding_commutes() -> None:
    a, b = generate_blinding_key(), generate_blinding_key()
    points = [hash_to_point(customer_id(i), RUN) for i in range(200)]
    a_then_b = blind(b, blind(a, points))
    b_then_a = blind(a, blind(b, points))
    assert a_then_b == b_then_a
    assert not set(a_then_b) & set(points) and not set(a_then_b) & set(blind(a, points))
    assert len(set(a_then_b)) == len(points)


@pytest.mark.parametrize("u", sorted(LOW_ORDER_U))
def test_low_order_point_is_refused(u: int) -> None:
    with pytest.raises(PsiError, match="item 1 from bank is a low-order point"):
        blind(generate_blinding_key(), [hash_to_point("x", RUN), u.to_bytes(32, "little")],
              source="bank")


@pytest.mark.parametrize("point", [b"\x09" * 31, (P + 3).to_bytes(32, "little"),
                                   bytes(31) + b"\x80"])
def test_malformed_point_is_refused(point: bytes) -> None:
    with pytest.raises(PsiError, match="not a canonical 32-byte u-coordinate"):
        blind(generate_blinding_key(), [point])


def test_lender_refuses_a_reply_carrying_a_low_order_point() -> None:
    lender = LenderParty("lender", ["a", "b"], run_id=RUN, partners=["bank"])
    bank = PassiveParty("bank", ["a", "c"], run_id=RUN, lender="lender")
    reply = bank.respond(lender.open_session("bank"))
    bad = replace(reply, items=(reply.items[0], bytes(32)))
    with pytest.raises(PsiError, match="item 1 from bank is a low-order point"):
        lender.receive(bad)


# ---------------------------------------------------------------------------- messages and errors


def test_records_round_trip_through_plain_values() -> None:
    sets, _ = _known_overlap(31, n_common=10)
    _, _, messages = _run_parties(sets)
    for message in messages:
        record = message_to_record(message)
        assert all(isinstance(v, str | bytes) or (isinstance(v, list) and
                   all(isinstance(i, int) for i in v)) for v in record.values())
        assert message_from_record(record) == message


def test_bad_records_are_refused() -> None:
    with pytest.raises(PsiError, match="not a PSI message"):
        message_from_record({"kind": "weights"})
    with pytest.raises(PsiError, match="lacks field 'items'"):
        message_from_record({"kind": "psi-blinded-set", "run_id": RUN, "sender": "l",
                             "recipient": "b"})
    with pytest.raises(PsiError, match="not a multiple of 32"):
        message_from_record({"kind": "psi-blinded-set", "run_id": RUN, "sender": "l",
                             "recipient": "b", "items": bytes(33)})


@pytest.mark.parametrize(("ids", "message"), [
    (["a", "b", "a"], "duplicate ID at positions 0 and 2"),
    ([], "the ID list is empty"),
    (["a", 7], "ID at position 1 is a int, not a str"),
    (["a", b"b"], "ID at position 1 is a bytes, not a str"),
    (["a", ""], "ID at position 1 is the empty string"),
    ("abc", "ids must be a sequence of strings"),
])
def test_bad_ids_are_refused_with_a_clear_message(ids: object, message: str) -> None:
    with pytest.raises(PsiError, match=message):
        validate_ids(ids, party="bank")
    with pytest.raises(PsiError, match=f"bank: {message}"):
        run_psi_in_memory({"lender": ["a", "b"], "bank": ids})


def test_messages_of_another_run_or_party_are_refused() -> None:
    lender = LenderParty("lender", ["a", "b"], run_id=RUN, partners=["bank"])
    bank = PassiveParty("bank", ["a", "c"], run_id=RUN, lender="lender")
    opening = lender.open_session("bank")
    with pytest.raises(PsiError, match="message of run 'other'"):
        bank.respond(replace(opening, run_id="other"))
    with pytest.raises(PsiError, match="addressed to 'ecom'"):
        bank.respond(replace(opening, recipient="ecom"))
    reply = bank.respond(opening)
    with pytest.raises(PsiError, match="re-blinded 1 items, we sent 2"):
        lender.receive(replace(reply, reblinded=reply.reblinded[:1]))
    with pytest.raises(PsiError, match="no reply yet from"):
        lender.finish()
    lender.receive(reply)
    (alignment,) = lender.finish()
    with pytest.raises(PsiError, match="alignment position outside"):
        bank.align(replace(alignment, indices=(5,)))
    assert bank.align(alignment) == [0]


def test_party_setup_errors() -> None:
    with pytest.raises(PsiError, match="partners must be distinct"):
        LenderParty("lender", ["a"], run_id=RUN, partners=["lender"])
    with pytest.raises(PsiError, match="run_id must be a non-empty str"):
        PassiveParty("bank", ["a"], run_id="", lender="lender")
    with pytest.raises(PsiError, match="lender 'boss' is not among the parties"):
        run_psi_in_memory({"lender": ["a"], "bank": ["a"]}, lender="boss")
