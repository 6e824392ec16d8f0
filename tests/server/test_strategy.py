"""The coordinator's strategy: invalid, refused and failed replies never reach the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict

from clients.app import build_client_app
from common.config import RunConfig
from common.data.scenarios import load_scenario_partner
from common.errors import TooFewPartners
from common.partner_evaluation import evaluate_round
from common.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE_RECEIVED,
    EVALUATION_PREFIX,
    FOLDED_EVALUATE_METRIC_KEYS,
    METRICS,
    PARTNER_FAILURE_TEXT,
    SERVER_ROUND,
)
from server.app import run_federation
from server.strategy import (
    RoundRecord,
    ValidatingFedAvg,
    check_train_metrics,
    check_train_reply,
    never_contributed,
    partner_outcomes,
)
from tests.flower_helpers import (
    arrays_record,
    initial_weights,
    node_context,
    reply_message,
    set_task_identity,
)
from tests.server.test_secure import PARTNERS, InProcessGrid


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


@pytest.fixture()
def weights() -> dict[str, np.ndarray]:
    return initial_weights(RunConfig())


def _metrics(n: float = 100.0) -> dict[str, float]:
    return {"num-examples": n, "epsilon-spent": 1.0, "epsilon-budget": 3.0, "delta": 1e-5,
            "noise-multiplier": 2.0, "sample-rate": 0.05, "steps": 10.0,
            "rounds-trained": 1.0, "refused": 0.0, "train-loss": 0.5}


def _shifted(weights: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in weights.items()}


def _strategy(weights: dict[str, np.ndarray], min_partners: int = 1) -> ValidatingFedAvg:
    strategy = ValidatingFedAvg(min_partners=min_partners)
    strategy.current_weights = weights
    return strategy


def test_valid_reply_passes(weights) -> None:
    assert check_train_reply(reply_message("bank", _shifted(weights, 0.1), _metrics()),
                             weights) == ""


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda w: {**w, "net.0.weight": w["net.0.weight"] * np.nan}, "NaN or Inf"),
    (lambda w: {**w, "net.0.weight": w["net.0.weight"] + np.inf}, "NaN or Inf"),
    (lambda w: {**w, "net.0.weight": np.zeros((3, 3), dtype=np.float32)}, "shape"),
    (lambda w: {k: v for k, v in w.items() if k != "net.0.bias"}, "missing"),
    (lambda w: {**w, "extra.weight": np.zeros(2, dtype=np.float32)}, "unexpected"),
    (lambda w: {**w, "net.0.bias": w["net.0.bias"].astype(np.int64)}, "dtype"),
])
def test_malformed_update_is_rejected(weights, mutate, expected) -> None:
    reply = reply_message("bank", mutate(dict(weights)), _metrics())
    assert expected in check_train_reply(reply, weights)


@pytest.mark.parametrize(("metrics", "expected"), [
    ({**_metrics(), "raw-income-mean": 42.0}, "unknown metric keys"),
    ({**_metrics(), "num-examples": 0.0}, "num-examples"),
    ({**_metrics(), "train-loss": float("nan")}, "non-finite"),
])
def test_bad_metrics_are_rejected(weights, metrics, expected) -> None:
    assert expected in check_train_reply(reply_message("bank", weights, metrics), weights)


def test_extra_record_is_rejected(weights) -> None:
    reply = reply_message("bank", weights, _metrics())
    reply.content["leak"] = reply.content["info"]
    assert "unexpected records" in check_train_reply(reply, weights)


def test_aggregate_uses_only_valid_updates_and_stays_finite(weights) -> None:
    strategy = _strategy(weights)
    bad_nan = {k: v * np.nan for k, v in weights.items()}
    bad_shape = {**weights, "net.0.weight": np.zeros((2, 2), dtype=np.float32)}
    request = Message(content=RecordDict(), dst_node_id=9, message_type=MessageType.TRAIN)
    failed = Message(Error(code=0, reason="node crashed"), reply_to=request)
    replies = [
        reply_message("lender", _shifted(weights, 1.0), _metrics(100.0), node_id=1),
        reply_message("bank", _shifted(weights, 4.0), _metrics(300.0), node_id=2),
        reply_message("ecommerce", bad_nan, _metrics(1000.0), node_id=3),
        reply_message("mallory", bad_shape, _metrics(1000.0), node_id=4),
        reply_message("refuser", None, {**_metrics(50.0), "refused": 1.0},
                      refusal="privacy budget exhausted", node_id=5),
        failed,
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    for array in arrays.values():
        values = array.numpy()
        assert np.all(np.isfinite(values))
        # weighted by num-examples: (1.0*100 + 4.0*300) / 400
        np.testing.assert_allclose(values, 3.25, rtol=1e-6)
    record = strategy.history[-1]
    assert record.accepted == ["lender", "bank"]
    assert set(record.rejected) == {"ecommerce", "mallory"}
    assert "NaN" in record.rejected["ecommerce"] and "shape" in record.rejected["mallory"]
    assert record.refused == {"refuser": "privacy budget exhausted"}
    assert list(record.failed.values()) == ["node crashed"]
    assert metrics["num-examples"] == 400.0


def test_too_few_valid_updates_stop_the_run(weights) -> None:
    strategy = _strategy(weights, min_partners=2)
    replies = [
        reply_message("lender", _shifted(weights, 1.0), _metrics(), node_id=1),
        reply_message("bank", None, {**_metrics(), "refused": 1.0}, refusal="budget",
                      node_id=2),
    ]
    with pytest.raises(TooFewPartners, match="min-partners=2"):
        strategy.aggregate_train(3, replies)
    assert strategy.history[-1].refused == {"bank": "budget"}


def test_aggregation_does_not_depend_on_reply_order(weights) -> None:
    replies = [reply_message(name, _shifted(weights, value), _metrics(n), node_id=i)
               for i, (name, value, n) in enumerate([("a", 0.1, 913.0), ("b", 0.7, 847.0),
                                                      ("c", 0.3, 1581.0)])]
    first, _ = _strategy(weights).aggregate_train(1, replies)
    second, _ = _strategy(weights).aggregate_train(1, list(reversed(replies)))
    for key in first:
        assert np.array_equal(first[key].numpy(), second[key].numpy())


def test_second_update_under_the_same_partner_name_is_rejected(weights) -> None:
    strategy = _strategy(weights)
    replies = [reply_message("bank", _shifted(weights, 1.0), _metrics(100.0), node_id=1),
               reply_message("bank", _shifted(weights, 9.0), _metrics(100.0), node_id=2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.history[-1].accepted == ["bank"]
    assert "same partner name" in strategy.history[-1].rejected["bank"]
    for array in arrays.values():
        np.testing.assert_allclose(array.numpy(), 1.0)


def test_too_few_connected_partners_end_the_run_instead_of_waiting_forever() -> None:
    from server.strategy import wait_for_partners

    counts = iter([1, 2, 3])
    wait_for_partners(lambda: next(counts), 3, timeout=30, server_round=1)  # 3rd poll: enough
    with pytest.raises(TooFewPartners, match=r"round 4: only 2 partner\(s\) connected after "
                                             r"waiting 1 s \(wait-for-partners\), min-partners=3"):
        wait_for_partners(lambda: 2, 3, timeout=1, server_round=4)


def test_a_failed_reply_is_named_after_the_partner_whose_node_it_was_sent_to(weights) -> None:
    strategy = _strategy(weights)
    strategy.aggregate_train(1, [reply_message("bank", _shifted(weights, 1.0), _metrics(),
                                               node_id=7)])
    to_bank = Message(content=RecordDict(), dst_node_id=7, message_type=MessageType.TRAIN)
    to_other = Message(content=RecordDict(), dst_node_id=8, message_type=MessageType.TRAIN)
    for index, message in enumerate((to_bank, to_other)):  # what the Grid does when pushing
        message.metadata.__dict__["_message_id"] = f"instruction-{index}"
    strategy.instructions = [to_bank, to_other]
    # The SuperLink answers for an unreachable node: the sender is not the node itself.
    failures = [Message(Error(code=0, reason="Node unavailable"), reply_to=request)
                for request in (to_bank, to_other)]
    for failure in failures:
        failure.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's own id
    strategy.aggregate_train(2, [reply_message("lender", _shifted(weights, 1.0), _metrics(),
                                               node_id=1), *failures])
    assert strategy.history[-1].failed == {"bank": "Node unavailable",
                                           "node-8": "Node unavailable"}



def test_a_failed_train_reply_that_carried_an_evaluation_is_a_failed_evaluation(weights) -> None:
    strategy = _strategy(weights)
    strategy.fold_evaluation = True
    strategy.aggregate_train(1, [reply_message("bank", _shifted(weights, 1.0), _metrics(),
                                               node_id=7)])
    strategy.evaluation_pending = 1  # round 1's evaluation rides on round 2's train message
    request = Message(content=RecordDict(), dst_node_id=7, message_type=MessageType.TRAIN)
    request.metadata.__dict__["_message_id"] = "instruction-0"
    strategy.instructions = [request]
    failure = Message(Error(code=0, reason="Node unavailable"), reply_to=request)
    strategy.aggregate_train(2, [reply_message("lender", _shifted(weights, 1.0), _metrics(),
                                               node_id=1), failure])
    assert strategy.history[0].failed == {
        "bank": "evaluation (on round 2's train message): Node unavailable"}
    assert strategy.history[1].failed == {"bank": "Node unavailable"}
    assert strategy.evaluation_pending is None

class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping every instruction the coordinator sends."""

    def __init__(self, client_app, run: RunConfig) -> None:
        super().__init__(client_app, run)
        self.sent: list[Message] = []

    def push_messages(self, messages):
        messages = list(messages)
        self.sent.extend(messages)
        return super().push_messages(messages)


