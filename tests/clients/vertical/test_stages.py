"""The lender's label-dependent answers: scoring is no oracle (only customers every partner
vouched for through the channel, never a training customer, once each, within its limit, only
when it releases scores) and its evaluation leaves it only when its node config says so.

Each test takes a copy of the lender's Context as an in-process run left it
(`tests.vertical_helpers.shared_vertical_run`) and sends it what a coordinator could send.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message

from common.data.scenarios import LENDER, PASSIVE
from common.protocol import (
    CUSTOMER,
    DONE_STATE,
    DP,
    EMBEDDINGS,
    METRICS,
    MODE,
    NOISE_STD,
    SCORE,
    SCORE_DECLINED,
    SCORED,
    SCORED_STATE,
    VFL_BOTTOM,
    VFL_EMBED,
    VFL_EVALUATE,
    VFL_SCORE,
    VOUCHED,
    evaluation_step,
    party_record,
)
from tests.vertical_helpers import VerticalRun, aligned_customers, deliver, shared_vertical_run

TRAINING, TEST = aligned_customers(0)


@pytest.fixture(scope="module")
def vertical() -> VerticalRun:
    return shared_vertical_run()


def _lender(vertical: VerticalRun, **node_config: object) -> Context:
    context = vertical.grid.context_of(LENDER)
    context.node_config.update(node_config)
    return context


def _vouch(
    vertical: VerticalRun,
    customer: str,
    parties: tuple[str, ...] = PASSIVE,
    named: str | None = None,
    vouched: int = 1,
) -> dict[str, list[bytes]]:
    """Each of `parties` seals an embedding naming `named` (default `customer`) for the lender,
    as that party could (honest or not); `vouched` 0: it does not know the customer."""
    return {
        p: [
            vertical.grid.seal_as(
                p,
                LENDER,
                {EMBEDDINGS: np.array([0.2]), CUSTOMER: named or customer, VOUCHED: vouched},
                stage=VFL_EMBED,
                mode=DP,
            )
        ]
        for p in parties
    }


def _score(
    context: Context, customer: str, sealed: dict[str, list[bytes]] | None, **records: ArrayRecord
) -> Message:
    return deliver(context, VFL_SCORE, {MODE: DP, CUSTOMER: customer}, sealed, records)


def test_chosen_embeddings_nobody_vouched_for_are_refused(vertical: VerticalRun) -> None:
    """The oracle attack: the coordinator sends its own embeddings (old wire format) for a
    training customer the partners refused, and for a test customer."""
    lender = _lender(vertical)
    chosen = {
        party_record(CUSTOMER, p): ArrayRecord({EMBEDDINGS: Array(np.array([0.7]))})
        for p in PASSIVE
    }
    for customer in (TRAINING[0], TEST[3]):
        reply = _score(lender, customer, None, **chosen)
        assert reply.has_error(), f"the lender scored {customer} on chosen embeddings"
        assert "expected 1 sealed payload(s) from ecommerce" in reply.error.reason


def test_a_training_customer_is_never_scored_even_when_vouched_for(
    vertical: VerticalRun, caplog: pytest.LogCaptureFixture
) -> None:
    lender = _lender(vertical)
    with caplog.at_level(logging.WARNING):
        reply = _score(lender, TRAINING[1], _vouch(vertical, TRAINING[1]))
    assert reply.has_error() and SCORE_DECLINED in reply.error.reason
    assert "lender refuses to score a customer" in caplog.text  # refusals are logged
    assert TRAINING[1] not in lender.state.config_records[SCORED_STATE][SCORED]


def test_a_customer_a_partner_does_not_know_is_declined_like_a_training_customer(
    vertical: VerticalRun,
) -> None:
    """A partner's voucher for a customer it does not know (`VOUCHED` 0) is refused with the
    same reason as a training customer: the coordinator cannot tell which party lacks whom."""
    lender = _lender(vertical)
    unknown = _vouch(vertical, TEST[7], ("ecommerce",)) | _vouch(
        vertical, TEST[7], ("bank",), vouched=0
    )
    reply = _score(lender, TEST[7], unknown)
    training = _score(lender, TRAINING[2], _vouch(vertical, TRAINING[2]))
    assert reply.error.reason == training.error.reason
    assert TEST[7] not in lender.state.config_records[SCORED_STATE][SCORED]


def test_every_partner_must_vouch_for_that_very_customer(vertical: VerticalRun) -> None:
    lender = _lender(vertical)
    other = _vouch(vertical, TEST[4], ("ecommerce",)) | _vouch(vertical, TEST[5], ("bank",))
    assert "not every partner vouched" in _score(lender, TEST[4], other).error.reason
    one_only = _vouch(vertical, TEST[4], ("ecommerce",))
    assert "from bank" in _score(lender, TEST[4], one_only).error.reason
    assert not _score(lender, TEST[4], _vouch(vertical, TEST[4])).has_error()


def test_each_customer_is_scored_once_per_run(vertical: VerticalRun) -> None:
    lender = _lender(vertical)
    assert list(lender.state.config_records[SCORED_STATE][SCORED]) == [TEST[0]]  # by the run
    first = _score(lender, TEST[1], _vouch(vertical, TEST[1]))
    assert 0.0 < first.content.metric_records[METRICS][SCORE] < 1.0
    again = _score(lender, TEST[1], _vouch(vertical, TEST[1]))
    assert again.has_error() and "already scored in this run" in again.error.reason
    assert "already scored" in _score(lender, TEST[0], _vouch(vertical, TEST[0])).error.reason
    assert list(lender.state.config_records[SCORED_STATE][SCORED]) == [TEST[0], TEST[1]]


def test_the_lender_scores_at_most_its_configured_number(vertical: VerticalRun) -> None:
    lender = _lender(vertical, **{"max-scored-customers": 2})
    assert not _score(lender, TEST[2], _vouch(vertical, TEST[2])).has_error()
    refused = _score(lender, TEST[3], _vouch(vertical, TEST[3]))
    assert refused.has_error() and "maximum of 2 customers" in refused.error.reason


def test_a_lender_that_does_not_release_scores_scores_nobody(vertical: VerticalRun) -> None:
    lender = _lender(vertical, **{"release-scores": False})
    refused = _score(lender, TEST[6], _vouch(vertical, TEST[6]))
    assert refused.has_error() and "release-scores" in refused.error.reason


def _evaluate(vertical: VerticalRun, context: Context) -> Message:
    """The DP evaluation once more, on embeddings the partners seal (sizes of the run)."""
    done = context.state.config_records[DONE_STATE]
    del done[evaluation_step(DP)]
    num_train, num_test = vertical.summary["num_train"], vertical.summary["num_test"]
    rng = np.random.default_rng(0)
    sealed = {
        p: [
            vertical.grid.seal_as(
                p,
                LENDER,
                {EMBEDDINGS: rng.normal(size=num_train), NOISE_STD: np.array(1.0)},
                stage=VFL_BOTTOM,
                mode=DP,
            ),
            vertical.grid.seal_as(
                p, LENDER, {EMBEDDINGS: rng.normal(size=num_test)}, stage=VFL_EMBED, mode=DP
            ),
        ]
        for p in PASSIVE
    }
    return deliver(context, VFL_EVALUATE, {MODE: DP}, sealed)


def test_the_evaluation_leaves_the_lender_only_when_it_opts_in(
    vertical: VerticalRun, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        kept = _evaluate(vertical, _lender(vertical, **{"release-evaluation": False}))
    assert not kept.has_error() and dict(kept.content.metric_records[METRICS]) == {}
    assert "keeps its dp evaluation" in caplog.text
    released = _evaluate(vertical, _lender(vertical, **{"release-evaluation": True}))
    assert len(released.content.metric_records[METRICS]) == 8  # AUC and KS of 4 settings
    assert set(vertical.summary["metrics"]["dp"]) == {
        k.split("/")[0] for k in released.content.metric_records[METRICS]
    }
