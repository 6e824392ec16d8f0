"""A malicious coordinator against the vertical parties (issue 21, findings 3 and 4; review
findings 5 and 6).

The coordinator controls the run config and the message order, so it plays: (a) its own test
fraction (0.9) and split seed, to get most customers' features to the lender as clean, non-DP
test embeddings; (b) scoring requests for 20 chosen customers, to learn from each passive
party's answer or refusal which party knows whom; (c) rewritten PSI messages (the alignment it
relays, or a passive party's reply), to choose which of a passive party's rows sit at the
lender's test positions; (d) PSI messages of its own making (a blinded set sent to a passive
party as the lender's, a reply sent to the lender as a passive party's), to learn which of its
guessed customer IDs a party knows. Each attack runs the real coordinator code
(`server.vertical`: `Relay`, `run_psi`, `run_private`) against the real party ClientApps
(`tests.vertical_helpers.VerticalGrid`), deployed parties on their own small tables
(`tests.common.vertical.own_tables`, 240 customers) unless a test says simulated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from common.config import RunConfig
from common.data.scenarios import LENDER, PASSIVE
from common.errors import PartyError
from common.protocol import (
    ALIGN_STATE,
    ALIGNED,
    CHANNEL,
    CONFIG,
    CUSTOMER,
    DP,
    INFO,
    MODE,
    NUM_ALIGNED,
    PSI,
    PSI_ALIGN,
    PSI_FINISH,
    PSI_OPEN,
    PSI_RESPOND,
    PSI_RUN_ID,
    PSI_STATE,
    SCORE,
    SEALED,
    TEST,
    VFL_EMBED,
    VFL_SCORE,
    party_record,
)
from common.vertical.parties import load_party_csv
from common.vertical.psi import (
    POINT_SIZE,
    BlindedSet,
    PassiveReply,
    blind,
    generate_blinding_key,
    hash_to_point,
    message_from_record,
    message_to_record,
    new_run_id,
)
from server.vertical import Relay, run_private, run_psi
from tests.common.vertical.own_tables import ID_COLUMNS, OwnTables, customer_ref, write_own_tables
from tests.flower_helpers import set_task_identity
from tests.vertical_helpers import VerticalGrid, deployed_party_configs, keyed_run_config

COORDINATORS_FRACTION = 0.9


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> OwnTables:
    return write_own_tables(tmp_path_factory.mktemp("own"))


def _grid(
    out: Path,
    tables: OwnTables | None,
    seed: int,
    lender: dict | None = None,
    grid_class: type[VerticalGrid] = VerticalGrid,
    **passive: object,
) -> tuple[VerticalGrid, Relay]:
    """Parties (deployed on `tables`, else simulated) and a coordinator whose run config asks
    for test fraction 0.9 and split seed `seed` (and relays through `grid_class`)."""
    set_task_identity()
    if tables is None:
        run, configs = keyed_run_config(out, seed=seed, test_fraction=COORDINATORS_FRACTION), {}
    else:  # the parties' keys stay across runs under `out`, as a deployed party's do
        run = RunConfig(
            mode="vertical", seed=seed, test_fraction=COORDINATORS_FRACTION, out_dir=str(out)
        )
        configs = deployed_party_configs(tables, out, **(lender or {}))
    for party in PASSIVE:
        configs.setdefault(party, {}).update(passive)
    grid = grid_class(run, party_configs=configs)
    return grid, Relay(grid, run)


def _test_customers(grid: VerticalGrid, tables: OwnTables) -> set[str]:
    """The customers the lender's split made test customers (from its own Context state)."""
    state = grid.context_of(LENDER).state.config_records[ALIGN_STATE]
    lender = load_party_csv(
        LENDER, tables.csv(LENDER), tables.schema(LENDER), ID_COLUMNS[LENDER], where="test"
    )
    aligned = np.asarray(state[ALIGNED], dtype=int)
    return {lender.ids[aligned[int(i)]] for i in state[TEST]}


# ---------------------------------------------------------------------- (a) the test fraction