def test_evaluation_rides_on_the_next_train_message_and_equals_a_separate_one(tmp_path) -> None:
    run = RunConfig(num_server_rounds=3, evaluate_every=1, local_epochs=0.5,
                    out_dir=str(tmp_path / "run"))
    set_task_identity()
    grid = RecordingGrid(build_client_app(run.to_flower()), run)
    run_federation(grid, run, run_id="1")
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds.count(MessageType.EVALUATE) == len(PARTNERS)  # the last round's only
    assert kinds.count(MessageType.TRAIN) == 3 * len(PARTNERS)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for record in history["rounds"]:
        assert sorted(record["evaluation"]) == sorted(PARTNERS), record["round"]
    # Rounds 1 and 2: each partner's metrics are those of the model round 2's and 3's train
    # messages carried (the aggregate of rounds 1 and 2) on its own test split, exactly.
    for server_round in (1, 2):
        carried = next(m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN
                       and m.content[CONFIG][SERVER_ROUND] == server_round + 1)
        assert carried.content[CONFIG][EVALUATE_RECEIVED] is True
        weights = {k: a.numpy() for k, a in carried.content[ARRAYS].items()}
        for i, partner in enumerate(PARTNERS):
            data = load_scenario_partner(run.scenario, i, seed=run.seed)
            expected = evaluate_round(run, weights, data)
            assert history["rounds"][server_round - 1]["evaluation"][partner] == expected
    first = next(m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN)
    assert EVALUATE_RECEIVED not in first.content[CONFIG]


