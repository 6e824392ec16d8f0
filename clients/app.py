"""The partner's Flower ClientApp: converts Flower records to plain values and calls common/.

A reply carries only an ArrayRecord (the DP update), a MetricRecord (numbers listed in
`common.protocol.TRAIN_METRIC_KEYS` / `EVALUATE_METRIC_KEYS`) and a ConfigRecord `info` with the
partner's name, the refusal reason if it refused, the hash of the ledger entry it wrote for
the round, and the hash of its schema's encoded feature layout (it refuses, before reading its
data, an instruction whose announced layout is not identical to its own). Raw rows never leave
this process.

Under secure aggregation (run config `secure-aggregation`) train instructions come through Flower's
SecAgg+ in the legacy format (`fitins.*`); `secure_aggregation_mod` applies Flower's
`secaggplus_mod` to exactly those messages, so the update leaves the partner only masked. The
partner checks its update before masking it (finite, within +-`secagg-clipping-range`, weight at
most `secagg-max-weight`); a partner that refuses drops out of the round with an error that
carries its refusal, as a plain reply would.

Flower starts a fresh ClientApp process for every message, so this module imports only Flower and
the config: the handlers load the partner's code (torch, and Opacus when it trains) when called,
and a SecAgg+ stage that only exchanges keys or shares never loads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import flwr.compat.common.recorddict_compat as compat
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from clients.context import read_config, read_run_config
from clients.timing import timing_mod
from clients.vertical.routing import register_vertical
from common.config import NODE_PARTITION, NODE_PARTNER, RunConfig
from common.errors import CryptoError, PartnerError
from common.privacy.crypto import hash_weights
from common.protocol import (
    ARRAY_KEYS,
    ARRAY_KEYS_SEPARATOR,
    ARRAYS,
    CONFIG,
    EVALUATE_RECEIVED,
    EVALUATION_PREFIX,
    FEATURE_LAYOUT_SHA256,
    INFO,
    LEDGER_ENTRY_SHA256,
    METRICS,
    METRICS_NOT_RELEASED,
    NUM_EXAMPLES,
    PARTNER,
    PARTNER_FAILURE_TEXT,
    PARTNER_STATE,
    REFUSAL_PREFIX,
    REFUSAL_REASON,
    REFUSED,
    SECURE_PARAMETERS,
    SECURE_REFUSAL_CODE,
    SERVER_ROUND,
    UPDATE_SHA256,
)

if TYPE_CHECKING:
    from common.config import PartnerConfig
    from common.data.tables import PartnerData
    from common.partner import TrainReply

log = logging.getLogger(__name__)


def _weights(msg: Message) -> dict:
    return {k: a.numpy() for k, a in msg.content[ARRAYS].items()}


def failure_text(context: Context, overrides: dict | None, exc: Exception) -> str:
    """What the coordinator learns of a partner-side failure. A deployed partner sends its name
    and the exception's kind only (`PARTNER_FAILURE_TEXT`): data validation errors quote cell
    values and file paths, which must not leave it. A simulated partner (no node config
    `partner`) adds the exception's own message: the analyst holds every partner's data there,
    and there is no partner log to read."""
    node, kind = context.node_config, type(exc).__name__
    if NODE_PARTNER in node or NODE_PARTITION not in node:
        return PARTNER_FAILURE_TEXT.format(name=str(node.get(NODE_PARTNER, "?")), kind=kind)
    try:
        name = read_config(context, overrides or {})[1].partner
    except Exception:  # noqa: BLE001 - the config may be what failed
        name = f"partition-{node[NODE_PARTITION]}"
    return f"partner {name!r} failed ({kind}): {' '.join(str(exc).split())[:200]}"


def _guarded(handler):
    """Log a failure in full on the partner's side; send the coordinator `failure_text`."""
    def run(msg: Message, context: Context, overrides: dict | None = None) -> Message:
        try:
            return handler(msg, context, overrides)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none leaks
            log.exception("partner-side failure in %s", handler.__name__)
            raise PartnerError(failure_text(context, overrides, exc)) from None
    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _secure_instruction(msg: Message) -> tuple[dict, dict, list[str]]:
    """(global weights, round config, array keys) of a legacy SecAgg+ train instruction."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    requested = dict(fitins.config)
    names = requested.pop(ARRAY_KEYS, None)
    if not isinstance(names, str):
        raise ValueError(f"secure train request without its {ARRAY_KEYS!r}")
    keys = names.split(ARRAY_KEYS_SEPARATOR)
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(arrays) != len(keys):
        raise ValueError(f"secure train request has {len(arrays)} arrays for {len(keys)} keys")
    return dict(zip(keys, arrays, strict=True)), requested, keys


@_guarded
def train(msg: Message, context: Context, overrides: dict | None = None) -> Message:
    """Train one round under the partner's own DP budget, or refuse with a reason."""
    run, partner = read_config(context, overrides or {})
    from common.partner import (
        PartnerState,
        TrainReply,
        check_layout,
        limits_refusal,
        load_data,
        signing_key_refusal,
        train_round,
    )

    state = PartnerState.from_dict(dict(context.state.get(PARTNER_STATE, ConfigRecord())))
    secure = SECURE_PARAMETERS in msg.content.array_records
    if secure:
        weights, requested, keys = _secure_instruction(msg)
    else:
        weights, requested = _weights(msg), dict(msg.content.get(CONFIG, ConfigRecord()))
    server_round = requested.get(SERVER_ROUND)
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 1:
        raise ValueError(f"train request without a valid {SERVER_ROUND!r} (got {server_round!r})")
    layout, refusal = check_layout(partner, run, requested)  # before its data is even read
    refusal = refusal or limits_refusal(partner, run, requested, weights, server_round)
    if refusal:
        reply, evaluation = TrainReply(None, {REFUSED: 1.0}, refusal), {}
    else:
        try:
            data = load_data(partner, run)
        except CryptoError as exc:  # a deployed partner's split key derives from its signing key
            reply, evaluation = signing_key_refusal(partner, exc), {}
        else:
            evaluation = _evaluation_of_received(run, partner, weights, requested, data)  # first
            reply = train_round(partner, run, state, weights, requested, server_round, data,
                                run_id=str(context.run_id),
                                value_bound=run.secagg_clipping_range if secure else None,
                                max_weight=run.secagg_max_weight if secure else None)
    context.state[PARTNER_STATE] = ConfigRecord(state.to_dict())
    info = {PARTNER: partner.partner, REFUSAL_REASON: reply.refusal,
            LEDGER_ENTRY_SHA256: reply.ledger_entry_sha256, FEATURE_LAYOUT_SHA256: layout}
    if secure:
        return _secure_reply(msg, reply, info, keys)
    metrics = {**reply.metrics, **evaluation}
    content = RecordDict({METRICS: MetricRecord(metrics), INFO: ConfigRecord(info)})
    if reply.weights is not None:
        content[ARRAYS] = ArrayRecord({k: Array(v) for k, v in reply.weights.items()})
    return Message(content=content, reply_to=msg)