@pytest.mark.parametrize(("lender", "fraction"), [({}, 0.25), ({"test-fraction": 0.2}, 0.2)])
def test_the_coordinators_test_fraction_and_seed_are_ignored(
    tables: OwnTables, tmp_path: Path, lender: dict, fraction: float
) -> None:
    """The split is the lender's: its node config's test fraction (default 0.25) and its own
    key; two runs whose coordinator asks for 0.9 with different seeds split alike."""
    splits = []
    for seed in (11, 12):
        grid, relay = _grid(tmp_path, tables, seed, lender)
        sizes = run_psi(relay, new_run_id())
        assert sizes["num_test"] == round(fraction * sizes["num_aligned"])
        assert sizes["num_train"] + sizes["num_test"] == sizes["num_aligned"]
        splits.append(_test_customers(grid, tables))
    assert splits[0] == splits[1]  # the coordinator's seed changes nothing
    assert len(splits[0]) == round(fraction * len(tables.common))


def test_passive_parties_refuse_a_test_share_above_their_cap(
    tables: OwnTables, tmp_path: Path
) -> None:
    """A lender whose own test fraction (0.7) exceeds a passive party's `max-test-fraction`
    (default 0.5) is refused, with a reason the coordinator sees; a party may raise its cap."""
    grid, relay = _grid(tmp_path / "capped", tables, 1, {"test-fraction": 0.7})
    with pytest.raises(PartyError, match="node config 'max-test-fraction' = 0.5"):
        run_psi(relay, new_run_id())
    grid, relay = _grid(
        tmp_path / "raised", tables, 1, {"test-fraction": 0.7}, **{"max-test-fraction": 0.75}
    )
    sizes = run_psi(relay, new_run_id())
    assert sizes["num_test"] == round(0.7 * sizes["num_aligned"])


def test_simulated_passive_parties_refuse_the_coordinators_test_fraction(
    tmp_path: Path,
) -> None:
    """In simulation the lender takes the run config's test fraction (the analyst's, who holds
    every party's data); a passive party's cap still refuses 0.9."""
    _, relay = _grid(tmp_path, None, 0)
    with pytest.raises(PartyError, match="3096 of 3440 aligned customers"):
        run_psi(relay, new_run_id())


# ---------------------------------------------------------------------- (b) voucher probing


def _probed(tables: OwnTables, grid: VerticalGrid) -> dict[str, list[str]]:
    """20 customers, 4 of each kind: known to e-commerce only, to the bank only, to nobody,
    aligned training customers and aligned test customers."""
    known = {p: set(tables.known[p]) for p in PASSIVE}
    test = sorted(_test_customers(grid, tables))
    training = sorted(customer_ref(k) for k in tables.common)
    return {
        "ecommerce only": [customer_ref(k) for k in sorted(known["ecommerce"] - known["bank"])][:4],
        "bank only": [customer_ref(k) for k in sorted(known["bank"] - known["ecommerce"])][:4],
        "nobody": [customer_ref(1000 + k) for k in range(4)],
        "training": [c for c in training if c not in set(test)][:4],
        "test": test[:4],
    }


def _ask(relay: Relay, customer: str) -> tuple[dict[str, object], Message | None]:
    """What the coordinator sees of one scoring request: each passive party's refusal reason
    or the size of its sealed voucher; then the lender's reply, if both answered."""
    config = {MODE: DP, CUSTOMER: customer}
    answers = relay.ask(
        VFL_EMBED, {p: RecordDict({CONFIG: ConfigRecord(config)}) for p in PASSIVE}, True
    )
    seen: dict[str, object] = {
        p: r.error.reason if r.has_error() else len(r.content.config_records[SEALED][LENDER][0])
        for p, r in answers.items()
    }
    if any(r.has_error() for r in answers.values()):
        return seen, None
    sealed = {p: [bytes(answers[p].content.config_records[SEALED][LENDER][0])] for p in PASSIVE}
    content = RecordDict({SEALED: ConfigRecord(sealed), CONFIG: ConfigRecord(config)})
    return seen, relay.ask(VFL_SCORE, {LENDER: content}, True)[LENDER]