def test_a_partner_evaluates_the_received_model_only_when_asked(weights) -> None:
    run = RunConfig(evaluate_every=1, local_epochs=0.5)
    set_task_identity()
    app = build_client_app(run.to_flower())
    replies = {}
    for asked in (False, True):
        config = {SERVER_ROUND: 1, **({EVALUATE_RECEIVED: True} if asked else {})}
        request = Message(RecordDict({ARRAYS: arrays_record(weights),
                                      CONFIG: ConfigRecord(config)}),
                          dst_node_id=1, message_type=MessageType.TRAIN)
        replies[asked] = dict(app(request, node_context({"partition-id": 0}, run))
                              .content[METRICS])
    assert not set(replies[False]) & set(FOLDED_EVALUATE_METRIC_KEYS)
    data = load_scenario_partner(run.scenario, 0, seed=run.seed)
    expected = {EVALUATION_PREFIX + k: v for k, v in evaluate_round(run, weights, data).items()}
    assert {k: v for k, v in replies[True].items() if k in expected} == expected
    assert check_train_metrics(replies[True]) == ""


def test_a_partner_that_failed_every_round_is_named_and_makes_the_run_incomplete(
        weights) -> None:
    """Before, such a run said "completed" with an empty message and named the partner only as
    node-<id>: the name now comes from the failure text (never from data), and the run's status
    says who never contributed and why."""
    strategy = _strategy(weights)
    for server_round in (1, 2):
        to_bank = Message(content=RecordDict(), dst_node_id=7, message_type=MessageType.TRAIN)
        reason = ("Traceback ...\ncommon.errors.PartnerError: "
                  + PARTNER_FAILURE_TEXT.format(name="bank", kind="ValueError"))
        failure = Message(Error(code=0, reason=reason), reply_to=to_bank)
        strategy.aggregate_train(server_round, [
            reply_message("lender", _shifted(weights, 1.0), _metrics(), node_id=1), failure])
    outcomes = partner_outcomes(strategy.history)
    assert outcomes["bank"]["failed"] == 2 and outcomes["bank"]["accepted"] == 0
    assert outcomes["lender"]["accepted"] == 2
    missing = never_contributed(outcomes)
    assert missing.startswith("bank never contributed (failed 2, rejected 0, refused 0")
    assert "ValueError" in missing and "lender" not in missing
    assert never_contributed(partner_outcomes(strategy.history[:0])) == ""


