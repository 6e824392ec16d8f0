"""The partner's Flower ClientApp: converts Flower records to plain values and calls common/.

A reply carries only an ArrayRecord (the DP update), a MetricRecord (numbers listed in
`common.partner.TRAIN_METRIC_KEYS` / `EVALUATE_METRIC_KEYS`) and a ConfigRecord `info` with the
partner's name, the refusal reason if it refused, and the hash of the ledger entry it wrote for
the round. Raw rows never leave this process.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.config import PartnerConfig, RunConfig
from common.partner import PartnerState, evaluate_round, load_data, train_round

log = logging.getLogger(__name__)
STATE_KEY = "fedcredit-partner-state"


def _setup(context: Context, overrides: dict) -> tuple[RunConfig, PartnerConfig]:
    torch.set_num_threads(1)
    run = RunConfig.from_flower({**dict(context.run_config), **overrides})
    partner = PartnerConfig.from_node_config(dict(context.node_config), run)
    return run, partner


def _weights(msg: Message) -> dict:
    return {k: a.numpy() for k, a in msg.content["arrays"].items()}


class PartnerError(RuntimeError):
    """What the coordinator learns of a partner-side failure: no data values, no paths."""


def _guarded(handler):
    """Log a failure in full on the partner's side; send the coordinator only its kind.

    Data validation errors quote cell values and file paths: they must not leave the partner.
    """
    def run(msg: Message, context: Context, overrides: dict | None = None) -> Message:
        try:
            return handler(msg, context, overrides)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none leaks
            log.exception("partner-side failure in %s", handler.__name__)
            raise PartnerError(f"partner failed ({type(exc).__name__}); details are in the "
                               f"partner's own log") from None
    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


@_guarded
def train(msg: Message, context: Context, overrides: dict | None = None) -> Message:
    """Train one round under the partner's own DP budget, or refuse with a reason."""
    run, partner = _setup(context, overrides or {})
    state = PartnerState.from_dict(dict(context.state.get(STATE_KEY, ConfigRecord())))
    requested = dict(msg.content.get("config", ConfigRecord()))
    server_round = requested.get("server-round")
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 1:
        raise ValueError(f"train request without a valid 'server-round' (got {server_round!r})")
    reply = train_round(partner, run, state, _weights(msg), requested, server_round,
                        load_data(partner, run), run_id=str(context.run_id))
    context.state[STATE_KEY] = ConfigRecord(state.to_dict())
    content = RecordDict({
        "metrics": MetricRecord(reply.metrics),
        "info": ConfigRecord({"partner": partner.partner, "refusal-reason": reply.refusal,
                              "ledger-entry-sha256": reply.ledger_entry_sha256}),
    })
    if reply.weights is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in reply.weights.items()})
    return Message(content=content, reply_to=msg)


@_guarded
def evaluate(msg: Message, context: Context, overrides: dict | None = None) -> Message:
    """Evaluate the global model on the partner's own test split (unless its node config says
    `allow-evaluate=false`: released metrics are not covered by its DP guarantee)."""
    run, partner = _setup(context, overrides or {})
    if not partner.allow_evaluate:
        raise ValueError("this partner does not release evaluation metrics")
    metrics = evaluate_round(run, _weights(msg), load_data(partner, run))
    return Message(content=RecordDict({
        "metrics": MetricRecord(metrics),
        "info": ConfigRecord({"partner": partner.partner, "refusal-reason": "",
                              "ledger-entry-sha256": ""}),
    }), reply_to=msg)


def build_client_app(run_config: dict | None = None) -> ClientApp:
    """A ClientApp; `run_config` (simulation only) overrides the run config Flower passes."""
    overrides = dict(run_config or {})
    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, overrides)

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, overrides)

    return client_app


app = build_client_app()
