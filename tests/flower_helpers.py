"""Helpers to drive the Flower apps in-process: build messages and contexts like Flower does."""

from __future__ import annotations

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from common.config import RunConfig
from common.data.schema import load_schema
from common.data.tables import bundled_path
from common.learning.model import build_model, get_weights
from common.protocol import ARRAYS, CONFIG, INFO, METRICS, PARTNER, REFUSAL_REASON


def set_task_identity() -> None:
    """Flower sets the running task's identity before apps create messages; do the same."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1


def initial_weights(run: RunConfig) -> dict[str, np.ndarray]:
    """The global model a ServerApp would start from for `run`'s scenario."""
    schema = load_schema(bundled_path("credit_data")[1])
    return dict(get_weights(build_model(schema.num_features, run.hidden, run.seed)))


def arrays_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding `weights`."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()})


def train_message(weights: dict[str, np.ndarray], config: dict) -> Message:
    """A train instruction as the coordinator's strategy sends it."""
    return Message(content=RecordDict({ARRAYS: arrays_record(weights),
                                       CONFIG: ConfigRecord(config)}),
                   dst_node_id=1, message_type=MessageType.TRAIN)


def evaluate_message(weights: dict[str, np.ndarray]) -> Message:
    """An evaluate instruction."""
    return Message(content=RecordDict({ARRAYS: arrays_record(weights),
                                       CONFIG: ConfigRecord({})}),
                   dst_node_id=1, message_type=MessageType.EVALUATE)


def node_context(node_config: dict, run: RunConfig, run_id: int = 1) -> Context:
    """A node's Context, which Flower keeps across rounds while rebuilding the ClientApp."""
    return Context(run_id=run_id, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=run.to_flower())


def reply_message(partner: str, weights: dict[str, np.ndarray] | None, metrics: dict,
                  refusal: str = "", node_id: int = 7) -> Message:
    """A partner's train reply as the ServerApp receives it."""
    content = RecordDict({METRICS: MetricRecord(metrics),
                          INFO: ConfigRecord({PARTNER: partner, REFUSAL_REASON: refusal})})
    if weights is not None:
        content[ARRAYS] = arrays_record(weights)
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    return Message(content=content, reply_to=request)
