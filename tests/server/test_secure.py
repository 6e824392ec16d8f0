"""Secure aggregation (SecAgg+): the coordinator sees only the sum, which matches plain FedAvg
within the quantization bound; partners check their own updates; the audit still verifies.

Most tests drive the real ServerApp and ClientApp code through `InProcessGrid`, a Flower Grid that
delivers every message to in-process ClientApps through Flower's wire format (fast, and it sees
every message the coordinator receives); one slow test runs Flower's Simulation Engine.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.serverapp import Grid
from flwr.supercore.run import Run

import clients.app as client_module
import common.partner as partner_module
from clients.app import build_client_app
from common.config import RunConfig
from common.data.scenarios import SCENARIOS, load_scenario_partner
from common.errors import TooFewPartners
from common.privacy.audit import verify
from common.privacy.crypto import generate_signing_key, hash_weights, write_key_pair
from common.privacy.ledger import read_lines
from common.protocol import SECURE_INFO_KEYS, TRAIN_METRIC_KEYS
from server.app import run_federation
from server.secure import (
    QUANTIZATION_RANGE,
    SecureFit,
    quantization_error_bound,
    reconstruction_threshold,
)
from server.strategy import ValidatingFedAvg
from tests.flower_helpers import initial_weights, node_context, reply_message, set_task_identity

PARTNERS = SCENARIOS["credit_data"].partners  # partition ids 0, 1, 2


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


class InProcessGrid(Grid):
    """Delivers each message to its node's ClientApp in this process. Messages cross as Flower
    serializes them (nodes share no objects); a ClientApp exception becomes an error reply and
    leaves the node's Context as it was, as in Flower's runtime. Keeps every reply received."""

    def __init__(self, client_app: ClientApp, run: RunConfig) -> None:
        self.client_app = client_app
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i,
                                          node_config={"partition-id": i,
                                                       "num-partitions": len(PARTNERS)},
                                          state=RecordDict(), run_config=run.to_flower())
                         for i in range(len(PARTNERS))}
        self.received: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            delivered = message_from_proto(message_to_proto(msg))
            context = copy.deepcopy(self.contexts[node])
            try:
                reply = self.client_app(delivered, context)
                self.contexts[node] = context
            except Exception as exc:  # noqa: BLE001 - reported as Flower does
                reply = Message(Error(code=2, reason=f"{type(exc)}:<'{exc}'>"),
                                reply_to=delivered)
            ids.append(uuid.uuid4().hex)
            self._replies[ids[-1]] = message_from_proto(message_to_proto(reply))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = [self._replies.pop(i) for i in message_ids]
        self.received.extend(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@dataclass
class Federation:
    """What a run left: its outputs and what the spies saw."""

    run: RunConfig
    grid: InProcessGrid
    history: dict
    updates: dict[int, dict[str, tuple[dict[str, np.ndarray], float]]] = field(
        default_factory=dict)  # round -> partner -> (unmasked update, num-examples)
    aggregates: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, np.ndarray]:
        state = torch.load(Path(self.run.out_dir) / "model.pt", weights_only=True)
        return {k: v.numpy() for k, v in state.items()}


@pytest.fixture(scope="module")
def federate() -> Iterator[Callable[..., Federation]]:
    """Run a federation in process; spies record each partner's update and each aggregate."""
    def run_once(run: RunConfig, corrupt: dict[str, float] | None = None) -> Federation:
        set_task_identity()  # module-scoped fixtures run before the autouse fixture
        result = Federation(run, InProcessGrid(build_client_app(run.to_flower()), run), {})
        sizes = {len(load_scenario_partner(run.scenario, i, seed=run.seed).train): name
                 for i, name in enumerate(PARTNERS)}
        real_train, real_train_round = partner_module.train, partner_module.train_round
        real_adopt = ValidatingFedAvg.adopt

        def train(model, split, settings, **kwargs):  # a partner whose training goes wrong
            outcome = real_train(model, split, settings, **kwargs)
            value = (corrupt or {}).get(sizes[len(split)])
            if value is not None:
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.fill_(value)
            return outcome

        def train_round(partner, run_, state, weights, requested, server_round, data,
                        **kwargs):
            reply = real_train_round(partner, run_, state, weights, requested, server_round,
                                     data, **kwargs)
            if reply.weights is not None:
                result.updates.setdefault(server_round, {})[partner.partner] = (
                    reply.weights, reply.metrics["num-examples"])
            return reply

        def adopt(self, server_round, arrays):
            result.aggregates[server_round] = {k: a.numpy() for k, a in arrays.items()}
            real_adopt(self, server_round, arrays)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(partner_module, "train", train)
            patch.setattr(partner_module, "train_round", train_round)
            patch.setattr(ValidatingFedAvg, "adopt", adopt)
            try:
                run_federation(result.grid, run, run_id="1")
            finally:
                result.history = json.loads((Path(run.out_dir) / "history.json").read_text())
        return result

    yield run_once