def _run_layout():
    from common.data.schema import load_schema
    from common.data.tables import bundled_path

    return load_schema(bundled_path("credit_data")[1]).layout()


def _echoing(reply: Message, layout_sha256: str | None) -> Message:
    if layout_sha256 is not None:
        reply.content["info"]["feature-layout-sha256"] = layout_sha256
    return reply


def test_an_update_whose_echoed_layout_is_not_the_runs_is_rejected(weights) -> None:
    """Issue 12 item 2: the coordinator used to accept a partner whose features were permuted
    relative to the model; its reply now must echo the run's feature layout hash."""
    layout = _run_layout()
    strategy = ValidatingFedAvg(min_partners=1, feature_layout=layout)
    strategy.current_weights = weights
    good = _echoing(reply_message("lender", _shifted(weights, 1.0), _metrics(), node_id=1),
                    layout.sha256)
    permuted = _echoing(reply_message("bank", _shifted(weights, 9.0), _metrics(), node_id=2),
                        "f" * 64)
    silent = reply_message("ecommerce", _shifted(weights, 9.0), _metrics(), node_id=3)
    assert check_train_reply(good, weights, layout.sha256) == ""
    assert check_train_reply(permuted, weights, layout.sha256).startswith(
        "feature layout ffffffffffff is not the run's")
    arrays, _ = strategy.aggregate_train(1, [good, permuted, silent])
    record = strategy.history[-1]
    assert record.accepted == ["lender"] and set(record.rejected) == {"bank", "ecommerce"}
    assert "feature layout none" in record.rejected["ecommerce"]
    for array in arrays.values():
        np.testing.assert_allclose(array.numpy(), 1.0)


def test_an_evaluation_whose_echoed_layout_is_not_the_runs_is_not_kept(weights) -> None:
    layout = _run_layout()
    strategy = ValidatingFedAvg(min_partners=1, feature_layout=layout)
    metrics = {"num-examples": 50.0, "auc": 0.7}
    replies = [_echoing(reply_message("lender", None, metrics, node_id=1), layout.sha256),
               _echoing(reply_message("bank", None, metrics, node_id=2), "f" * 64),
               _echoing(reply_message("ecommerce", None, {}, refusal="column 'Home': ...",
                                      node_id=3), "e" * 64)]
    assert strategy.aggregate_evaluate(1, replies)["auc"] == pytest.approx(0.7)
    record = strategy.history[-1]
    assert list(record.evaluation) == ["lender"]
    assert "feature layout ffff" in record.rejected["bank"]
    assert record.refused == {"ecommerce": "column 'Home': ..."}


def test_every_instruction_announces_the_runs_layout(weights) -> None:
    from common.protocol import FEATURE_LAYOUT, FEATURE_LAYOUT_SHA256

    layout = _run_layout()
    run = RunConfig(num_server_rounds=1)
    strategy = ValidatingFedAvg(min_partners=1, feature_layout=layout)
    strategy.num_rounds = 1
    grid = InProcessGrid(build_client_app(run.to_flower()), run)
    sent = [*strategy.configure_train(1, arrays_record(weights), ConfigRecord({}), grid),
            *strategy.configure_evaluate(1, arrays_record(weights), ConfigRecord({}), grid)]
    assert len(sent) == 2 * len(PARTNERS)
    for message in sent:
        assert message.content[CONFIG][FEATURE_LAYOUT] == layout.text
        assert message.content[CONFIG][FEATURE_LAYOUT_SHA256] == layout.sha256