def _scoring_run(out: Path, tables: OwnTables, **passive: object) -> tuple[VerticalGrid, Relay]:
    """A deployed DP run (stages 1-4) whose lender releases scores."""
    grid, relay = _grid(out, tables, 3, {"release-scores": True}, **passive)
    run_psi(relay, new_run_id())
    run_private(relay)
    return grid, relay


@pytest.fixture(scope="module")
def scoring_run(
    tables: OwnTables, tmp_path_factory: pytest.TempPathFactory
) -> tuple[VerticalGrid, Relay]:
    return _scoring_run(tmp_path_factory.mktemp("scoring"), tables)


def test_vouchers_do_not_tell_which_party_knows_a_customer(
    tables: OwnTables, scoring_run: tuple[VerticalGrid, Relay]
) -> None:
    """Each passive party answers every one of the 20 requests alike (a sealed voucher of one
    size); only the lender's score or refusal remains, and it tells only whether every party
    knows the customer and it is no training customer (what scoring is)."""
    grid, relay = scoring_run
    probed = _probed(tables, grid)
    seen = {c: _ask(relay, c) for customers in probed.values() for c in customers}
    assert len(seen) == 20
    for party in PASSIVE:
        assert len({s[party] for s, _ in seen.values()}) == 1, f"{party}'s replies differ"
    lender = {
        kind: {
            (r.error.reason if r.has_error() else SCORE)
            for s, r in (seen[c] for c in customers)
            if r is not None
        }
        for kind, customers in probed.items()
    }
    assert lender["test"] == {SCORE}
    refusals = set().union(*(lender[k] for k in probed if k != "test"))
    assert len(refusals) == 1 and SCORE not in refusals  # one reason for every other kind


def test_vouchers_stop_at_the_cap_alike_for_every_customer(
    tables: OwnTables, tmp_path: Path
) -> None:
    """`max-vouchers` (here 6): past it, every request is refused with the same reason."""
    grid, relay = _scoring_run(tmp_path, tables, **{"max-vouchers": 6})
    probed = _probed(tables, grid)
    seen = [_ask(relay, c)[0] for customers in probed.values() for c in customers[:2]]
    assert all(isinstance(v, int) for s in seen[:6] for v in s.values())
    refused = seen[6:]
    assert len({tuple(sorted(s.items())) for s in refused}) == 1
    assert "max-vouchers" in str(refused[0]["bank"])


def test_no_voucher_is_answered_when_the_lender_does_not_score(
    tables: OwnTables, tmp_path: Path
) -> None:
    """The lender's `release-scores` (off by default when deployed) travels in its sealed
    split: a coordinator cannot make passive parties answer vouchers the lender will not use."""
    grid, relay = _grid(tmp_path, tables, 4)
    run_psi(relay, new_run_id())
    probed = _probed(tables, grid)
    seen = [_ask(relay, c)[0] for customers in probed.values() for c in customers]
    for party in PASSIVE:
        reasons = {s[party] for s in seen}
        assert len(reasons) == 1 and "does not score" in str(reasons.pop())


# ---------------------------------------------------------------------- (c) rewritten PSI messages


def _reversed(indices: list[int]) -> list[int]:
    return indices[::-1]


def _one_outside(indices: list[int]) -> list[int]:
    """The first position replaced by one of the bank's reply positions the lender did not
    align: a bank customer outside the intersection."""
    outside = next(i for i in range(len(indices) + 1) if i not in set(indices))
    return [outside, *indices[1:]]


def _swapped_reply(record: ConfigRecord) -> None:
    """The bank's first two blinded IDs swapped in its reply to the lender: the lender's
    alignment then maps each of those two customers to the other's row."""
    items = bytes(record["items"])
    first, second = items[:POINT_SIZE], items[POINT_SIZE : 2 * POINT_SIZE]
    record["items"] = second + first + items[2 * POINT_SIZE :]


