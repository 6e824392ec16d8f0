"""Secure aggregation with Flower's SecAgg+: the coordinator only ever sees the sum of the updates.

SecAgg+ exists in Flower's legacy workflow API only. `SecAggPlusWorkflow` runs a round's four
stages (setup, share keys, collect masked vectors, unmask) and hands a legacy
`Strategy.aggregate_fit` the unmasked weighted average, with every contributor's metrics but never
its update. `SecureFit` is that legacy strategy: a thin adapter over the plain path's
`ValidatingFedAvg`, which keeps the round config, the history, the receipts, `min-partners` and
the global model. `run_secure_rounds` is the round loop: SecAgg+ training, then the plain path's
own federated evaluation and end-of-round hook, in the plain path's order (Flower's legacy
`DefaultWorkflow` evaluates in another order and cannot stop a run cleanly).

What the coordinator can still check is the aggregate (keys, shapes, finite) and each partner's
metadata; a bad update cannot be taken out of the sum, so a round whose sum holds an update the
coordinator would have rejected is discarded whole and the run stops with the previous model.
Partners check their own update before masking it (`common.partner.update_problem`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from common.config import RunConfig
from common.errors import TooFewPartners
from common.protocol import (
    ARRAY_KEYS,
    ARRAY_KEYS_SEPARATOR,
    FEATURE_LAYOUT_SHA256,
    LEDGER_ENTRY_SHA256,
    METRICS,
    NUM_EXAMPLES,
    PARTNER,
    REFUSAL_PREFIX,
    REFUSAL_REASON,
    SECURE_INFO_KEYS,
    SERVER_ROUND,
    TRAIN_METRIC_KEYS,
    UPDATE_SHA256,
)
from server.strategy import (
    RoundRecord,
    ValidatingFedAvg,
    check_arrays,
    check_train_metrics,
    error_summary,
    layout_echo_problem,
    train_config,
    unnamed,
    wait_for_partners,
)

log = logging.getLogger(__name__)
# Flower's SecAgg+ defaults: values are quantized onto [0, 2**22) and masked modulo 2**32, so up
# to 2**32 / 2**22 = 1024 partners can be summed without wrapping around.
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
ROUND_TIMEOUT_S = 3600.0  # how long each stage waits for replies (Flower's Strategy.start default)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def reconstruction_threshold(num_partners: int) -> int:
    """Shares needed to unmask: all but one partner's (one may drop out or refuse), at least 2."""
    return max(2, num_partners - 1)


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, keeping the round's protocol state to report a halted round."""

    last_state: WorkflowState | None = None

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Remember the state, then run Flower's setup stage."""
        self.last_state = state
        return super().setup_stage(grid, context, state)


def secagg_workflow(run: RunConfig, num_partners: int) -> _SecAggPlus:
    """SecAgg+ for one round among `num_partners`: every partner holds a share of every other
    partner's secrets (num_shares = all), and unmasking needs `reconstruction_threshold` of them.
    """
    return _SecAggPlus(num_shares=1.0,
                       reconstruction_threshold=reconstruction_threshold(num_partners),
                       max_weight=run.secagg_max_weight,
                       clipping_range=run.secagg_clipping_range,
                       quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE,
                       timeout=ROUND_TIMEOUT_S)


def quantization_error_bound(num_examples: Sequence[float], max_abs: float, *,
                             clipping_range: float, max_weight: float,
                             quantization_range: int = QUANTIZATION_RANGE) -> float:
    """Largest per-coordinate difference between the SecAgg+ aggregate and exact weighted FedAvg.

    Each of the k partners scales its update (|values| <= max_abs <= clipping_range c) by its
    weight ratio n/max_weight quantized to a multiple of 1/T (error <= 1/(2T)), then rounds it
    stochastically onto a grid of step 2c/T (error < one step). The coordinator divides the sum by
    the summed quantized ratios D >= sum(n)/max_weight - k/(2T). Rounding contributes at most
    k*2c/(T*D) and the weight quantization k*max_abs/(T*D); float32 arithmetic adds a few ulps.
    """
    k, t = len(num_examples), quantization_range
    ratio_sum = sum(n / max_weight for n in num_examples) - k / (2 * t)
    ulps = 8 * float(np.finfo(np.float32).eps) * max_abs
    return k * (2 * clipping_range + max_abs) / (t * ratio_sum) + ulps