def _with_ledgers(run: RunConfig, root: Path) -> RunConfig:
    keys = root / "keys"
    for name in [*PARTNERS, "coordinator"]:
        write_key_pair(generate_signing_key(), keys, name)
    return replace(run, sim_ledger_dir=str(root / "ledgers"), sim_keys_dir=str(keys),
                   receipts_path=str(root / "receipts.jsonl"),
                   receipt_key=str(keys / "coordinator.key"))


@pytest.fixture(scope="module")
def runs(federate, tmp_path_factory) -> tuple[Federation, Federation]:
    """The same seeded 2-round, 3-partner DP federation, plain and with SecAgg+ (and ledgers)."""
    root = tmp_path_factory.mktemp("secagg")
    base = RunConfig(num_server_rounds=2, evaluate_every=1)
    plain = federate(replace(base, out_dir=str(root / "plain")))
    secure = federate(_with_ledgers(replace(base, secure_aggregation=True,
                                            out_dir=str(root / "secure")), root))
    return plain, secure


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def _plain_fedavg(updates: dict[str, tuple[dict[str, np.ndarray], float]]
                  ) -> dict[str, np.ndarray]:
    """What the plain path's strategy aggregates from these updates."""
    weights = next(iter(updates.values()))[0]
    strategy = ValidatingFedAvg(min_partners=1)
    strategy.current_weights = weights
    replies = [reply_message(name, update, {"num-examples": n}, node_id=i)
               for i, (name, (update, n)) in enumerate(sorted(updates.items()))]
    arrays, _ = strategy.aggregate_train(1, replies)
    return {k: a.numpy() for k, a in arrays.items()}


def _bound(run: RunConfig, updates: dict[str, tuple[dict[str, np.ndarray], float]]) -> float:
    largest = max(float(np.max(np.abs(w))) for update, _ in updates.values()
                  for w in update.values())
    return quantization_error_bound([n for _, n in updates.values()], largest,
                                    clipping_range=run.secagg_clipping_range,
                                    max_weight=run.secagg_max_weight)


def test_secure_aggregate_matches_plain_fedavg_within_the_quantization_bound(runs) -> None:
    plain, secure = runs
    assert plain.history["status"] == secure.history["status"] == "completed"
    # Same seeded simulation: round 1 starts from the same model, so the partners send the same
    # updates with and without SecAgg+, and the two aggregates may differ only by quantization.
    for name in PARTNERS:
        assert hash_weights(plain.updates[1][name][0]) == hash_weights(secure.updates[1][name][0])
    bound = _bound(secure.run, secure.updates[1])
    diff = _max_diff(secure.aggregates[1], plain.aggregates[1])
    assert 0 < diff <= bound < 1e-3, (diff, bound)
    # Every round: the secure sum against plain FedAvg of the very updates that were masked.
    for server_round in (1, 2):
        updates = secure.updates[server_round]
        assert sorted(updates) == sorted(PARTNERS)
        diff = _max_diff(secure.aggregates[server_round], _plain_fedavg(updates))
        assert 0 < diff <= _bound(secure.run, updates) < 1e-3
    # The saved model is the last secure aggregate; the runs' final models stay close.
    assert _max_diff(secure.model, secure.aggregates[2]) == 0
    assert _max_diff(secure.model, plain.model) < 1e-3