class RewritingGrid(VerticalGrid):
    """A coordinator that rewrites the bank's alignment (`alignment`) or the bank's PSI reply
    (`reply`) as it relays them; the rest it relays honestly."""

    alignment: Callable[[list[int]], list[int]] | None = None
    reply: Callable[[ConfigRecord], None] | None = None

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            records = msg.content.config_records
            kind = msg.metadata.message_type
            if kind == PSI_ALIGN and self.alignment and records[PSI]["recipient"] == "bank":
                records[PSI]["indices"] = self.alignment(list(records[PSI]["indices"]))
            if kind == PSI_FINISH and self.reply:
                self.reply(records[party_record(PSI, "bank")])
        return super().push_messages(messages)


@pytest.mark.parametrize(
    "rewrite",
    [{"alignment": _reversed}, {"alignment": _one_outside}],
    ids=["alignment-reversed", "alignment-one-outside"],
)
def test_passive_parties_refuse_an_alignment_the_lender_did_not_send(
    tables: OwnTables, tmp_path: Path, rewrite: dict
) -> None:
    """The coordinator relays the alignment in clear and knows its length; whatever it
    rewrites, the bank checks the PSI session it saw against the lender's sealed account of it
    and refuses the split, so it never holds test positions. (A rewritten reply is refused
    earlier, by the lender: see (d).)"""
    grid, relay = _grid(tmp_path, tables, 5, grid_class=RewritingGrid)
    for name, rewriter in rewrite.items():
        setattr(grid, name, rewriter)
    with pytest.raises(PartyError, match="bank: .*not the one the lender sent"):
        run_psi(relay, new_run_id())
    assert TEST not in grid.context_of("bank").state.config_records.get(ALIGN_STATE, {})
    # relayed honestly, the same parties align and split
    grid, relay = _grid(tmp_path / "honest", tables, 5, grid_class=RewritingGrid)
    assert run_psi(relay, new_run_id())["num_test"] > 0


# ---------------------------------------------------------------------- (d) made-up PSI messages


def _guesses(tables: OwnTables) -> list[str]:
    """8 customer IDs the coordinator guesses: 4 every party knows, 4 nobody knows."""
    return [customer_ref(k) for k in sorted(tables.common)[:4]] + [
        customer_ref(1000 + k) for k in range(4)
    ]


def _blinded(key: object, run_id: str, customers: list[str]) -> tuple[bytes, ...]:
    """c·H(g) for each guessed ID g, under the coordinator's own key c."""
    return tuple(blind(key, [hash_to_point(g, run_id) for g in customers]))  # type: ignore[arg-type]


def _made_up_set(lenders: ConfigRecord, run_id: str, guesses: list[str], key: object) -> None:
    """The lender's blinded set for the bank replaced by the coordinator's own c·H(g)."""
    forged = BlindedSet(run_id, LENDER, "bank", _blinded(key, run_id, guesses))
    lenders.clear()
    lenders.update(message_to_record(forged))


def _one_item_swapped(lenders: ConfigRecord, run_id: str, guesses: list[str], key: object) -> None:
    """The lender's own blinded set for the bank, its first item replaced by c·H(g), g the
    first guess: a set that looks like the lender's, with one probe inside."""
    items = bytes(lenders["items"])
    lenders["items"] = _blinded(key, run_id, guesses[:1])[0] + items[POINT_SIZE:]


def _learned(reply: Message, key: object, guesses: list[str]) -> list[str]:
    """Which guesses the bank knows, from its reply: c·(b·H(y)) equals b·(c·H(g)) iff g = y."""
    answer = message_from_record(dict(reply.content.config_records[PSI]))
    assert isinstance(answer, PassiveReply)
    known = set(blind(key, answer.items))  # type: ignore[arg-type]
    return [g for g, value in zip(guesses, answer.reblinded, strict=False) if value in known]