def test_partners_refuse_a_run_whose_schema_permutes_their_layout(tmp_path) -> None:
    """End to end in process: a coordinator running a schema that lists `Home`'s categories in
    another order (same width) gets a refusal from every partner, naming the column, and no
    update; model.json names the run's layout hash."""
    from common.data.schema import load_schema
    from common.data.tables import bundled_path

    permuted = tmp_path / "run.toml"
    permuted.write_text(bundled_path("credit_data")[1].read_text().replace(
        '["rent", "owner",', '["owner", "rent",'))
    run = RunConfig(num_server_rounds=1, schema_path=str(permuted), out_dir=str(tmp_path / "out"))
    grid = InProcessGrid(build_client_app(run.to_flower()), run)
    run_federation(grid, run, run_id="1")
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["status"] == "stopped"
    (record,) = history["rounds"]
    assert record["accepted"] == [] and sorted(record["refused"]) == sorted(PARTNERS)
    for reason in record["refused"].values():
        assert "column 'Home': categories ['rent', 'owner'," in reason
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["feature_layout_sha256"] == load_schema(permuted).layout_sha256


def test_a_secure_contribution_with_another_layout_discards_the_aggregate(weights) -> None:
    from server.secure import SecureFit
    from tests.server.test_secure import _fit_results

    layout = _run_layout()
    fedavg = ValidatingFedAvg(min_partners=2, feature_layout=layout)
    fedavg.current_weights = weights
    fit = SecureFit(fedavg, list(weights), ConfigRecord({}), clipping_range=8.0,
                    max_weight=10000.0)
    aggregate = [w + 0.1 for w in weights.values()]
    results = _fit_results(weights, aggregate, **{"feature-layout-sha256": layout.sha256})
    results[0][1].metrics["feature-layout-sha256"] = "f" * 64
    with pytest.raises(TooFewPartners, match="secure aggregate discarded"):
        fit.aggregate_fit(1, results, [])
    assert "feature layout ffff" in fedavg.history[-1].rejected[PARTNERS[0]]
    results[0][1].metrics["feature-layout-sha256"] = layout.sha256
    fit.aggregate_fit(2, results, [])
    assert sorted(fedavg.history[-1].accepted) == sorted(PARTNERS)


def test_a_node_that_never_named_itself_does_not_make_the_run_incomplete() -> None:
    """A SuperNode killed before its first reply and restarted under a new node id: the old id
    failed and is listed, but it may be a partner that contributed under its new id."""
    history = [RoundRecord(round=1, accepted=["lender"], failed={"node-42": "Node Unavailable"}),
               RoundRecord(round=2, accepted=["lender", "bank"])]
    outcomes = partner_outcomes(history)
    assert outcomes["node-42"]["failed"] == 1
    assert never_contributed(outcomes) == ""


class _Nodes:
    """A grid that only lists node ids (what partner sampling reads)."""

    def __init__(self, count: int) -> None:
        self.ids = [1000 + 7 * k for k in range(count)]

    def get_node_ids(self) -> list[int]:
        return list(reversed(self.ids))


@pytest.mark.parametrize(("fraction", "count", "drawn"), [(0.1, 100, 10), (0.5, 5, 2),
                                                          (0.01, 30, 2), (0.99, 3, 2)])
def test_partner_sampling_draws_a_seeded_fraction_but_at_least_min_partners(
        weights, fraction, count, drawn) -> None:
    grid = _Nodes(count)
    strategy = ValidatingFedAvg(min_partners=2, fraction_train=fraction, seed=3)
    rounds = [strategy.sample_partners(r, grid) for r in (1, 2, 3)]
    assert [len(nodes) for nodes in rounds] == [drawn] * 3
    assert all(set(nodes) <= set(grid.ids) and len(set(nodes)) == drawn for nodes in rounds)
    again = ValidatingFedAvg(min_partners=2, fraction_train=fraction, seed=3)
    assert again.sample_partners(2, grid) == rounds[1]  # the same seed draws the same nodes
    if count > drawn + 2:
        assert len({tuple(nodes) for nodes in rounds}) > 1  # each round draws afresh
