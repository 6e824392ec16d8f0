"""Vertical FL through Flower: per-party ClientApps, a coordinator that only relays, results equal
to the in-memory driver, ledgers the audit verifies, scoring of a customer by ID."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from clients.context import read_config
from clients.vertical.base import check_mode, own_data
from clients.vertical.registry import Party
from common.config import RunConfig
from common.data.scenarios import LENDER, PARTIES, PARTY_COLUMNS
from common.errors import Refusal
from common.outputs import KEYS_DIR, RESULT_FILE, SCORES_FILE
from common.privacy.accounting import calibrate_noise_multiplier
from common.privacy.audit import verify
from common.privacy.crypto import generate_signing_key
from common.privacy.ledger import read_lines
from common.vertical.channel import Channels
from common.vertical.in_memory import run_vertical_in_memory
from common.vertical.parties import (
    known_ids,
    load_party,
    load_vertical_scenario,
    split_aligned,
    split_seed,
)
from common.vertical.releases import (
    RELEASE_TOLERANCE,
    STAGE_LABELS,
    Release,
    gaussian_release_event,
    write_ledger,
)
from common.vertical.settings import VerticalSettings, full_batch_finetune
from server.vertical import Relayed
from simulations.simulate.vertical import run_vertical_federation
from tests.common.vertical.test_psi import _leaks
from tests.flower_helpers import node_context, set_task_identity

SEED, STEPS = 0, 3
BOTTOM_EPSILON, EMBEDDING_CLIP = 1.0, 0.8  # defaults: a quarter of epsilon (0.75), 1.0
SCORING = {"query.vfl_embed", "query.vfl_score"}


def test_a_client_loads_only_its_own_partys_ids_and_columns() -> None:
    run = RunConfig(mode="vertical")
    _, partner = read_config(node_context({"partition-id": 1}, run), {})
    data = own_data(partner.partner, run.seed)
    assert data.party == "ecommerce"
    columns = {name.split("=")[0].split("__")[0] for name in data.feature_names}
    assert columns == set(PARTY_COLUMNS["ecommerce"])
    assert data.labels is None  # the label stays with the lender
    everyone = load_party(LENDER, run.seed).ids
    assert list(data.ids) == known_ids("ecommerce", run.seed, len(everyone))
    assert len(data.ids) < len(everyone)  # not the lender's customer list
    assert data.features.shape == (len(data.ids), len(data.feature_names))


def _test_and_training_customer(seed: int) -> tuple[str, str]:
    """A test customer and a training customer of the run's alignment (as the lender splits
    it: aligned rows in its own row order, positions by `split_aligned`)."""
    lender = load_party(LENDER, seed)
    common = set(load_party("bank", seed).ids) & set(load_party("ecommerce", seed).ids)
    aligned = [i for i, c in enumerate(lender.ids) if c in common]
    train, test = split_aligned(len(aligned), test_fraction=RunConfig().test_fraction,
                                seed=split_seed(seed))
    return lender.ids[aligned[int(test[0])]], lender.ids[aligned[int(train[0])]]


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory):
    """One Flower vertical run (DP, non-private, scoring) and the in-memory run it must match."""
    out = tmp_path_factory.mktemp("vfl")
    scenario = load_vertical_scenario(SEED)
    unknown_to_a_partner = next(c for c in load_party(LENDER, SEED).ids
                                if c not in set(load_party("bank", SEED).ids)
                                and c in set(load_party("ecommerce", SEED).ids))
    known_to_all, training_customer = _test_and_training_customer(SEED)
    relayed: list[Relayed] = []
    # Non-default stage settings: the Flower path must carry every one of them to the parties.
    run = RunConfig(mode="vertical", seed=SEED, out_dir=str(out), vertical_non_private=True,
                    vertical_finetune_steps=STEPS, vertical_bottom_epsilon=BOTTOM_EPSILON,
                    vertical_embedding_clip=EMBEDDING_CLIP,
                    vertical_score_ids=f"{known_to_all},{unknown_to_a_partner},cust-x,"
                                       f"{training_customer}")
    result = run_vertical_federation(run, centralized=False, observer=relayed.append)
    memory = run_vertical_in_memory(SEED, VerticalSettings(
        finetune=full_batch_finetune(STEPS), bottom_epsilon=BOTTOM_EPSILON,
        embedding_clip=EMBEDDING_CLIP), scenario=scenario)
    summary = json.loads((out / RESULT_FILE).read_text())
    scores = json.loads((out / SCORES_FILE).read_text())
    return (result, memory, scenario, summary, scores, relayed, out,
            (known_to_all, unknown_to_a_partner, training_customer))


@pytest.mark.slow
def test_psi_through_flower_aligns_like_the_in_memory_psi(flower_run) -> None:
    _, _, scenario, summary, _, relayed, _, _ = flower_run
    assert summary["num_aligned"] == scenario.num_aligned
    assert summary["num_test"] == len(scenario.test_labels)
    kinds = [dict(r)["kind"] for m in relayed for r in m.content.config_records.values()
             if "kind" in r]
    assert {"psi-blinded-set", "psi-passive-reply", "psi-alignment"} <= set(kinds)


@pytest.mark.slow
def test_coordinator_relays_no_id_in_clear_nor_a_plain_hash(flower_run) -> None:
    _, _, _, summary, scored, relayed, _, _ = flower_run
    records = [{k: _plain(v) for k, v in r.items()}
               for m in relayed if m.message_type not in SCORING
               for r in m.content.config_records.values()]
    assert any(isinstance(v, bytes) for r in records for v in r.values())  # blinded sets seen
    universe = list(load_party(LENDER, SEED).ids)
    assert _leaks(records, universe, summary["psi_run_id"]) == []
    # only the scoring path names a customer: exactly the ones the coordinator asked about
    named = {str(r["customer"]) for m in relayed if m.message_type in SCORING
             for r in m.content.config_records.values() if "customer" in r}
    assert named == set(scored)


def _plain(value: object) -> object:
    return bytes(value) if isinstance(value, bytes) else value


@pytest.mark.slow
def test_flower_metrics_equal_the_in_memory_run(flower_run) -> None:
    result, memory, _, _, _, _, _, _ = flower_run
    for mode in ("dp", "non_private"):
        for setting, metrics in memory.metrics[mode].items():
            for key, value in metrics.items():
                assert result.metrics[mode][setting][key] == pytest.approx(value, abs=1e-9)
    assert result.epsilon == pytest.approx(memory.epsilon)
    assert result.mechanisms == pytest.approx(memory.mechanisms)


def test_every_vertical_setting_of_the_run_config_reaches_the_party() -> None:
    run = RunConfig(mode="vertical", vertical_bottom_epsilon=BOTTOM_EPSILON,
                    vertical_embedding_clip=EMBEDDING_CLIP, vertical_finetune_steps=STEPS,
                    clip_norm=0.5, test_fraction=0.3)
    context = node_context({"partition-id": 2}, run)
    set_task_identity()
    party = Party(Message(RecordDict(), dst_node_id=1, message_type="query.vfl_hello"), context, {})
    assert party.settings == VerticalSettings(
        bottom_epsilon=BOTTOM_EPSILON, embedding_clip=EMBEDDING_CLIP, bottom_clip_norm=0.5,
        test_fraction=0.3, finetune=full_batch_finetune(STEPS))
    assert party.settings.stage2_epsilon == BOTTOM_EPSILON


@pytest.mark.slow
def test_each_partys_ledger_verifies_within_its_budget(flower_run) -> None:
    result, _, _, _, _, _, out, _ = flower_run
    audit = verify([result.ledgers[p] for p in PARTIES], Path(out) / KEYS_DIR)
    assert audit.ok, [str(f) for f in audit.findings]
    for summary in audit.partners:
        assert summary.epsilon_claimed == pytest.approx(result.epsilon[summary.partner])
        assert summary.epsilon_claimed <= 3.0 * (1 + 1e-9)
    assert [r.stage for r in result.releases["bank"]] == [2, 3]
    assert [r.stage for r in result.releases[LENDER]] == [1]


@pytest.mark.slow
def test_a_customer_known_to_all_is_scored_and_an_unknown_one_refused(flower_run) -> None:
    result, _, _, _, scores, relayed, _, (known, unknown, training) = flower_run
    assert 0.0 < scores[known]["score"] < 1.0
    # every passive party answers every request alike (a sealed voucher); only the lender, which
    # opens them, declines, with one reason whoever lacks the customer
    for customer in (unknown, "cust-x", training):
        assert scores[customer]["refused_by"] == ["lender"]
        assert scores[customer]["error"] == (
            "lender: lender cannot score this customer (not known to every party, or a "
            "training customer)")
    # the score is the lender's all-three DP model on the partners' clean embeddings
    lender_reply = [m for m in relayed if m.message_type == "query.vfl_score"
                    and m.direction == "from"]
    assert len(lender_reply) == 1  # the coordinator sees the replies of scored customers only
    assert lender_reply[0].content.metric_records["metrics"]["score"] == scores[known]["score"]
    last_evaluation = max(i for i, m in enumerate(relayed)
                          if m.message_type == "evaluate.vfl_score")
    sealed = [blob for m in relayed[last_evaluation:] if m.direction == "from"
              and m.message_type == "query.vfl_embed"
              for blob in m.content.config_records["sealed"]["lender"]]
    # both partners for each of the 4 customers (a voucher for a customer a party does not know
    # holds zeros), and no array the coordinator could read anywhere in the run
    assert len(sealed) == 8
    assert [m.message_type for m in relayed if m.content.array_records] == []
    assert np.isfinite(result.metrics["dp"]["lender+ecommerce+bank"]["auc"])


def _party(partition: int, message_type: str, config: dict | None = None,
           context=None, sealed: dict | None = None) -> Party:
    set_task_identity()
    run = RunConfig(mode="vertical")
    context = context or node_context({"partition-id": partition}, run)
    content = RecordDict({"config": ConfigRecord(config or {})})
    if sealed is not None:
        content["sealed"] = ConfigRecord(sealed)
    msg = Message(content=content, dst_node_id=1, message_type=message_type)
    return Party(msg, context, {})


def _lender_channel(context) -> Channels:
    """Give ecommerce (`context`) a channel to the lender; the lender's end."""
    key = os.urandom(32)
    ends = {p: Channels(p, "r", keys={q: key}, sent={q: 0}, received={q: 0})
            for p, q in (("ecommerce", LENDER), (LENDER, "ecommerce"))}
    context.state["vfl.channel"] = ConfigRecord(ends["ecommerce"].to_state())
    return ends[LENDER]


