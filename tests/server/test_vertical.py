"""The vertical coordinator relays ciphertext: every message the ServerApp handles in a vertical
run holds, in clear, only sizes, names, mechanism figures, the customer IDs it asks to score and
the lender's opt-in releases; a relay that substitutes a key or redirects a payload is refused.

Runs the real ServerApp relay and party ClientApps in process (`tests.vertical_helpers`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from common.data.scenarios import LENDER, PARTIES, PASSIVE
from common.errors import ChannelError, PartyError
from common.outputs import CUSTOMER_SCORE, SCORES_FILE
from common.privacy.crypto import load_private_key
from common.protocol import (
    BOTTOM_SAMPLE_RATE,
    BOTTOM_SIGMA,
    BOTTOM_STEPS,
    CHANNEL,
    CONFIG,
    CUSTOMER,
    EMBEDDING_NOISE_MULTIPLIER,
    EPSILON_BUDGET,
    EPSILON_SPENT,
    INFO,
    LABEL_NOISE_MULTIPLIER,
    METRICS,
    MODE,
    NOISE_STD,
    NUM_ALIGNED,
    NUM_TEST,
    NUM_TRAIN,
    PARTY,
    PSI,
    PSI_RESPOND,
    PSI_RUN_ID,
    SCORE,
    SEALED,
    STEP,
    STEPS,
    VFL_EMBED,
    VFL_EVALUATE,
    VFL_SCORE,
    VFL_SPLIT,
    party_record,
    split_setting_metric,
)
from common.vertical.channel import (
    HEADER_BYTES,
    TAG_BYTES,
    ChannelKeys,
    Channels,
    load_channel_keys,
    unpack_arrays,
    verified_public_key,
)
from common.vertical.parties import SETTINGS, setting_name
from server.vertical import distinct_customers
from tests.vertical_helpers import (
    VerticalGrid,
    deliver,
    keyed_run_config,
    run_in_process,
    shared_vertical_run,
)

# What the coordinator may read in clear, by record: names and sizes, its own instructions (mode,
# step, PSI run id, the customers it asks about) and, in metrics, the mechanism figures every
# party publishes (anyone may recompute ε) and the lender's opt-in releases (evaluation, scores).
CLEAR_CONFIG = {
    INFO: {PARTY, NUM_ALIGNED, NUM_TRAIN, NUM_TEST, STEPS},
    CONFIG: {MODE, STEP, PSI_RUN_ID, CUSTOMER},
}
MECHANISM_FIGURES = {
    EPSILON_SPENT,
    EPSILON_BUDGET,
    LABEL_NOISE_MULTIPLIER,
    NOISE_STD,
    BOTTOM_SIGMA,
    BOTTOM_SAMPLE_RATE,
    BOTTOM_STEPS,
    EMBEDDING_NOISE_MULTIPLIER,
}
SETTING_NAMES = {setting_name(s) for s in SETTINGS}
PSI_RECORDS = {PSI} | {party_record(PSI, p) for p in PASSIVE}


def _handled(grid: VerticalGrid) -> list[Message]:
    """Every message the ServerApp handled: each instruction it sent, each reply it received."""
    return [*grid.pushed, *grid.pulled]


def _setting_of(key: str) -> str:
    """The setting a lender's evaluation metric key names ('' if none)."""
    return split_setting_metric(key)[0] if "/" in key else ""


def _is_ciphertext(blob: object) -> bool:
    if not isinstance(blob, bytes) or len(blob) < HEADER_BYTES + TAG_BYTES:
        return False
    try:
        unpack_arrays(blob[HEADER_BYTES:])
    except ChannelError:
        return True
    return False


def _clear_problems(msg: Message, trusted: ChannelKeys, run_id: str) -> list[str]:
    """What `msg` shows the coordinator beyond ciphertext, sizes and the listed figures."""
    kind, content = msg.metadata.message_type, msg.content
    problems = [f"{kind}: array record {name!r} in clear" for name in content.array_records]
    for name, record in content.metric_records.items():
        for key in record:
            allowed = (
                key in MECHANISM_FIGURES
                or key == SCORE
                or (kind == VFL_EVALUATE and _setting_of(key) in SETTING_NAMES)
            )
            if name != METRICS or not allowed:
                problems.append(f"{kind}: metric {name}/{key} in clear")
    for name, record in content.config_records.items():
        for key, value in record.items():
            if name in PSI_RECORDS:
                continue  # blinded values and shuffled positions (tests/common/vertical/test_psi)
            if name == SEALED:
                if not (
                    key in PARTIES
                    and isinstance(value, list)
                    and all(_is_ciphertext(bytes(b)) for b in value)
                ):
                    problems.append(f"{kind}: {name}/{key} is not a list of ciphertexts")
            elif name == CHANNEL:
                try:  # a party's ephemeral public key, signed by its ledger key
                    verified_public_key(bytes(value), party=key, run_id=run_id, keys=trusted)
                except ChannelError as exc:
                    problems.append(f"{kind}: {name}/{key} is not a signed channel key ({exc})")
            elif key not in CLEAR_CONFIG.get(name, set()) or (
                key == CUSTOMER and kind not in (VFL_EMBED, VFL_SCORE)
            ):
                problems.append(f"{kind}: {name}/{key} = {str(value)[:40]} in clear")
    return problems