@pytest.mark.parametrize("forge", [_made_up_set, _one_item_swapped], ids=["made-up", "one-item"])
def test_a_passive_party_answers_no_blinded_set_the_lender_did_not_send(
    tables: OwnTables, tmp_path: Path, forge: Callable[..., None]
) -> None:
    """The coordinator sends the bank, as the lender's, blinded IDs it made up with its own key
    (with the lender's genuine channel key): were they answered, the reply would tell it which
    guessed IDs the bank knows. The bank refuses; no re-blinded value leaves it, no PSI session
    is kept, and the same parties still run the PSI when it relays honestly."""
    grid, relay = _grid(tmp_path, tables, 6)
    run_id, guesses, key = new_run_id(), _guesses(tables), generate_blinding_key()
    opened = relay.ask(PSI_OPEN, {LENDER: RecordDict({CONFIG: ConfigRecord({PSI_RUN_ID: run_id})})})
    records = opened[LENDER].content.config_records
    lenders = records[party_record(PSI, "bank")]
    forge(lenders, run_id, guesses, key)
    content = RecordDict({PSI: lenders, CHANNEL: records[CHANNEL]})
    reply = relay.ask(PSI_RESPOND, {"bank": content}, True)["bank"]
    learned = [] if reply.has_error() else _learned(reply, key, guesses)
    assert reply.has_error(), f"the coordinator learned that the bank knows {learned}"
    assert re.search(r"bank: .*not signed by lender", reply.error.reason)
    assert PSI_STATE not in grid.context_of("bank").state.config_records
    grid, relay = _grid(tmp_path / "honest", tables, 6)
    assert run_psi(relay, new_run_id())["num_aligned"] == len(tables.common)


def _made_up_reply(
    reply: ConfigRecord, lenders: ConfigRecord, run_id: str, guesses: list[str], key: object
) -> None:
    """The bank's reply replaced by the coordinator's: its own c·H(g) as the bank's IDs, and the
    lender's blinded set (relayed in clear) blinded with c."""
    blinded = message_from_record(dict(lenders))
    assert isinstance(blinded, BlindedSet)
    forged = PassiveReply(
        run_id,
        "bank",
        LENDER,
        _blinded(key, run_id, guesses),
        tuple(blind(key, blinded.items)),  # type: ignore[arg-type]
    )
    reply.clear()
    reply.update(message_to_record(forged))


def _swapped(reply: ConfigRecord, *_: object) -> None:
    """The bank's genuine reply, its first two blinded IDs swapped: the lender's alignment would
    map each of those two customers to the other's row."""
    _swapped_reply(reply)


@pytest.mark.parametrize("forge", [_made_up_reply, _swapped], ids=["made-up", "swapped"])
def test_the_lender_uses_no_reply_the_passive_party_did_not_send(
    tables: OwnTables, tmp_path: Path, forge: Callable[..., None]
) -> None:
    """The coordinator relays the bank's reply to the lender rewritten: made up from its own
    key (the aligned count would then tell it how many of its guessed IDs the lender and the
    e-commerce party know) or with two items swapped (to misalign two customers). The lender
    refuses before matching: no alignment, no count, no PSI session left to finish."""
    grid, relay = _grid(tmp_path, tables, 7)
    run_id, guesses, key = new_run_id(), _guesses(tables), generate_blinding_key()
    opened = relay.ask(PSI_OPEN, {LENDER: RecordDict({CONFIG: ConfigRecord({PSI_RUN_ID: run_id})})})
    records = opened[LENDER].content.config_records
    contents = {
        p: RecordDict({PSI: records[party_record(PSI, p)], CHANNEL: records[CHANNEL]})
        for p in PASSIVE
    }
    replies = relay.ask(PSI_RESPOND, contents)
    psi = {p: replies[p].content.config_records[PSI] for p in PASSIVE}
    forge(psi["bank"], records[party_record(PSI, "bank")], run_id, guesses, key)
    keys = ConfigRecord({p: replies[p].content.config_records[CHANNEL][p] for p in PASSIVE})
    content = RecordDict({**{party_record(PSI, p): psi[p] for p in PASSIVE}, CHANNEL: keys})
    finished = relay.ask(PSI_FINISH, {LENDER: content}, True)[LENDER]
    count = None if finished.has_error() else finished.content.config_records[INFO][NUM_ALIGNED]
    assert finished.has_error(), f"the lender aligned {count} customers of the forged reply"
    assert re.search(r"lender: .*not signed by bank", finished.error.reason)
    assert ALIGN_STATE not in grid.context_of(LENDER).state.config_records
