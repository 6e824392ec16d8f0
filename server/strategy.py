"""Weighted FedAvg that validates every partner reply before it can touch the global model."""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.config import RunConfig
from common.data.layout import FeatureLayout, announcement
from common.errors import TooFewPartners
from common.outputs import PARTNER_OUTCOMES
from common.privacy.crypto import hash_weights
from common.privacy.ledger import ReceiptLog
from common.protocol import (
    ALLOWED_RECORDS,
    ARRAYS,
    EVALUATE_METRIC_KEYS,
    EVALUATE_RECEIVED,
    EVALUATION_PREFIX,
    FEATURE_LAYOUT_SHA256,
    FOLDED_EVALUATE_METRIC_KEYS,
    INFO,
    LEARNING_RATE,
    LEDGER_ENTRY_SHA256,
    LOCAL_EPOCHS,
    METRICS,
    NUM_EXAMPLES,
    PARTNER,
    PARTNER_FAILURE_PATTERN,
    REFUSAL_REASON,
    SERVER_ROUND,
    TRAIN_METRIC_KEYS,
)

log = logging.getLogger(__name__)
_PARTNER_FAILURE = re.compile(PARTNER_FAILURE_PATTERN)


@dataclass
class RoundRecord:
    """What happened in one round, partner by partner."""

    round: int
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    # Partners that answered an evaluation with a refusal (e.g. no `release-metrics`): not a
    # training outcome, so not in `PARTNER_OUTCOMES`.
    evaluation_refused: dict[str, str] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)
    aggregate_sha256: str = ""
    seconds: float = 0.0  # wall time since the previous round ended (round 1: since the start)


LAST_REASON = "last_reason"
UNNAMED_NODE = "node-"


def partner_outcomes(history: list[RoundRecord]) -> dict[str, dict[str, int | str]]:
    """Per partner over the whole run: rounds accepted, refused, rejected and failed, and the
    last reason it was not accepted (for the run's status and the operator)."""
    outcomes: dict[str, dict[str, int | str]] = {}
    for record in history:
        for kind in PARTNER_OUTCOMES:
            partners = getattr(record, kind)
            reasons = partners if isinstance(partners, dict) else dict.fromkeys(partners, "")
            for partner, reason in reasons.items():
                outcome = outcomes.setdefault(
                    partner, {**dict.fromkeys(PARTNER_OUTCOMES, 0), LAST_REASON: ""})
                outcome[kind] = int(outcome[kind]) + 1
                if reason:
                    outcome[LAST_REASON] = f"round {record.round} {kind}: {reason}"
    return outcomes


def unnamed(node_id: int) -> str:
    """How history names a node that never told the coordinator its partner's name."""
    return f"{UNNAMED_NODE}{node_id}"


def never_contributed(outcomes: dict[str, dict[str, int | str]]) -> str:
    """Why the run is incomplete ('' if every named partner that took part contributed at least
    one accepted update): each such partner, how often it failed, refused or was rejected, and
    its last reason. A node that never named itself (down before its first reply, e.g. a
    SuperNode killed and restarted under a new node id) is listed in `partner_outcomes` but does
    not make the run incomplete: it may be a partner that contributed under its new id."""
    accepted, *others = PARTNER_OUTCOMES
    missing = {name: o for name, o in outcomes.items()
               if not o[accepted] and not name.startswith(UNNAMED_NODE)}
    return "; ".join(
        f"{name} never contributed ("
        + ", ".join(f"{kind} {o[kind]}" for kind in reversed(others))
        + f" round(s); {o[LAST_REASON]})" for name, o in sorted(missing.items()))