def test_every_message_the_coordinator_handles_is_ciphertext_or_sizes() -> None:
    vertical = shared_vertical_run()
    keys = Path(vertical.run.sim_keys_dir)
    trusted = load_channel_keys(LENDER, str(keys / f"{LENDER}.key"), str(keys), PARTIES)
    handled = _handled(vertical.grid)
    problems = [
        p
        for msg in handled
        if not msg.has_error()
        for p in _clear_problems(msg, trusted, vertical.summary["psi_run_id"])
    ]
    assert problems == []
    # every party-to-party payload did travel, sealed: split, labels, embeddings, gradients,
    # test and customer embeddings
    sealed_kinds = {
        m.metadata.message_type
        for m in handled
        if not m.has_error() and SEALED in m.content.config_records
    }
    assert {
        "query.psi_finish",
        "query.vfl_split",
        "query.vfl_labels",
        "train.vfl_bottom",
        "query.vfl_embed",
        "evaluate.vfl_score",
        "train.vfl_top",
        "train.vfl_finetune",
        "query.vfl_score",
    } <= sealed_kinds
    # no customer ID in clear but the ones the coordinator asked to score
    named = {
        str(v)
        for m in handled
        if not m.has_error()
        for r in m.content.config_records.values()
        for v in r.values()
        if isinstance(v, str) and v.startswith("cust-")
    }
    assert named == set(vertical.run.score_ids)


def test_the_channel_costs_no_extra_message_round() -> None:
    vertical = shared_vertical_run()
    psi, dp = 5, 4  # open, respond, finish, align, split; labels, bottom, embed, evaluate
    non_private = 2 + 2 * (vertical.run.vertical_finetune_steps + 1) + 2
    # each customer asked once (one is named twice); every voucher reaches the lender
    scoring = 2 * len(set(vertical.run.score_ids))
    assert vertical.summary["message_rounds"] == psi + dp + non_private + scoring
    assert vertical.summary["num_test"] == 860 and vertical.summary["num_aligned"] == 3440
    for mode in ("dp", "non_private"):
        assert set(vertical.summary["metrics"][mode]) == SETTING_NAMES


class SubstitutingGrid(VerticalGrid):
    """A coordinator that passes its own channel key off as the lender's (signed by its key)."""

    def push_messages(self, messages):
        messages = list(messages)
        for msg in messages:
            if msg.metadata.message_type == PSI_RESPOND:
                run_id = str(msg.content.config_records[PSI]["run_id"])
                own = load_private_key(Path(self.keys_dir) / "coordinator.key")
                forged = Channels(LENDER, run_id).start(ChannelKeys(LENDER, own, {}))
                msg.content.config_records[CHANNEL][LENDER] = forged
        return super().push_messages(messages)


class RedirectingGrid(VerticalGrid):
    """A coordinator that delivers the split sealed for one passive party to the other."""

    def push_messages(self, messages):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == VFL_SPLIT:
            first, second = (m.content for m in messages)
            first[SEALED], second[SEALED] = second[SEALED], first[SEALED]
        return super().push_messages(messages)


@pytest.mark.parametrize(
    ("grid_class", "refusal"),
    [
        (SubstitutingGrid, "channel key is not signed by lender's ledger key"),
        (RedirectingGrid, "failed authentication"),
    ],
)
def test_a_coordinator_cannot_substitute_a_key_or_redirect_a_payload(
    tmp_path: Path, grid_class: type[VerticalGrid], refusal: str
) -> None:
    run = keyed_run_config(tmp_path)
    grid_class.keys_dir = run.sim_keys_dir  # type: ignore[attr-defined]
    with pytest.raises(PartyError, match=refusal):
        run_in_process(run, grid_class=grid_class)


def test_an_unsealed_payload_is_refused_like_a_forged_one() -> None:
    bank = shared_vertical_run().grid.context_of("bank")
    gradients = RecordDict({"grads": ArrayRecord({"lender+bank": Array(np.ones(3))})})
    reply = deliver(bank, "train.vfl_finetune", {MODE: "non-private"}, records=dict(gradients))
    assert reply.has_error() and "expected 1 sealed payload(s) from lender" in reply.error.reason


def test_a_repeated_customer_is_asked_once_and_its_score_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`vertical-score-ids` naming a customer twice: one request, its score kept in
    vertical_scores.json (not overwritten by the lender's refusal to score it again), and a
    warning."""
    vertical = shared_vertical_run()
    first = vertical.run.score_ids[0]
    assert vertical.run.score_ids.count(first) == 2
    scores = json.loads((Path(vertical.run.out_dir) / SCORES_FILE).read_text())
    assert list(scores) == list(dict.fromkeys(vertical.run.score_ids))
    assert 0.0 < scores[first][CUSTOMER_SCORE] < 1.0
    with caplog.at_level("WARNING"):
        distinct = distinct_customers(["cust-1", "cust-2", "cust-1", "cust-3", "cust-2"])
    assert distinct == ["cust-1", "cust-2", "cust-3"]
    assert "vertical-score-ids repeats cust-1, cust-2: each is scored once" in caplog.text