def test_secure_run_keeps_the_plain_outputs(runs) -> None:
    plain, secure = runs
    for federation in (plain, secure):
        rounds = federation.history["rounds"]
        assert [r["round"] for r in rounds] == [1, 2]
        for record in rounds:
            assert sorted(record["accepted"]) == sorted(PARTNERS)
            assert set(record["evaluation"]) == set(PARTNERS)  # evaluate-every=1
            assert set(record["privacy"]) == set(PARTNERS)
            assert all(0 < p["epsilon-spent"] <= 3.0 for p in record["privacy"].values())
            assert record["refused"] == record["rejected"] == record["failed"] == {}
    assert secure.history["rounds"][-1]["aggregate_sha256"] == hash_weights(secure.model)
    meta = json.loads((Path(secure.run.out_dir) / "model.json").read_text())
    assert meta["config"]["secure-aggregation"] is True and meta["rounds_completed"] == 2
    # Same privacy accounting with and without SecAgg+: the partners ran the same mechanism.
    for name in PARTNERS:
        assert (secure.history["rounds"][0]["privacy"][name]
                == plain.history["rounds"][0]["privacy"][name])


def test_the_coordinator_never_receives_an_individual_update(runs) -> None:
    _, secure = runs
    train_replies = [m for m in secure.grid.received if m.metadata.message_type == "train"]
    masked = [m for m in train_replies
              if Key.MASKED_PARAMETERS in m.content.config_records.get(RECORD_KEY_CONFIGS, {})]
    assert len(masked) == 2 * len(PARTNERS)
    for msg in secure.grid.received:
        assert not msg.has_error()
        for record in msg.content.array_records.values():
            assert len(record) == 0  # secaggplus_mod emptied the update before replying
        metrics = msg.content.config_records.get("fitres.metrics")
        if metrics is not None:
            assert set(metrics) <= set(TRAIN_METRIC_KEYS) | set(SECURE_INFO_KEYS)
    # What a masked vector holds is indistinguishable from noise: compared with the partner's
    # own quantized update (the first entry is its quantized weight), it is off by far more
    # than the rounding step almost everywhere.
    clip, t = secure.run.secagg_clipping_range, QUANTIZATION_RANGE
    for server_round, (name, node) in [(r, p) for r in (1, 2) for p in zip(
            PARTNERS, secure.grid.contexts, strict=True)]:
        update, n = secure.updates[server_round][name]
        ratio = round(n / secure.run.secagg_max_weight * t) / t
        quantized = np.concatenate([((np.clip(update[k] * ratio, -clip, clip) + clip)
                                     * t / (2 * clip)).ravel() for k in update])
        reply = next(m for m in masked if m.metadata.src_node_id == node
                     and m.metadata.group_id == str(server_round))
        sent = np.concatenate([bytes_to_ndarray(b).ravel() for b in reply.content.config_records[
            RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]])[1:].astype(np.float64)
        assert sent.shape == quantized.shape
        assert np.mean(np.abs(sent - quantized) <= 2) < 0.05


def test_ledgers_and_receipts_of_a_secure_run_pass_the_audit(runs) -> None:
    _, secure = runs
    ledgers = sorted(Path(secure.run.sim_ledger_dir).glob("*.jsonl"))
    assert [p.stem for p in ledgers] == sorted(PARTNERS)
    result = verify(ledgers, Path(secure.run.sim_keys_dir), Path(secure.run.receipts_path))
    assert result.ok, [str(f) for f in result.findings]
    assert result.receipts_checked == 2 * len(PARTNERS)
    receipts = [entry for _, entry in read_lines(Path(secure.run.receipts_path))[0]]
    for receipt in receipts:  # the partner-declared hash is the one its ledger logged
        update, _ = secure.updates[receipt["round"]][receipt["partner"]]
        assert receipt["update_sha256"] == hash_weights(update)


def _stopped(federation: Federation) -> str:
    assert federation.history["status"] == "stopped"
    return federation.history["message"]