def error_summary(reason: str) -> str:
    """The last meaningful line of an error reason (tracebacks can be kilobytes)."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:300]


def _error_summary(msg: Message) -> str:
    return error_summary(msg.error.reason)


def _ledger_hash(msg: Message) -> str:
    info = msg.content.config_records.get(INFO)
    return str(info.get(LEDGER_ENTRY_SHA256, "")) if info is not None else ""


def _partner_name(msg: Message) -> str:
    info = msg.content.config_records.get(INFO)
    name = info.get(PARTNER) if info is not None else None
    return str(name) if name else unnamed(msg.metadata.src_node_id)


def check_train_metrics(metrics: Mapping[str, Any]) -> str:
    """Why these train reply metrics are unusable ('' if they are fine)."""
    unknown = set(metrics.keys()) - set(TRAIN_METRIC_KEYS) - set(FOLDED_EVALUATE_METRIC_KEYS)
    if unknown:
        return f"unknown metric keys {sorted(unknown)}"
    if any(isinstance(v, list | str | bytes) or not math.isfinite(float(v))
           for v in metrics.values()):
        return "non-finite or list-valued metrics"
    if not metrics.get(NUM_EXAMPLES, 0) > 0:
        return f"{NUM_EXAMPLES} missing or not positive"
    return ""


def check_arrays(arrays: Mapping[str, np.ndarray], reference: dict[str, np.ndarray]) -> str:
    """Why these arrays cannot become (part of) the global model ('' if they can)."""
    if set(arrays.keys()) != set(reference):
        return (f"array keys differ from the global model: missing "
                f"{sorted(set(reference) - set(arrays.keys()))}, unexpected "
                f"{sorted(set(arrays.keys()) - set(reference))}")
    for key, ref in reference.items():
        array = arrays[key]
        if array.shape != ref.shape:
            return f"array {key!r} has shape {array.shape}, expected {ref.shape}"
        if not np.issubdtype(array.dtype, np.floating):
            return f"array {key!r} has dtype {array.dtype}, expected floating point"
        if not np.all(np.isfinite(array)):
            return f"array {key!r} contains NaN or Inf"
    return ""


def layout_echo_problem(echoed: object, expected: str) -> str:
    """Why a reply is unusable whose partner echoed the feature layout hash `echoed` in a run
    whose layout hash is `expected` ('' if they are equal)."""
    if echoed == expected:
        return ""
    return (f"feature layout {str(echoed)[:12] if echoed else 'none'} is not the run's "
            f"{expected[:12]}: the partner's schema encodes its features differently (they "
            f"would be permuted relative to the model)")


def _echoed_layout(msg: Message) -> str:
    info = msg.content.config_records.get(INFO)
    return str(info.get(FEATURE_LAYOUT_SHA256, "")) if info is not None else ""


def check_train_reply(msg: Message, reference: dict[str, np.ndarray],
                      layout_sha256: str | None = None) -> str:
    """Why this train reply must not be aggregated ('' if it is fine); with `layout_sha256`,
    the run's feature layout hash, which the partner must echo."""
    content = msg.content
    extra = set(content.keys()) - ALLOWED_RECORDS
    if extra:
        return f"unexpected records {sorted(extra)}"
    if layout_sha256 is not None and (problem := layout_echo_problem(_echoed_layout(msg),
                                                                     layout_sha256)):
        return problem
    metrics = content.metric_records.get(METRICS)
    if metrics is None:
        return f"no {METRICS!r} record"
    problem = check_train_metrics(dict(metrics))
    if problem:
        return problem
    arrays = content.array_records.get(ARRAYS)
    if arrays is None:
        return f"no {ARRAYS!r} record"
    return check_arrays({k: a.numpy() for k, a in arrays.items()}, reference)


