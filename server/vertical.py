"""The coordinator of a vertical run: holds no data, relays each party's messages to the others.

Every step is one `grid.send_and_receive` round of the message types `common.protocol` lists:
the PSI (records of blinded values only), the split (positions), stage 1 labels, stages 2-3
released embeddings, stage 5 test embeddings, stage 4 and the metrics (only metrics come back),
in non-private mode the fine-tuning rounds, then the scoring of `vertical-score-ids`. Writes
`vertical.json` (metrics per mode and setting, ε per party, mechanisms, sizes, timings) and
`vertical_scores.json` into `out-dir`. An `observer` sees every message relayed (tests check
that none holds a customer ID).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data.scenarios import LENDER, PARTIES, PASSIVE
from common.errors import PartyError
from common.outputs import (
    CUSTOMER_SCORE,
    RESULT_FILE,
    RESULT_METRICS,
    SCORES_FILE,
    write_json,
)
from common.privacy.accounting import SubsampledGaussianEvent
from common.protocol import (
    BATCH,
    BOTTOM_SAMPLE_RATE,
    BOTTOM_SIGMA,
    BOTTOM_STEPS,
    CONFIG,
    CUSTOMER,
    DP,
    EMBEDDING_NOISE_MULTIPLIER,
    EMBEDDINGS,
    EPSILON_BUDGET,
    EPSILON_SPENT,
    FIT_TOPS,
    GRADS,
    INFO,
    LABEL_NOISE_MULTIPLIER,
    LABELS,
    METRICS,
    MODE,
    NOISE_STD,
    NON_PRIVATE,
    NUM_ALIGNED,
    NUM_TEST,
    NUM_TRAIN,
    PARTY,
    PREVIOUS_BATCH,
    PSI,
    PSI_ALIGN,
    PSI_FINISH,
    PSI_OPEN,
    PSI_RESPOND,
    PSI_RUN_ID,
    SCORE,
    SPLIT,
    STEP,
    TEST_ROWS,
    TRAIN_ROWS,
    VFL_BOTTOM,
    VFL_EMBED,
    VFL_EVALUATE,
    VFL_FINETUNE,
    VFL_HELLO,
    VFL_LABELS,
    VFL_SCORE,
    VFL_SPLIT,
    VFL_TOP,
    party_record,
    split_setting_metric,
)
from common.vertical.parties import SETTINGS, setting_name
from common.vertical.psi import new_run_id
from common.vertical.releases import gaussian_release_event, plan_mechanisms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Relayed:
    """One message the coordinator relayed: to or from `party`, of `message_type`."""

    direction: str
    party: str
    message_type: str
    content: RecordDict


Observer = Callable[[Relayed], None]



class Relay:
    """Sends messages to parties by name and returns their replies by name."""

    def __init__(self, grid: Grid, run: RunConfig, observer: Observer | None = None) -> None:
        self.grid, self.observer, self.rounds = grid, observer, 0
        self.nodes = self._discover(run.wait_for_partners)

    def _discover(self, wait_seconds: float) -> dict[str, int]:
        deadline = time.monotonic() + wait_seconds
        while len(node_ids := list(self.grid.get_node_ids())) < len(PARTIES):
            if time.monotonic() > deadline:
                raise RuntimeError(f"vertical run needs {len(PARTIES)} parties online, "
                                   f"{len(node_ids)} after {wait_seconds:g} s")
            time.sleep(0.5)
        messages = [Message(RecordDict(), dst_node_id=n, message_type=VFL_HELLO)
                    for n in node_ids]
        named = [(str(r.content.config_records[INFO][PARTY]), r.metadata.src_node_id)
                 for r in self.grid.send_and_receive(messages) if not r.has_error()]
        nodes = dict(named)
        if set(nodes) != set(PARTIES) or len(named) != len(nodes):
            raise RuntimeError(f"vertical run needs each of the parties {PARTIES} exactly once, "
                               f"found {sorted(name for name, _ in named)}")
        return nodes

    def ask(self, message_type: str, contents: Mapping[str, RecordDict],
            refusals_ok: bool = False) -> dict[str, Message]:
        """Send `contents[party]` to each party; their replies by party (errors raise unless
        `refusals_ok`)."""
        messages = []
        for party, content in contents.items():
            self._observe("to", party, message_type, content)
            messages.append(Message(content, dst_node_id=self.nodes[party],
                                    message_type=message_type))
        party_of = {node: party for party, node in self.nodes.items()}
        replies = {party_of[r.metadata.src_node_id]: r
                   for r in self.grid.send_and_receive(messages)}
        self.rounds += 1
        for party, reply in replies.items():
            if reply.has_error():
                if not refusals_ok:
                    raise PartyError(party, reply.error.reason)
            else:
                self._observe("from", party, message_type, reply.content)
        missing = set(contents) - set(replies)
        if missing:
            raise RuntimeError(f"no reply to {message_type} from {sorted(missing)}")
        return replies

    def _observe(self, direction: str, party: str, message_type: str,
                 content: RecordDict) -> None:
        if self.observer is not None:
            self.observer(Relayed(direction, party, message_type, content))


def _config(values: dict[str, Any]) -> RecordDict:
    return RecordDict({CONFIG: ConfigRecord(values)})


def _passives(replies: Mapping[str, Message], record: str) -> dict[str, ArrayRecord]:
    return {p: replies[p].content.array_records[record] for p in PASSIVE}


def run_psi(relay: Relay, run_id: str) -> dict[str, Any]:
    """PSI and split through the coordinator: it relays blinded records and positions only."""
    opened = relay.ask(PSI_OPEN, {LENDER: _config({PSI_RUN_ID: run_id})})
    records = opened[LENDER].content.config_records
    replies = relay.ask(PSI_RESPOND, {p: RecordDict({PSI: records[party_record(PSI, p)]})
                                      for p in PASSIVE})
    finished = relay.ask(PSI_FINISH, {LENDER: RecordDict({
        party_record(PSI, p): replies[p].content.config_records[PSI] for p in PASSIVE})})
    records = finished[LENDER].content.config_records
    relay.ask(PSI_ALIGN, {p: RecordDict({PSI: records[party_record(PSI, p)]}) for p in PASSIVE})
    split = records[SPLIT]
    sizes = relay.ask(VFL_SPLIT, {p: RecordDict({CONFIG: split}) for p in PASSIVE})
    info = sizes[PASSIVE[0]].content.config_records[INFO]
    return {"num_aligned": int(split[NUM_ALIGNED]), "num_train": int(info[NUM_TRAIN]),
            "num_test": int(info[NUM_TEST])}


def _flat_metrics(record: MetricRecord) -> dict[str, dict[str, float]]:
    metrics: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        name, metric = split_setting_metric(key)
        metrics.setdefault(name, {})[metric] = float(value)
    return metrics


def run_private(relay: Relay) -> dict[str, Any]:
    """Stages 1-5 of the DP pipeline, each party computing its own part."""
    labels = relay.ask(VFL_LABELS, {LENDER: _config({MODE: DP})})[LENDER].content
    bottoms = relay.ask(VFL_BOTTOM, {p: RecordDict({
        LABELS: labels.array_records[LABELS], CONFIG: ConfigRecord({MODE: DP})})
        for p in PASSIVE})
    tests = relay.ask(VFL_EMBED, {p: _config({MODE: DP}) for p in PASSIVE})
    figures = {p: bottoms[p].content.metric_records[METRICS] for p in PASSIVE}
    content = RecordDict({
        **{party_record(TRAIN_ROWS, p): a for p, a in _passives(bottoms, EMBEDDINGS).items()},
        **{party_record(TEST_ROWS, p): a for p, a in _passives(tests, EMBEDDINGS).items()},
        NOISE_STD: MetricRecord({p: float(figures[p][NOISE_STD]) for p in PASSIVE}),
        CONFIG: ConfigRecord({MODE: DP})})
    scored = relay.ask(VFL_EVALUATE, {LENDER: content})[LENDER]
    lender = labels.metric_records[METRICS]
    epsilon = {LENDER: float(lender[EPSILON_SPENT]),
               **{p: float(figures[p][EPSILON_SPENT]) for p in PASSIVE}}
    budgets = {LENDER: float(lender[EPSILON_BUDGET]),
               **{p: float(figures[p][EPSILON_BUDGET]) for p in PASSIVE}}
    bottoms = {p: SubsampledGaussianEvent(float(figures[p][BOTTOM_SAMPLE_RATE]),
                                          float(figures[p][BOTTOM_SIGMA]),
                                          int(figures[p][BOTTOM_STEPS])) for p in PASSIVE}
    embeddings = {p: gaussian_release_event(float(figures[p][EMBEDDING_NOISE_MULTIPLIER]))
                  for p in PASSIVE}
    return {RESULT_METRICS: _flat_metrics(scored.content.metric_records[METRICS]),
            "epsilon": epsilon, "epsilon_budget": budgets,
            "mechanisms": plan_mechanisms(
                gaussian_release_event(float(lender[LABEL_NOISE_MULTIPLIER])), bottoms,
                embeddings)}


def run_non_private(relay: Relay) -> dict[str, dict[str, float]]:
    """Stacking with exact embeddings, then full-batch joint fine-tuning step by step: per step
    the passive parties send exact embeddings and the lender sends back exact gradients."""
    labels = relay.ask(VFL_LABELS, {LENDER: _config({MODE: NON_PRIVATE})})[LENDER].content
    bottoms = relay.ask(VFL_BOTTOM, {p: RecordDict({
        LABELS: labels.array_records[LABELS], CONFIG: ConfigRecord({MODE: NON_PRIVATE})})
        for p in PASSIVE})
    embeddings = _passives(bottoms, EMBEDDINGS)
    step, previous = FIT_TOPS, None
    while True:  # FIT_TOPS fits the stacked tops; then one fine-tuning step per round pair
        content = RecordDict({**embeddings, CONFIG: ConfigRecord({MODE: NON_PRIVATE,
                                                                  STEP: step})})
        reply = relay.ask(VFL_TOP, {LENDER: content})[LENDER].content
        info = reply.config_records[INFO]
        config: dict[str, Any] = {MODE: NON_PRIVATE}
        if previous is not None:
            config[PREVIOUS_BATCH] = previous  # the batch these gradients are for
        if BATCH in info:
            config[BATCH] = list(info[BATCH])
        tuned = relay.ask(VFL_FINETUNE, {p: RecordDict({
            GRADS: reply.array_records.get(party_record(GRADS, p), ArrayRecord()),
            CONFIG: ConfigRecord(config)}) for p in PASSIVE})
        if BATCH not in info:
            break
        embeddings, previous, step = _passives(tuned, EMBEDDINGS), config[BATCH], step + 1
    tests = relay.ask(VFL_EMBED, {p: _config({MODE: NON_PRIVATE}) for p in PASSIVE})
    content = RecordDict({
        **{party_record(TEST_ROWS, p): a for p, a in _passives(tests, EMBEDDINGS).items()},
        CONFIG: ConfigRecord({MODE: NON_PRIVATE})})
    scored = relay.ask(VFL_EVALUATE, {LENDER: content})[LENDER]
    return _flat_metrics(scored.content.metric_records[METRICS])


def score_customer(relay: Relay, customer: str, mode: str) -> dict[str, Any]:
    """`query.vfl_score`: each partner embeds `customer` (or refuses), the lender scores it."""
    config = {MODE: mode, CUSTOMER: customer}
    answers = relay.ask(VFL_EMBED, {p: _config(config) for p in PASSIVE}, refusals_ok=True)
    refused = {p: r.error.reason for p, r in answers.items() if r.has_error()}
    if refused:
        return {"error": "; ".join(f"{p}: {reason}" for p, reason in sorted(refused.items())),
                "refused_by": sorted(refused)}
    content = RecordDict({**{party_record(CUSTOMER, p): answers[p].content.array_records[
        EMBEDDINGS] for p in PASSIVE}, CONFIG: ConfigRecord(config)})
    reply = relay.ask(VFL_SCORE, {LENDER: content}, refusals_ok=True)[LENDER]
    if reply.has_error():
        return {"error": f"{LENDER}: {reply.error.reason}", "refused_by": [LENDER]}
    return {CUSTOMER_SCORE: float(reply.content.metric_records[METRICS][SCORE])}


def _summary_name(mode: str) -> str:
    """How vertical.json names a mode: `dp`, `non_private`."""
    return mode.replace("-", "_")


def run_vertical(grid: Grid, run: RunConfig, run_id: str = "",
                 observer: Observer | None = None) -> dict[str, Any]:
    """The whole vertical run through Flower; writes and returns the result summary."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    relay = Relay(grid, run, observer)
    psi_run_id = new_run_id()
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"run_id": run_id, "psi_run_id": psi_run_id, "seed": run.seed,
                               **run_psi(relay, psi_run_id), RESULT_METRICS: {}}
    timings["psi_seconds"] = time.perf_counter() - t0
    modes = ([DP] if run.sim_dp else []) + (
        [NON_PRIVATE] if run.vertical_non_private or not run.sim_dp else [])
    for mode in modes:
        t0 = time.perf_counter()
        if mode == DP:
            private = run_private(relay)
            summary[RESULT_METRICS][_summary_name(mode)] = private.pop(RESULT_METRICS)
            summary.update(private)
        else:
            summary[RESULT_METRICS][_summary_name(mode)] = run_non_private(relay)
        timings[f"{_summary_name(mode)}_seconds"] = time.perf_counter() - t0
    scores = {c: score_customer(relay, c, modes[0]) for c in run.score_ids}
    summary.update(timings=timings, message_rounds=relay.rounds,
                   wall_seconds=time.perf_counter() - started, scored_with=modes[0],
                   settings=[setting_name(s) for s in SETTINGS])
    out_dir = Path(run.out_dir)
    write_json(out_dir / RESULT_FILE, summary)
    if scores:
        write_json(out_dir / SCORES_FILE, scores)
    log.info("vertical run done in %.1f s (%d message rounds)", summary["wall_seconds"],
             relay.rounds)
    return summary