def test_non_finite_update_is_refused_by_its_partner_and_the_round_goes_on(
        federate, tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=1, secure_aggregation=True, out_dir=str(tmp_path))
    federation = federate(run, corrupt={"lender": float("nan")})
    # The lender never contributed an accepted update: the run says so instead of "completed".
    assert federation.history["status"] == "incomplete"
    assert federation.history["message"].startswith("lender never contributed")
    (record,) = federation.history["rounds"]
    assert record["refused"] == {"lender": "local training diverged (non-finite weights)"}
    assert sorted(record["accepted"]) == ["bank", "ecommerce"]
    assert record["privacy"]["lender"]["epsilon-spent"] > 0  # its noisy steps still count
    assert all(np.all(np.isfinite(w)) for w in federation.model.values())
    updates = federation.updates[1]
    assert sorted(updates) == ["bank", "ecommerce"]
    assert _max_diff(federation.model, _plain_fedavg(updates)) <= _bound(run, updates)


def test_update_outside_the_clipping_range_is_refused_and_min_partners_stops_the_run(
        federate, tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=2, secure_aggregation=True, min_partners=3,
                    out_dir=str(tmp_path))
    federation = federate(run, corrupt={"bank": 9.0})  # Flower would clip it to 8 silently
    (record,) = federation.history["rounds"]
    assert "outside +-8" in record["refused"]["bank"]
    assert sorted(record["accepted"]) == ["ecommerce", "lender"]
    assert "fewer than min-partners=3" in _stopped(federation)
    assert _max_diff(federation.model, initial_weights(run)) == 0  # the previous model is kept


def test_round_halts_before_unmasking_when_a_single_update_would_be_exposed(
        federate, tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=1, secure_aggregation=True, out_dir=str(tmp_path))
    federation = federate(run, corrupt={"bank": 50.0, "lender": float("inf")})
    (record,) = federation.history["rounds"]
    assert set(record["refused"]) == {"bank", "lender"}
    assert record["accepted"] == [] and federation.aggregates == {}
    assert record["rejected"] == {"ecommerce": "update never unmasked: secure aggregation "
                                               "halted"}
    assert "secure aggregation halted" in _stopped(federation)
    assert _max_diff(federation.model, initial_weights(run)) == 0


def _fit_results(weights: dict[str, np.ndarray], aggregate: list[np.ndarray],
                 **metrics: float | str) -> list[tuple[GridClientProxy, FitRes]]:
    results = []
    for i, name in enumerate(PARTNERS):
        fitres = FitRes(Status(Code.OK, "Success"), ndarrays_to_parameters(aggregate), 500,
                        {"num-examples": 500.0, "refused": 0.0, "partner": name,
                         "refusal-reason": "", **metrics})
        results.append((GridClientProxy(node_id=100 + i, grid=None, run_id=1), fitres))
    return results


@pytest.mark.parametrize(("change", "expected"), [
    ({"aggregate": "nan"}, "NaN or Inf"),
    ({"aggregate": "shape"}, "shape"),
    ({"aggregate": "range"}, "outside +-8"),
    ({"metric": {"raw-income-mean": 42.0}}, "unknown metric keys"),
    ({"metric": {"refusal-reason": "budget"}}, "declares a refusal"),
])
def test_coordinator_discards_an_aggregate_it_cannot_vouch_for(change, expected) -> None:
    weights = initial_weights(RunConfig())
    fedavg = ValidatingFedAvg(min_partners=2)
    fedavg.current_weights = weights
    keys = list(weights)
    fit = SecureFit(fedavg, keys, ConfigRecord({}), clipping_range=8.0, max_weight=10000.0)
    aggregate = [weights[k] + 0.1 for k in keys]
    if change.get("aggregate") == "nan":
        aggregate[0] = aggregate[0] * np.nan
    elif change.get("aggregate") == "range":  # a partner that bypassed its checks
        aggregate[-1] = aggregate[-1] + 8.5
    elif change.get("aggregate") == "shape":
        aggregate[0] = np.zeros((2, 2), dtype=np.float32)
    results = _fit_results(weights, aggregate, **change.get("metric", {}))
    with pytest.raises(TooFewPartners, match="secure aggregate discarded"):
        fit.aggregate_fit(1, results, [])
    assert fedavg.latest_arrays is None  # the global model stays what it was
    record = fedavg.history[-1]
    assert record.accepted == [] and set(record.rejected) == set(PARTNERS)
    assert any(expected in reason for reason in record.rejected.values())