def wait_for_partners(online: Callable[[], int], needed: int, timeout: float,
                      server_round: int) -> None:
    """Wait until `needed` partners are connected; stop the run after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (connected := online()) < needed:
        if time.monotonic() > deadline:
            raise TooFewPartners(f"round {server_round}: only {connected} partner(s) connected "
                                 f"after waiting {timeout:g} s (wait-for-partners), "
                                 f"min-partners={needed}")
        log.info("round %d: waiting for partners: %d connected, %d needed", server_round,
                 connected, needed)
        time.sleep(1)


def train_config(run: RunConfig) -> ConfigRecord:
    """The config of every train instruction (the strategy adds each round's learning rate)."""
    return ConfigRecord({LOCAL_EPOCHS: run.local_epochs, LEARNING_RATE: run.learning_rate})


class ValidatingFedAvg(FedAvg):
    """FedAvg weighted by `num-examples`; refused, failed and invalid replies never aggregate."""

    def __init__(self, *, min_partners: int, evaluate_every: int = 1, fraction_train: float = 1.0,
                 learning_rate_at: Callable[[int], float] | None = None,
                 on_round_end: Callable[[RoundRecord], None] | None = None,
                 receipts: ReceiptLog | None = None, wait_seconds: float = 300.0,
                 fold_evaluation: bool = False,
                 feature_layout: FeatureLayout | None = None, seed: int = 0) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=1.0,
                         min_train_nodes=min_partners, min_evaluate_nodes=min_partners,
                         min_available_nodes=min_partners)
        self.min_partners = min_partners
        self.evaluate_every = evaluate_every
        self.learning_rate_at = learning_rate_at
        self.on_round_end = on_round_end
        self.receipts = receipts
        self.wait_seconds = wait_seconds
        self.history: list[RoundRecord] = []
        self.num_rounds = 0
        self.current_weights: dict[str, np.ndarray] = {}
        self.latest_arrays: ArrayRecord | None = None
        self.node_names: dict[int, str] = {}  # node id -> partner name, from earlier replies
        self.instructions: list[Message] = []  # the latest messages sent to the partners
        self.last_round_end = time.monotonic()
        # With `fold_evaluation`, a round's federated evaluation (except the last round's) rides
        # on the next round's train message; this is the round whose evaluation is pending.
        self.fold_evaluation = fold_evaluation
        self.evaluation_pending: int | None = None
        # The run's encoded feature layout: announced in every instruction, echoed in replies.
        self.feature_layout = feature_layout
        self.layout_sha256 = None if feature_layout is None else feature_layout.sha256
        self.seed = seed

    def announce_layout(self, config: ConfigRecord) -> ConfigRecord:
        """`config` with the run's feature layout and its hash (when the run has one)."""
        if self.feature_layout is not None:
            config = ConfigRecord({**dict(config), **announcement(self.feature_layout)})
        return config

    def layout_problem(self, msg: Message) -> str:
        """Why a reply's echoed feature layout hash makes it unusable ('' if it is the run's)."""
        if self.layout_sha256 is None:
            return ""
        return layout_echo_problem(_echoed_layout(msg), self.layout_sha256)

    def _remember(self, messages: Iterable[Message]) -> list[Message]:
        """Keep the instructions so a failed reply can be traced to its node (the Grid sets
        each message id in place when it pushes the message)."""
        self.instructions = list(messages)
        return self.instructions

    def failed_name(self, reply: Message) -> str:
        """Who a failed reply is from: the partner's name when its node answered before.

        A reply the SuperLink writes for an unreachable node names the SuperLink as sender;
        its `reply_to_message_id` still leads to the node the instruction went to."""
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self.instructions}
        node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        named = _PARTNER_FAILURE.search(str(reply.error.reason)) if reply.has_error() else None
        return self.node_names.get(node) or (named.group("name") if named else unnamed(node))

    def record_for(self, server_round: int) -> RoundRecord:
        """The record of `server_round`, this round's or an earlier one (created on first use)."""
        for record in reversed(self.history):
            if record.round == server_round:
                return record
        self.history.append(RoundRecord(round=server_round))
        return self.history[-1]

    def round_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """The train config of `server_round`: `config` with the round's learning rate."""
        config = self.announce_layout(ConfigRecord(dict(config)))
        if self.learning_rate_at is not None:
            config[LEARNING_RATE] = float(self.learning_rate_at(server_round))
        if self.evaluation_pending == server_round - 1:
            config[EVALUATE_RECEIVED] = True
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember the global model's shapes and add the round's learning rate."""
        self.current_weights = {k: a.numpy() for k, a in arrays.items()}
        wait_for_partners(lambda: len(list(grid.get_node_ids())), self.min_partners,
                          self.wait_seconds, server_round)
        config = self.round_config(server_round, config)
        if self.fraction_train >= 1.0:
            return self._remember(super().configure_train(server_round, arrays, config, grid))
        config[SERVER_ROUND] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._remember(self._construct_messages(
            record, self.sample_partners(server_round, grid), MessageType.TRAIN))

    def sample_partners(self, server_round: int, grid: Grid) -> list[int]:
        """The nodes that train in `server_round` under `fraction-train` < 1: a fraction of the
        connected nodes (at least `min-partners`), drawn uniformly without replacement by a
        generator seeded with the run's seed and the round (Flower's FedAvg draws from Python's
        unseeded global generator). Who is drawn is public: no privacy amplification by this
        sampling is claimed; a node not drawn receives nothing and spends nothing."""
        nodes = sorted(grid.get_node_ids())
        size = min(len(nodes), max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
        drawn = random.Random(f"fedcredit-partner-sampling:{self.seed}:{server_round}").sample(
            nodes, size)
        log.info("round %d: %d of %d partners drawn (fraction-train %g)", server_round,
                 len(drawn), len(nodes), self.fraction_train)
        return sorted(drawn)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each reply, aggregate the accepted ones, stop if too few remain."""
        record = self.record_for(server_round)
        accepted = []
        for msg in replies:
            if msg.has_error():
                record.failed[self.failed_name(msg)] = _error_summary(msg)
                log.warning("round %d: %s failed: %s", server_round, self.failed_name(msg),
                            _error_summary(msg))
                if self.evaluation_pending == server_round - 1:  # its evaluation rode on it
                    self.record_for(server_round - 1).failed[self.failed_name(msg)] = (
                        f"evaluation (on round {server_round}'s train message): "
                        f"{_error_summary(msg)}")
                continue
            name = _partner_name(msg)
            self.node_names[msg.metadata.src_node_id] = name
            metrics = msg.content.metric_records.get(METRICS)
            if self.evaluation_pending == server_round - 1 and not self.layout_problem(msg):
                self.record_evaluation(server_round - 1, name, {
                    key[len(EVALUATION_PREFIX):]: value for key, value in (metrics or {}).items()
                    if key in FOLDED_EVALUATE_METRIC_KEYS}, folded=True)
            if metrics is not None:
                record.privacy[name] = {k: float(v) for k, v in metrics.items()
                                        if k in TRAIN_METRIC_KEYS and not isinstance(v, list)}
            info = msg.content.config_records.get(INFO)
            reason = str(info.get(REFUSAL_REASON, "")) if info is not None else ""
            if reason:
                record.refused[name] = reason
                log.warning("round %d: partner %s refused: %s", server_round, name, reason)
                continue
            problem = check_train_reply(msg, self.current_weights, self.layout_sha256)
            if not problem and name in record.accepted:
                problem = "a second update under the same partner name in this round"
            if not problem and self.receipts is not None and not _ledger_hash(msg):
                problem = "no ledger entry hash: this coordinator requires partner ledgers"
            if problem:
                record.rejected[name] = problem
                log.warning("round %d: rejected update of %s: %s", server_round, name, problem)
                continue
            accepted.append(msg)
            record.accepted.append(name)
        if self.evaluation_pending == server_round - 1:
            self.evaluation_pending = None
        # A fixed order makes the floating-point sum, and so the run, reproducible.
        accepted.sort(key=_partner_name)
        self.admit(server_round, [
            (_partner_name(msg), _ledger_hash(msg),
             hash_weights({k: a.numpy() for k, a in msg.content[ARRAYS].items()}))
            for msg in accepted])
        contents = [msg.content for msg in accepted]
        arrays = aggregate_arrayrecords(contents, self.weighted_by_key)
        self.adopt(server_round, arrays)
        total = sum(float(c[METRICS][NUM_EXAMPLES]) for c in contents)
        return arrays, MetricRecord({NUM_EXAMPLES: total, "partners": float(len(contents))})

    def admit(self, server_round: int, accepted: list[tuple[str, str, str]]) -> None:
        """Sign a receipt for each accepted (partner, ledger entry hash, update hash), then stop
        the run if they are fewer than `min_partners`. Receipts come first: every accepted
        update gets one even when the run stops."""
        record = self.record_for(server_round)
        if self.receipts is not None:
            for partner, ledger_hash, update_hash in accepted:
                self.receipts.append(server_round=server_round, partner=partner,
                                     ledger_entry_sha256=ledger_hash, update_sha256=update_hash)
        if len(accepted) < self.min_partners:
            raise TooFewPartners(
                f"round {server_round}: only {len(accepted)} usable update(s) "
                f"({', '.join(record.accepted) or 'none'}), fewer than min-partners="
                f"{self.min_partners}; refused: {record.refused or 'none'}; rejected: "
                f"{record.rejected or 'none'}; failed: {record.failed or 'none'}")

    def adopt(self, server_round: int, arrays: ArrayRecord) -> None:
        """Make `arrays` the latest global model and record its hash in the round's record."""
        self.latest_arrays = arrays
        self.record_for(server_round).aggregate_sha256 = hash_weights(
            {k: a.numpy() for k, a in arrays.items()})

    def finish_round(self, server_round: int, pooled: dict[str, float]) -> None:
        """Called once a round is complete (after evaluation): store pooled metrics, notify."""
        if server_round < 1:
            return
        record = self.record_for(server_round)
        record.pooled = pooled
        now = time.monotonic()
        record.seconds, self.last_round_end = now - self.last_round_end, now
        if self.on_round_end is not None:
            self.on_round_end(record)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Federated evaluation every `evaluate_every` rounds and at the last round; with
        `fold_evaluation`, every round's but the last's rides on the next train message."""
        if server_round % self.evaluate_every and server_round != self.num_rounds:
            return []
        if self.fold_evaluation and server_round != self.num_rounds:
            self.evaluation_pending = server_round
            return []
        wait_for_partners(lambda: len(list(grid.get_node_ids())), self.min_partners,
                          self.wait_seconds, server_round)
        return self._remember(super().configure_evaluate(server_round, arrays,
                                                         self.announce_layout(config), grid))

    def record_evaluation(self, server_round: int, partner: str,
                          metrics: Mapping[str, Any] | None, *, folded: bool = False) -> bool:
        """Keep a partner's own-test metrics of `server_round`'s global model if they are valid
        (else record the rejection); whether they were. Empty folded metrics (a partner that does
        not release evaluations) record nothing."""
        record = self.record_for(server_round)
        if folded and not metrics:
            return False
        if (metrics is None or set(metrics.keys()) - set(EVALUATE_METRIC_KEYS)
                or any(isinstance(v, list) or not math.isfinite(float(v))
                       for v in metrics.values())
                or not float(metrics.get(NUM_EXAMPLES, 0)) > 0):
            record.rejected[partner] = "invalid evaluation metrics"
            return False
        record.evaluation[partner] = {k: float(v) for k, v in metrics.items()}
        return True

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Keep each partner's own-test metrics; return their example-weighted mean."""
        record = self.record_for(server_round)
        valid = []
        for msg in replies:
            if msg.has_error():
                record.failed[self.failed_name(msg)] = _error_summary(msg)
                continue
            metrics = msg.content.metric_records.get(METRICS)
            info = msg.content.config_records.get(INFO)
            refusal = str(info.get(REFUSAL_REASON, "")) if info is not None else ""
            if problem := self.layout_problem(msg):  # a refusing partner says what differs
                if refusal:
                    record.refused.setdefault(_partner_name(msg), refusal)
                else:
                    record.rejected[_partner_name(msg)] = problem
                continue
            if refusal:  # e.g. a partner that does not release evaluation metrics
                record.evaluation_refused[_partner_name(msg)] = refusal
                continue
            if self.record_evaluation(server_round, _partner_name(msg), metrics):
                valid.append(metrics)
        if not valid:
            return None
        total = sum(float(m[NUM_EXAMPLES]) for m in valid)
        keys = set.intersection(*(set(m.keys()) for m in valid)) - {NUM_EXAMPLES}
        return MetricRecord({k: sum(float(m[k]) * float(m[NUM_EXAMPLES]) for m in valid) / total
                             for k in sorted(keys)})