def _split_metrics(metrics: dict[str, Scalar]) -> tuple[dict[str, Any], dict[str, str]]:
    """A secure reply's metrics: (numbers, info strings)."""
    numbers = {k: v for k, v in metrics.items() if k not in SECURE_INFO_KEYS}
    info = {k: str(v) for k, v in metrics.items() if k in SECURE_INFO_KEYS}
    return numbers, info


def _privacy_figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric train metrics of a reply (what the plain path keeps as `privacy`)."""
    figures = {}
    for key, value in metrics.items():
        if key in TRAIN_METRIC_KEYS and isinstance(value, int | float) \
                and not isinstance(value, bool) and math.isfinite(value):
            figures[key] = float(value)
    return figures


def parse_refusal(reason: str) -> dict[str, Any] | None:
    """The partner info of a refusal sent as an error (None if `reason` is not one)."""
    if not reason.startswith(REFUSAL_PREFIX):
        return None
    try:
        refusal = json.loads(reason[len(REFUSAL_PREFIX):])
    except ValueError:
        return None
    if not (isinstance(refusal, dict) and isinstance(refusal.get(PARTNER), str)
            and isinstance(refusal.get(REFUSAL_REASON), str)
            and isinstance(refusal.get(METRICS, {}), dict)):
        return None
    return refusal


class SecureFit(Strategy):
    """The legacy strategy SecAgg+ drives: round config out, unmasked aggregate in.

    Only `configure_fit` and `aggregate_fit` take part; federated evaluation is the plain path's
    (`ValidatingFedAvg.configure_evaluate` / `aggregate_evaluate`, called by the round loop).
    """

    def __init__(self, fedavg: ValidatingFedAvg, keys: list[str], train_config: ConfigRecord, *,
                 clipping_range: float, max_weight: float) -> None:
        self.fedavg = fedavg
        self.keys = keys
        self.train_config = train_config
        self.clipping_range = clipping_range
        self.max_weight = max_weight
        self.aggregated_rounds: set[int] = set()

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Not used: the round loop sets the initial model."""
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """Every available partner gets the global model and the round's config."""
        self.fedavg.current_weights = dict(zip(self.keys, parameters_to_ndarrays(parameters),
                                               strict=True))
        config: dict[str, Scalar] = dict(self.fedavg.round_config(server_round,
                                                                  self.train_config))
        config[SERVER_ROUND] = server_round
        config[ARRAY_KEYS] = ARRAY_KEYS_SEPARATOR.join(self.keys)  # legacy: scalars only
        wait_for_partners(client_manager.num_available, self.fedavg.min_partners,
                          self.fedavg.wait_seconds, server_round)
        nodes = sorted(client_manager.all().values(), key=lambda proxy: proxy.node_id)
        return [(node, FitIns(parameters, config)) for node in nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Validate what can be validated (each partner's metadata, the aggregate); adopt the
        aggregate, or discard it whole when it holds an update that must not be used."""
        self.aggregated_rounds.add(server_round)
        record = self.fedavg.record_for(server_round)
        self._note_failures(record, failures)
        contributors: list[tuple[str, dict[str, str]]] = []
        problems: dict[str, str] = {}
        for proxy, fitres in results:
            name, info, problem = self._check_contributor(proxy, fitres, record,
                                                          [c for c, _ in contributors])
            if problem:
                problems[name] = problem
            else:
                contributors.append((name, info))
        aggregate, problem = self._aggregate(results)
        if problem or problems:
            why = problem or "it holds updates the coordinator rejects: " + "; ".join(
                f"{name}: {reason}" for name, reason in sorted(problems.items()))
            record.rejected.update(problems)
            record.rejected.update({name: f"update discarded with the whole aggregate ({why})"
                                    for name, _ in contributors})
            raise TooFewPartners(
                f"round {server_round}: secure aggregate discarded: {why}; under secure "
                f"aggregation one update cannot be taken out of the sum, so the run stops with "
                f"the previous model")
        contributors.sort()
        record.accepted.extend(name for name, _ in contributors)
        # The coordinator cannot hash an update it never sees: the receipt names the partner's
        # ledger entry and the update hash the partner declared for what it masked.
        self.fedavg.admit(server_round, [(name, info.get(LEDGER_ENTRY_SHA256, ""),
                                          info.get(UPDATE_SHA256, ""))
                                         for name, info in contributors])
        self.fedavg.adopt(server_round, ArrayRecord({k: Array(v) for k, v in aggregate.items()}))
        total = sum(float(fitres.num_examples) for _, fitres in results)
        return (ndarrays_to_parameters([aggregate[k] for k in self.keys]),
                {NUM_EXAMPLES: total, "partners": float(len(contributors))})

    def _check_contributor(self, proxy: ClientProxy, fitres: FitRes, record: RoundRecord,
                           seen: list[str]) -> tuple[str, dict[str, str], str]:
        """(partner name, info, why its contribution must not be used or '')."""
        metrics, info = _split_metrics(dict(fitres.metrics))
        name = info.get(PARTNER) or unnamed(proxy.node_id)
        record.privacy[name] = _privacy_figures(metrics)
        problem = check_train_metrics(metrics)
        if not problem and float(metrics[NUM_EXAMPLES]) != float(fitres.num_examples):
            problem = f"{NUM_EXAMPLES} differs from the weight it put into the sum"
        if not problem and fitres.num_examples > self.max_weight:
            problem = (f"{NUM_EXAMPLES} {fitres.num_examples} exceeds secagg-max-weight="
                       f"{self.max_weight:g}: its weight overflowed the quantized weighting")
        if not problem and info.get(REFUSAL_REASON):
            problem = "declares a refusal but put an update into the sum"
        if not problem and self.fedavg.layout_sha256 is not None:
            problem = layout_echo_problem(info.get(FEATURE_LAYOUT_SHA256, ""),
                                          self.fedavg.layout_sha256)
        if not problem and name in seen:
            problem = "a second update under the same partner name in this round"
        if not problem and self.fedavg.receipts is not None and not (
                _SHA256.fullmatch(info.get(LEDGER_ENTRY_SHA256, ""))
                and _SHA256.fullmatch(info.get(UPDATE_SHA256, ""))):
            problem = ("no ledger entry hash or update hash: this coordinator requires partner "
                       "ledgers")
        if problem:
            log.warning("round %d: contribution of %s is unusable: %s",
                        record.round, name, problem)
        return name, info, problem

    def _aggregate(self, results: list[tuple[ClientProxy, FitRes]]
                   ) -> tuple[dict[str, np.ndarray], str]:
        """The unmasked aggregate as named arrays in the global model's dtypes, or why not."""
        if not results:
            return {}, "no partner contributed"
        arrays = parameters_to_ndarrays(results[0][1].parameters)
        if len(arrays) != len(self.keys):
            return {}, f"the aggregate has {len(arrays)} arrays, the global model {len(self.keys)}"
        reference = self.fedavg.current_weights
        named = {k: np.asarray(a, dtype=reference[k].dtype) if a.shape == reference[k].shape
                 else a for k, a in zip(self.keys, arrays, strict=True)}
        problem = check_arrays(named, reference)
        if problem:
            return named, f"the aggregate is unusable: {problem}"
        # Checked updates lie within +-c, so their weighted average does too (up to quantization
        # error): a value beyond that comes from a partner that bypassed the checks.
        limit = self.clipping_range + quantization_error_bound(
            [fitres.num_examples for _, fitres in results], self.clipping_range,
            clipping_range=self.clipping_range, max_weight=self.max_weight)
        outside = sorted(k for k, a in named.items() if np.any(np.abs(a) > limit))
        if outside:
            return named, (f"the aggregate has values outside +-{self.clipping_range:g} "
                           f"(secagg-clipping-range) in {outside}: a partner bypassed its checks")
        return named, ""

    def _note_failures(self, record: RoundRecord,
                       failures: list[tuple[ClientProxy, FitRes] | BaseException]) -> None:
        """Refusals (sent as errors, to drop out of the protocol) and failures, by partner."""
        seen: set[int] = set()
        for failure in failures:
            if isinstance(failure, tuple):
                proxy, fitres = failure
                record.failed[unnamed(proxy.node_id)] = error_summary(fitres.status.message)
                continue
            error = failure.args[0] if failure.args else failure
            if id(error) in seen:  # Flower lists a failed reply of the collect stage twice
                continue
            seen.add(id(error))
            reason = str(getattr(error, "reason", error))
            refusal = parse_refusal(reason)
            if refusal is None:
                # Flower reports a failed stage without its node: number them instead.
                record.failed[f"unidentified-{len(seen)}"] = error_summary(reason)
                log.warning("round %d: a partner failed: %s", record.round,
                            error_summary(reason))
                continue
            name = refusal[PARTNER]
            record.refused[name] = refusal[REFUSAL_REASON][:300]
            record.privacy[name] = _privacy_figures(refusal.get(METRICS, {}))
            log.warning("round %d: partner %s refused: %s", record.round, name,
                        record.refused[name])

    def halted(self, server_round: int, workflow: _SecAggPlus) -> None:
        """Record a round SecAgg+ halted before unmasking (too few partners left), then stop."""
        record = self.fedavg.record_for(server_round)
        state = workflow.last_state or WorkflowState()
        self._note_failures(record, list(state.failures))
        for proxy, fitres in state.legacy_results:
            metrics, info = _split_metrics(dict(fitres.metrics))
            name = info.get(PARTNER) or unnamed(proxy.node_id)
            record.privacy[name] = _privacy_figures(metrics)
            record.rejected[name] = "update never unmasked: secure aggregation halted"
        raise TooFewPartners(
            f"round {server_round}: secure aggregation halted: {len(state.active_node_ids)} of "
            f"{len(state.sampled_node_ids)} partner(s) still in the protocol, fewer than the "
            f"{state.threshold} needed to unmask the sum (a sum of fewer partners would expose "
            f"their updates); refused: {record.refused or 'none'}; failed: "
            f"{record.failed or 'none'}")

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy,
                                                                        EvaluateIns]]:
        """Not used: federated evaluation goes through `ValidatingFedAvg`."""
        return []

    def aggregate_evaluate(self, server_round: int,
                           results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
                           ) -> tuple[float | None, dict[str, Scalar]]:
        """Not used: federated evaluation goes through `ValidatingFedAvg`."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        """Not used: the round loop's end-of-round hook evaluates centrally."""
        return None