SESSION = b"\x07" * 32  # a PSI session digest (`transcript_digest`) both ends agree on


def _split(lender: Channels, test: list[int], num_aligned: int) -> dict:
    """The lender's split for ecommerce, sealed as it sends it (`query.psi_finish`)."""
    return {LENDER: [lender.seal_arrays("ecommerce", {"test-positions": np.array(test),
                                                      "num-aligned": np.array(num_aligned),
                                                      "psi-transcript": np.frombuffer(SESSION,
                                                                                      np.uint8)},
                                        stage="query.psi_finish", mode="")]}


def test_each_release_and_the_alignment_happen_once_per_run() -> None:
    party = _party(1, "query.psi_respond")
    party.once("bottom")
    with pytest.raises(Refusal, match="bottom was already done in this run"):
        _party(1, "train.vfl_bottom", context=party.context).once("bottom")
    with pytest.raises(Refusal, match="unknown mode"):
        check_mode(_party(1, "train.vfl_bottom", {"mode": "xyz"}).msg, party.partner)


def test_a_split_that_does_not_fit_the_alignment_is_refused() -> None:
    party = _party(1, "query.vfl_split")
    party.context.state["vfl.align"] = ConfigRecord({"aligned": list(range(100)), "run": "r",
                                                     "psi-transcript": SESSION})
    lender = _lender_channel(party.context)
    expected = round(100 * party.run.test_fraction)
    for test in ([0] * expected, list(range(100)), list(range(expected - 1)) + [100]):
        context = node_context({"partition-id": 1}, party.run)
        candidate = _party(1, "query.vfl_split", context=context,
                           sealed=_split(_lender_channel(context), test, 100))
        candidate.context.state["vfl.align"] = ConfigRecord({"aligned": list(range(100)),
                                                             "run": "r",
                                                             "psi-transcript": SESSION})
        with pytest.raises(Refusal, match="does not fit|more than its node config"):
            candidate.split()
    good = _party(1, "query.vfl_split", context=party.context,
                  sealed=_split(lender, list(range(expected)), 100))
    good.split()
    with pytest.raises(Refusal, match="already done"):  # no re-split after the fact
        _party(1, "query.vfl_split", context=party.context,
               sealed=_split(lender, list(range(1, expected + 1)), 100)).split()


def test_the_ledger_refuses_a_second_release_beyond_the_budget(tmp_path: Path) -> None:
    key = generate_signing_key()
    label = Release(STAGE_LABELS, gaussian_release_event(calibrate_noise_multiplier(
        target_epsilon=3.0, delta=1e-5, sample_rate=1.0, steps=1, tolerance=RELEASE_TOLERANCE)),
        "a" * 64, "b" * 64)
    path = tmp_path / "lender.jsonl"
    write_ledger(path, key, LENDER, "run", [label], epsilon_budget=3.0, delta=1e-5)
    with pytest.raises(ValueError, match="over its budget"):
        write_ledger(path, key, LENDER, "run", [label], epsilon_budget=3.0, delta=1e-5)
    assert len(read_lines(path)[0]) == 1