def _evaluation_of_received(run: RunConfig, partner: PartnerConfig, weights: dict,
                            requested: dict, data: PartnerData) -> dict[str, float]:
    """When the coordinator asks (`EVALUATE_RECEIVED`) and the partner releases metrics
    (`release-metrics`): the metrics of the global model this message carried on the partner's
    own test split, as a separate evaluate message would have reported them, prefixed for the
    train reply."""
    if requested.get(EVALUATE_RECEIVED) is not True or not partner.release_metrics:
        return {}
    from common.partner_evaluation import evaluate_round

    try:
        metrics = evaluate_round(run, weights, data)
    except Exception:  # noqa: BLE001 - a failed evaluation must not cost the round's training
        log.exception("partner-side failure evaluating the received model; none is reported")
        return {}
    return {EVALUATION_PREFIX + key: value for key, value in metrics.items()}


def _secure_reply(msg: Message, reply: TrainReply, info: dict[str, str],
                  keys: list[str]) -> Message:
    """A legacy fit reply for `secaggplus_mod` to mask: the update in the instruction's key order,
    the metrics and info (with the hash of the update, as the ledger entry logged it)."""
    arrays = [] if reply.weights is None else [reply.weights[k] for k in keys]
    update_hash = "" if reply.weights is None else hash_weights(reply.weights)
    fitres = FitRes(status=Status(code=Code.OK, message="Success"),
                    parameters=ndarrays_to_parameters(arrays),
                    num_examples=int(reply.metrics.get(NUM_EXAMPLES, 0)),
                    metrics={**reply.metrics, **info, UPDATE_SHA256: update_hash})
    return Message(content=compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


class _Refused(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside `secaggplus_mod` to leave the round without a masked update."""


def make_secure_aggregation_mod(overrides: dict) -> Callable[
        [Message, Context, ClientAppCallable], Message]:
    """A mod that runs Flower's `secaggplus_mod` on SecAgg+ train messages only (the mod reads
    the SecAgg+ config record of every train message it sees) and turns a refusal into a
    drop-out: an error reply carrying the refusal, the partner's state kept."""
    def secure_aggregation_mod(msg: Message, context: Context,
                               call_next: ClientAppCallable) -> Message:
        if not (msg.metadata.message_type == MessageType.TRAIN and msg.has_content()
                and RECORD_KEY_CONFIGS in msg.content.config_records):
            return call_next(msg, context)
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        if configs.get(Key.STAGE) == Stage.SETUP:
            _check_protocol(configs, read_run_config(context, overrides))

        def train_or_refuse(inner: Message, ctxt: Context) -> Message:
            reply = call_next(inner, ctxt)
            result = compat.recorddict_to_fitres(reply.content, keep_input=True)
            if result.metrics.get(REFUSAL_REASON):
                metrics = {k: v for k, v in result.metrics.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}
                raise _Refused(REFUSAL_PREFIX + json.dumps({
                    PARTNER: result.metrics.get(PARTNER, ""),
                    REFUSAL_REASON: result.metrics[REFUSAL_REASON],
                    LEDGER_ENTRY_SHA256: result.metrics.get(LEDGER_ENTRY_SHA256, ""),
                    METRICS: metrics}, sort_keys=True))
            return reply

        try:
            return secaggplus_mod(msg, context, train_or_refuse)
        except _Refused as refused:
            log.warning("partner refuses this secure-aggregation round: %s", refused)
            return Message(Error(code=SECURE_REFUSAL_CODE, reason=str(refused)), reply_to=msg)

    return secure_aggregation_mod


def _check_protocol(configs: ConfigRecord, run: RunConfig) -> None:
    """The SecAgg+ setup must use the run config's clipping range and max weight: those are
    what the partner checks its update against before masking it."""
    announced = {"secagg-clipping-range": configs.get(Key.CLIPPING_RANGE),
                 "secagg-max-weight": configs.get(Key.MAX_WEIGHT)}
    expected = {"secagg-clipping-range": run.secagg_clipping_range,
                "secagg-max-weight": run.secagg_max_weight}
    if announced != expected:
        raise ValueError(f"SecAgg+ setup announces {announced}, the run config says {expected}")


def _local_verdict(partner: PartnerConfig, run: RunConfig, weights: dict,
                   data: PartnerData, run_id: str) -> None:
    """Write the partner's own verdict at the last round's evaluation (`local-report-path`);
    a failure is logged here and changes nothing in the reply."""
    from common.partner_evaluation import write_local_verdict

    try:
        paths = write_local_verdict(partner, run, weights, data, run_id)
        log.info("partner %s wrote its local verdict to %s", partner.partner, paths[1])
    except Exception:  # noqa: BLE001 - the local report must never break or leak into the reply
        log.exception("partner %s could not write its local verdict", partner.partner)


@_guarded
def evaluate(msg: Message, context: Context, overrides: dict | None = None) -> Message:
    """Evaluate the global model on the partner's own test split. A deployed partner releases
    the metrics only with `release-metrics=true` in its node config (they are computed from its
    test rows, outside its DP guarantee); otherwise it refuses with `METRICS_NOT_RELEASED`,
    after writing its own local verdict at the last round if it keeps one."""
    run, partner = read_config(context, overrides or {})
    from common.partner import check_layout, load_data
    from common.partner_evaluation import evaluate_round

    requested = dict(msg.content.get(CONFIG, ConfigRecord()))
    layout, refusal = check_layout(partner, run, requested)
    wants_verdict = bool(partner.local_report_path) and (
        requested.get(SERVER_ROUND) == run.num_server_rounds)
    data = None
    if not refusal and (partner.release_metrics or wants_verdict):
        data = load_data(partner, run)
    if data is not None and wants_verdict:
        _local_verdict(partner, run, _weights(msg), data, str(context.run_id))
    if not refusal and not partner.release_metrics:
        refusal = METRICS_NOT_RELEASED
    metrics = {} if refusal or data is None else evaluate_round(run, _weights(msg), data)
    return Message(content=RecordDict({
        METRICS: MetricRecord(metrics),
        INFO: ConfigRecord({PARTNER: partner.partner, REFUSAL_REASON: refusal,
                            LEDGER_ENTRY_SHA256: "", FEATURE_LAYOUT_SHA256: layout}),
    }), reply_to=msg)


def build_client_app(run_config: dict | None = None) -> ClientApp:
    """A ClientApp; `run_config` (simulation only) overrides the run config Flower passes."""
    overrides = dict(run_config or {})
    client_app = ClientApp(mods=[timing_mod])

    @client_app.train(mods=[make_secure_aggregation_mod(overrides)])
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, overrides)

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, overrides)

    register_vertical(client_app, overrides)  # vertical runs: their own message types
    return client_app


app = build_client_app()