def run_secure_rounds(grid: Grid, run: RunConfig, strategy: ValidatingFedAvg,
                      initial: ArrayRecord,
                      end_of_round: Callable[[int, ArrayRecord], object]) -> ArrayRecord:
    """Every round: SecAgg+ training, then the plain path's federated evaluation (every
    `evaluate-every` rounds and the last) and `end_of_round`. Returns the final global model;
    raises TooFewPartners when a round cannot be aggregated."""
    fit = SecureFit(strategy, list(initial.keys()), train_config(run),
                    clipping_range=run.secagg_clipping_range, max_weight=run.secagg_max_weight)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}),
                            config=ServerConfig(num_rounds=run.num_server_rounds),
                            strategy=fit, client_manager=SimpleClientManager())
    thread, stop, registered = start_update_client_manager_thread(grid, context.client_manager)
    registered.wait()
    round_config = ConfigRecord()
    context.state.config_records[MAIN_CONFIGS_RECORD] = round_config
    arrays = initial
    log.info("secure aggregation (SecAgg+) on: clipping range +-%g, max weight %g",
             run.secagg_clipping_range, run.secagg_max_weight)
    try:
        for server_round in range(1, run.num_server_rounds + 1):
            wait_for_partners(context.client_manager.num_available, run.min_partners,
                              run.wait_for_partners, server_round)
            workflow = secagg_workflow(run, context.client_manager.num_available())
            round_config[WorkflowKey.CURRENT_ROUND] = server_round
            context.state.array_records[MAIN_PARAMS_RECORD] = arrays
            workflow(grid, context)
            if server_round not in fit.aggregated_rounds:
                fit.halted(server_round, workflow)
            assert strategy.latest_arrays is not None
            arrays = strategy.latest_arrays
            replies = grid.send_and_receive(
                strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid),
                timeout=ROUND_TIMEOUT_S)
            strategy.aggregate_evaluate(server_round, replies)
            end_of_round(server_round, arrays)
    finally:
        stop.set()
        thread.join()
    return arrays