def test_coordinator_adopts_a_valid_aggregate_and_records_refusals() -> None:
    weights = initial_weights(RunConfig())
    fedavg = ValidatingFedAvg(min_partners=2)
    fedavg.current_weights = weights
    fit = SecureFit(fedavg, list(weights), ConfigRecord({}), clipping_range=8.0,
                    max_weight=10000.0)
    aggregate = [weights[k].astype(np.float64) + 0.25 for k in weights]
    refusal = Error(code=4030, reason='fedcredit-refusal {"partner": "mallory", '
                                      '"refusal-reason": "budget", "metrics": {"steps": 0}}')
    parameters, metrics = fit.aggregate_fit(1, _fit_results(weights, aggregate),
                                            [Exception(refusal), Exception(Error(2, "boom"))])
    record = fedavg.history[-1]
    assert record.accepted == sorted(PARTNERS) and metrics["partners"] == 3.0
    assert record.refused == {"mallory": "budget"} and record.privacy["mallory"] == {"steps": 0.0}
    assert list(record.failed.values()) == ["boom"]
    adopted = {k: a.numpy() for k, a in fedavg.latest_arrays.items()}
    for key, reference in weights.items():
        assert adopted[key].dtype == reference.dtype
        np.testing.assert_allclose(adopted[key], reference + 0.25, rtol=1e-6)


def test_partner_with_more_rows_than_the_max_weight_refuses_before_training(
        tmp_path: Path) -> None:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import FitIns

    run = RunConfig(secure_aggregation=True, secagg_max_weight=100.0)
    weights = initial_weights(run)
    fitins = FitIns(ndarrays_to_parameters(list(weights.values())),
                    {"server-round": 1, "local-epochs": 1.0, "array-keys": ",".join(weights)})
    msg = Message(content=compat.fitins_to_recorddict(fitins, keep_input=True), dst_node_id=1,
                  message_type="train")
    reply = client_module.train(msg, node_context({"partition-id": 0}, run), run.to_flower())
    result = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert "exceeds secagg-max-weight=100" in str(result.metrics["refusal-reason"])
    assert result.parameters.tensors == [] and result.metrics["refused"] == 1.0
    # Checked on the released noisy count (the exact size never decides anything public), so
    # only the count is spent: no training step.
    assert result.num_examples > 100 and "steps" not in result.metrics
    assert 0 < result.metrics["epsilon-spent"] < 0.1 * run.sim_epsilon


def test_threshold_tolerates_one_dropout_from_three_partners() -> None:
    assert [reconstruction_threshold(n) for n in (2, 3, 4, 10)] == [2, 2, 3, 9]


@pytest.mark.parametrize(("raw", "key"), [
    ({"secure-aggregation": "maybe"}, "secure-aggregation"),
    ({"secagg-clipping-range": 0.0}, "secagg-clipping-range"),
    ({"secagg-clipping-range": float("nan")}, "secagg-clipping-range"),
    ({"secagg-max-weight": 0.5}, "secagg-max-weight"),
    ({"secagg-max-weight": float("inf")}, "secagg-max-weight"),
    ({"secure-aggregation": True, "min-partners": 1}, "min-partners"),
])
def test_bad_secure_aggregation_config_names_the_key(raw, key) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        RunConfig.from_flower(raw)


@pytest.mark.slow
def test_secure_run_in_the_simulation_engine_passes_the_audit(tmp_path: Path) -> None:
    from flwr.simulation import run_simulation

    from server.app import build_server_app

    run = _with_ledgers(RunConfig(num_server_rounds=1, secure_aggregation=True,
                                  out_dir=str(tmp_path / "fed")), tmp_path)
    config = run.to_flower()
    run_simulation(build_server_app(config), build_client_app(config),
                   num_supernodes=len(PARTNERS),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    history = json.loads((tmp_path / "fed" / "history.json").read_text())
    assert history["status"] == "completed", history["message"]
    assert sorted(history["rounds"][0]["accepted"]) == sorted(PARTNERS)
    result = verify(sorted((tmp_path / "ledgers").glob("*.jsonl")), tmp_path / "keys",
                    tmp_path / "receipts.jsonl")
    assert result.ok and result.receipts_checked == len(PARTNERS), result.findings
